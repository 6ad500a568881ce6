#!/usr/bin/env python3
"""Golden ids for tokenizer.json layouts the shared vocabularies do not cover: Unicode normalizers
(NFC as in Pythia/GPT-NeoX and Qwen, NFD, NFKC, NFKD, Lowercase, BertNormalizer), the WordPiece
model (BERT), the Unigram model (T5 / ALBERT style, with and without byte fallback), BPE with word-final
and word-inner affixes (CLIP's "</w>", "##") and the WordLevel model.

    python3 tests/reference/make_tokenizer_variants.py [--data ../shared/data] \
        [--out tests/golden/tokenizers/variants]

Run where the Hugging Face `tokenizers` Python package is installed (the GPU machine's python3); it is
the reference. Two kinds of variant:

  * edits: a shared tokenizer.json (under --data) with some top-level fields replaced (`edit`); the
    test applies the same replacement before loading, so no vocabulary is copied into the repository.
  * trained: small tokenizers trained here with `tokenizers` trainers on the first 200 KB of
    text/tinystories_val_subset.txt plus the test strings, saved beside the goldens as
    <name>.tokenizer.json (a few hundred pieces each; the committed file is the fixture, the
    training only made it).

Also gguf-pre.json: ids for every GGUF tokenizer.ggml.pre name we map to split regexes (see GGUF_PRE).

Precompiled normalizers (T5, ALBERT, XLM-R, mBART: SentencePiece's compiled character map): the charsmaps are
built by the `sentencepiece` Python package (training a throwaway 300-piece model on the same text and reading
normalizer_spec.precompiled_charsmap out of its ModelProto): one from a small rule file (PRECOMPILED_RULES, which
exercises multi-character sources, expansions, a deletion and the shortest-prefix quirk) and SentencePiece's
built-in nmt_nfkc. They are applied as edits of the trained unigram tokenizer; the edit (with the base64 map)
is stored in the golden.

Output: extra_strings.json (normalization-specific strings appended to ../strings.json) and one
<name>.json per variant: {"base" or "file", "edit", "reference", "n_strings", "with_special",
"decoded", "ids"} in the format of make_tokenizer_goldens.py.
"""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from make_tokenizer_goldens import PROBE, make_strings  # noqa: E402

EXTRA = [
    "\u212b", "A\u030a", "\u00c5", "\u1100\u1161\u11a8", "\uac01", "a\u0301\u0323", "a\u0323\u0301", "x\u00b2 + y\u00b3",
    "\u2460\u2461\u2462", "\u2163 \u216b", "\u00bd \u2153", "\ufb01\ufb03 \ufb00", "\u3392\u337f", "\uff28\uff45\uff4c\uff4c\uff4f",
    "\u03a3\u0391\u03a3 \u038c\u03a3\u039f\u03a3", "\u0130", "I\u0307", "\u01c4\u01c5\u01c6", "\u1e9e", "\u0149",
    "Caf\u00c9 CAF\u0045\u0301", "\u00e9\u0301", "\u0915\u093c", "\u0958", "\u2126 \u03a9", "\u212a\u212b", "\u00b5 \u03bc",
    "\u1f80\u0345", "\u0627\u0653", "\u30ac \u30ab\u3099", "\uff76\uff9e", "\u2000\u2001\u2002", "\u00a8 \u00b4",
    "\u0041\u0308\u0304", "\u1e0b\u0323", "\u0073\u0323\u0307", "\ud55c\uad6d\uc5b4", "\u1112\u1161\u11ab",
    "HeLLo W\u00d6RLD \u00c7A", "[CLS] [SEP] [MASK] [UNK]", "<unk> <s> </s>", "\u4e2d\u6587abc\u65e5\u672c",
    "\u0000\u0001 ctrl\u007f", "\ufffd replacement", "\u00ad soft\u00adhyphen", "tab\there\u000bvt",
    "emoji\U0001f600 \U0001f1eb\U0001f1f7", "unaffable", "unbelievable!!", "don't stop", "e.g. U.S.A.",
    "running jumped quickly", "A" * 120, "Supercalifragilisticexpialidocious" * 4,
    # Precompiled (see PRECOMPILED_RULES): a rule for 'x' swallows the rest of a short grapheme starting with x,
    # a long grapheme (>= 6 bytes) goes character by character, 'kk' never matches a one-character grapheme.
    "x\u0301yz xx x\u0301\u0302\u0303 ax\u0301", "kk kkk k", "a\u0301 \u1100\u1161 \u1100\u1161\u11a8",
    "soft\u00adhy\u00adphen \u3000wide\u3000space", "``quoted'' \u2126hm \u2460\u2461",
    "e\u0301\u0323\u0300 \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44d\U0001f3fd",
    "ALBERT's \u00c9T\u00c9  double  spaces", "\ufb01le \ufb03x \uff21\uff22\uff23xyz", "q\u0301 q qu\u0301",
]


# SentencePiece normalization rules (source code points -> target code points, hex; empty target = delete).
PRECOMPILED_RULES = [
    *[(f"{0xFF21 + i:X}", f"{0x41 + i:X}") for i in range(26)],  # full-width A-Z
    ("FB01", "66 69"), ("FB03", "66 66 69"), ("2460", "31"), ("2461", "32"), ("2126", "3A9"),
    ("61 301", "E1"), ("78", "58"), ("6B 6B", "4B"), ("3000", "20"), ("AD", ""), ("1100 1161", "AC00"),
    ("65 301 323", "1EC7"),
    ("71", "71 71"), ("71 301", "51"),  # nested keys: HF takes the shorter, so q + U+0301 -> "qq", not "Q"
]


def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def _proto_field(b, want):
    """The bytes of length-delimited field `want` of a serialized protobuf message (no protobuf package needed)."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = _varint(b, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = _varint(b, i)
            if num == want:
                return b[i:i + n]
            i += n
        else:
            raise ValueError(f"wire type {wt}")
    return b""


def spm_charsmap(lines, rule_name=None, rules=None):
    """base64 precompiled_charsmap that SentencePiece compiles for a built-in rule set or a rule list."""
    import base64
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        txt = os.path.join(tmp, "text.txt")
        with open(txt, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[:3000]))
        kw = dict(input=txt, model_prefix=os.path.join(tmp, "m"), vocab_size=300, model_type="unigram",
                  minloglevel=2)
        if rules is not None:
            tsv = os.path.join(tmp, "rules.tsv")
            with open(tsv, "w", encoding="utf-8") as f:
                f.write("".join(f"{a}\t{b}\n" for a, b in rules))
            kw["normalization_rule_tsv"] = tsv
        else:
            kw["normalization_rule_name"] = rule_name
        spm.SentencePieceTrainer.train(**kw)
        proto = open(os.path.join(tmp, "m.model"), "rb").read()
    spec = _proto_field(proto, 3)  # ModelProto.normalizer_spec
    return base64.b64encode(_proto_field(spec, 2)).decode()  # NormalizerSpec.precompiled_charsmap


def precompiled_edits(lines):
    small = spm_charsmap(lines, rules=PRECOMPILED_RULES)
    nfkc = spm_charsmap(lines, rule_name="nmt_nfkc")
    spaces = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
    return {
        "unigram-precompiled": ("@unigram", {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": small}, spaces]}}),
        "unigram-albert": ("@unigram", {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": "``"}, "content": '"'},
            {"type": "Replace", "pattern": {"String": "''"}, "content": '"'},
            {"type": "NFKD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
            {"type": "Precompiled", "precompiled_charsmap": small}, spaces]}}),
        "unigram-nmt-nfkc": ("@unigram", {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": nfkc}, spaces]}}),
    }


def load_text(data, n_bytes=200_000):
    with open(os.path.join(data, "text/tinystories_val_subset.txt"), encoding="utf-8") as f:
        return f.read(n_bytes).splitlines()


def train_wordpiece(lines, path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    t = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    t.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                              lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    t.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=900, special_tokens=specials, min_frequency=2,
                                                           continuing_subword_prefix="##", limit_alphabet=400))
    t.post_processor = processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")), ("[CLS]", t.token_to_id("[CLS]")))
    t.save(path)


def train_unigram(lines, path, path_bytes):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    t = Tokenizer(models.Unigram())
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    t.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=700, special_tokens=["<pad>", "</s>", "<unk>"],
                                                         unk_token="<unk>", max_piece_length=12))
    t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", t.token_to_id("</s>"))])
    t.save(path)
    # The same vocabulary with byte fallback: 256 <0xXX> pieces (low scores) and the decoders Llama uses.
    j = json.load(open(path, encoding="utf-8"))
    low = min(s for _, s in j["model"]["vocab"]) - 1.0
    j["model"]["vocab"] += [[f"<0x{b:02X}>", low] for b in range(256)]
    j["model"]["byte_fallback"] = True
    j["normalizer"] = {"type": "NFC"}
    j["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"},
                                                     {"type": "Metaspace", "replacement": "\u2581",
                                                      "prepend_scheme": "always", "split": True}]}
    with open(path_bytes, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, indent=1)


CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def train_bpe_clip(lines, path):
    """CLIP's layout: byte-level BPE whose word-final pieces carry "</w>", lower-cased, split by CLIP's regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    t = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                                     end_of_word_suffix="</w>", min_frequency=2,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.post_processor = processors.RobertaProcessing(("<|endoftext|>", t.token_to_id("<|endoftext|>")),
                                                    ("<|startoftext|>", t.token_to_id("<|startoftext|>")))
    t.save(path)


def train_bpe_prefix(lines, path):
    """BPE whose non-initial pieces carry "##" (continuing_subword_prefix), on BERT's pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    t.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    t.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=900, special_tokens=["[UNK]", "[PAD]"],
                                                     continuing_subword_prefix="##", min_frequency=2,
                                                     limit_alphabet=300))
    t.save(path)


def train_wordlevel(lines, path):
    """A word-level vocabulary (whole pre-tokens or [UNK]) and no decoder (tokens joined by spaces)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    t = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(lines, trainers.WordLevelTrainer(vocab_size=1500, special_tokens=["[UNK]", "[PAD]"],
                                                           min_frequency=2))
    t.save(path)


TRAINERS = {"bpe-clip": train_bpe_clip, "bpe-prefix": train_bpe_prefix, "wordlevel": train_wordlevel}

# name -> (base file under data/ or None for a trained file, edit of top-level fields)
EDITS = {
    "gpt2-nfc": ("tokenizers/gpt2/tokenizer.json", {"normalizer": {"type": "NFC"}}),
    "gpt2-nfd": ("tokenizers/gpt2/tokenizer.json", {"normalizer": {"type": "NFD"}}),
    "gpt2-nfkc": ("tokenizers/gpt2/tokenizer.json", {"normalizer": {"type": "NFKC"}}),
    "gpt2-nfkd-lower": ("tokenizers/gpt2/tokenizer.json",
                        {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Lowercase"}]}}),
    "gpt2-bertnorm": ("tokenizers/gpt2/tokenizer.json",
                      {"normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                      "strip_accents": True, "lowercase": False}}),
    "llama3-nfc": ("tokenizers/llama3-bpe/tokenizer.json", {"normalizer": {"type": "NFC"}}),
    "llama2-nfkc-lower": ("tokenizers/llama2-spm/tokenizer.json",
                          {"normalizer": {"type": "Sequence", "normalizers": [
                              {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Prepend", "prepend": "\u2581"},
                              {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}}),
    # An Oniguruma Split pattern with \w (marks are word characters there) inside and outside a class.
    # BLOOM's pre-tokenizer: an Oniguruma class nested in a negated class (a union), then byte-level.
    "gpt2-split-bloom": ("tokenizers/gpt2/tokenizer.json",
                         {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                             {"type": "Split", "pattern": {"Regex": " ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"},
                              "behavior": "Isolated", "invert": False},
                             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": False}]}}),
    "gpt2-split-word": ("tokenizers/gpt2/tokenizer.json",
                        {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                            {"type": "Split", "pattern": {"Regex": r"[\w']+|\s+|\W"}, "behavior": "Isolated",
                             "invert": False},
                            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": False}]}}),
}
TRAINED = ["wordpiece-bert", "wordpiece-cased", "unigram", "unigram-bytes", "bpe-clip", "bpe-clip-bpedecoder",
           "bpe-prefix", "wordlevel", "wordlevel-wsplit"]
# Edits of the trained files (base relative to --out).
TRAINED_EDITS = {
    "wordpiece-cased": ("@wordpiece-bert", {"normalizer": {"type": "BertNormalizer", "clean_text": True,
                                                           "handle_chinese_chars": False, "strip_accents": False,
                                                           "lowercase": False}}),
    "bpe-clip-bpedecoder": ("@bpe-clip", {"decoder": {"type": "BPEDecoder", "suffix": "</w>"}}),
    "wordlevel-wsplit": ("@wordlevel", {"pre_tokenizer": {"type": "WhitespaceSplit"}}),
}


# GGUF tokenizer.ggml.pre names (llama.cpp's) -> the split regexes of the source tokenizer.json (the same
# table as src/tokenizer/gguf_vocab.cpp). Reference: the shared gpt2 tokenizer.json with its pre-tokenizer
# replaced by these Splits (Isolated) + ByteLevel(use_regex=false), and ignore_merges where marked; the
# test runs our loader on the shared vocab-only gpt-2 GGUF with tokenizer.ggml.pre rewritten to each name.
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
TEKKEN = r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
GPT4O = r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SEED = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"""
BAILING = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
DSV3 = r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Non-ASCII classes as \x{...} escapes (PCRE2 and Oniguruma both read them), exactly as in the C++ table.
DS_LETTERS = r"""\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+"""
DS_PUNCT = r"""\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+"""
CJK_HANGUL = r"""[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+"""
CJK_KANA = r"""[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+"""
PORO = r""" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+"""
GGUF_PRE = [  # (names, regexes, ignore_merges)
    (["default", "gpt-2", "gpt2", "mpt", "olmo", "jais", "phi-2", "trillion"], [GPT2], False),
    (["llama3", "llama-bpe", "llama-v3"], [LLAMA3], True),
    (["smaug-bpe", "dbrx", "chatglm-bpe", "glm4"], [LLAMA3], False),
    (["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "grok-2"], [QWEN2], False),
    (["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"], [r"\p{N}", GPT2], False),
    (["falcon"], [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], False),
    (["deepseek-coder"], ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"], False),
    (["deepseek-llm"], ["[\r\n]", DS_LETTERS, DS_PUNCT, r"\s+$", CJK_HANGUL, r"\p{N}+"], False),
    (["deepseek-v3"], [r"\p{N}{1,3}", CJK_KANA, DSV3], False),
    (["poro-chat", "bloom", "gpt3-finnish"], [PORO], False),
    (["viking"], [PORO, r"\p{N}"], False),
    (["tekken"], [TEKKEN], True),
    (["gpt-4o", "llama4"], [GPT4O], False),
    (["seed-coder"], [SEED], False),
    (["bailingmoe"], [BAILING], False),
]


def gguf_pre_goldens(data, strings, out_path):
    from tokenizers import Tokenizer

    base = json.load(open(os.path.join(data, "tokenizers/gpt2/tokenizer.json"), encoding="utf-8"))
    subset = strings[::3]
    groups = []
    with tempfile.TemporaryDirectory() as tmp:
        for names, regexes, ignore_merges in GGUF_PRE:
            j = json.loads(json.dumps(base))
            j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in regexes] + [
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
            j["model"]["ignore_merges"] = ignore_merges
            path = os.path.join(tmp, "t.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
            t = Tokenizer.from_file(path)
            groups.append({"names": names, "ids": [t.encode(x, add_special_tokens=False).ids for x in subset]})
    with open(out_path, "w", encoding="utf-8") as f:
        f.write('{"gguf": "vocab-gguf/ggml-vocab-gpt-2.gguf", "strings": "every 3rd of strings.json + extra_strings.json",\n'
                '"groups": [\n' + ",\n".join(json.dumps(g, separators=(",", ":")) for g in groups) + "\n]}\n")


def dump_golden(path, doc, ids):
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                                    for k, v in doc.items()))
        f.write(',\n"ids": [\n' + ",\n".join(json.dumps(v, separators=(",", ":")) for v in ids) + "\n]\n}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "tokenizers", "variants"))
    args = ap.parse_args()
    import tokenizers
    from tokenizers import Tokenizer

    data = os.path.abspath(args.data)
    os.makedirs(args.out, exist_ok=True)
    strings = make_strings()
    extra = [x for x in EXTRA if x not in strings]
    with open(os.path.join(args.out, "extra_strings.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(extra, ensure_ascii=False, indent=0) + "\n")
    strings = strings + extra
    lines = load_text(data) + strings

    wp = os.path.join(args.out, "wordpiece-bert.tokenizer.json")
    ug = os.path.join(args.out, "unigram.tokenizer.json")
    ugb = os.path.join(args.out, "unigram-bytes.tokenizer.json")
    if not os.path.exists(wp):
        train_wordpiece(lines, wp)
    if not (os.path.exists(ug) and os.path.exists(ugb)):
        train_unigram(lines, ug, ugb)
    for name, train in TRAINERS.items():  # trained once; committed beside the goldens
        path = os.path.join(args.out, name + ".tokenizer.json")
        if not os.path.exists(path):
            train(lines, path)

    TRAINED_EDITS.update(precompiled_edits(lines))
    for name in TRAINED_EDITS:
        if name not in TRAINED:
            TRAINED.append(name)
    version = "tokenizers " + tokenizers.__version__
    jobs = []  # (name, golden header, tokenizer path)
    with tempfile.TemporaryDirectory() as tmp:
        def edited(base_path, edit, name):
            j = json.load(open(base_path, encoding="utf-8"))
            j.update(edit)
            p = os.path.join(tmp, name + ".json")
            with open(p, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
            return p

        for name, (base, edit) in EDITS.items():
            jobs.append((name, {"base": base, "edit": edit}, edited(os.path.join(data, base), edit, name)))
        for name in TRAINED:
            if name in TRAINED_EDITS:
                base, edit = TRAINED_EDITS[name]
                src = os.path.join(args.out, base[1:] + ".tokenizer.json")
                jobs.append((name, {"file": base[1:] + ".tokenizer.json", "edit": edit}, edited(src, edit, name)))
            else:
                jobs.append((name, {"file": name + ".tokenizer.json", "edit": {}},
                             os.path.join(args.out, name + ".tokenizer.json")))
        for name, head, path in jobs:
            t = Tokenizer.from_file(path)
            ids = [t.encode(x, add_special_tokens=False).ids for x in strings]
            dec = [t.decode(v, skip_special_tokens=False) for v in ids]
            decoded = {str(i): d for i, (d, s) in enumerate(zip(dec, strings)) if d != s}
            doc = dict(head)
            doc.update({"reference": version, "n_strings": len(strings),
                        "with_special": {"text": PROBE, "ids": t.encode(PROBE, add_special_tokens=True).ids},
                        "decoded": decoded})
            dump_golden(os.path.join(args.out, name + ".json"), doc, ids)
            print(f"{name:20s} {sum(map(len, ids)):7d} ids, {len(decoded):3d} strings not round-tripping")
    gguf_pre_goldens(data, strings, os.path.join(args.out, "gguf-pre.json"))
    print("gguf-pre.json: " + ", ".join(n[0][0] for n in GGUF_PRE))


if __name__ == "__main__":
    sys.exit(main())
