#!/usr/bin/env python3
"""Golden token ids for every tokenizer in ../shared/data, from the reference implementations.

    /usr/bin/python3 tests/reference/make_tokenizer_goldens.py [--data ../shared/data] \
        [--out tests/golden/tokenizers] [--backend auto|python|node] [--node-module /tmp/npmtok2/node_modules/tokenizers]

References:
  * Hugging Face `tokenizers` (the Rust library) for tokenizer.json files: through the Python package
    when it is installed (`pip install tokenizers`), else through its Node binding (same Rust core,
    same version) via hf_tokenizers_node.js. --backend forces one.
  * the `sentencepiece` library for SentencePiece .model files (and for llama2.c's tokenizer.bin,
    an export of tokenizers/llama2-spm/tokenizer.model).
  * vocabulary-only GGUFs: the HF tokenizer.json of the same vocabulary (gpt2, llama2-spm). For
    phi-3 no Hub tokenizer.json is at hand; its reference is llama2-spm's tokenizer.json (the GGUF's
    first 32,000 pieces, scores and types are identical, checked below) plus the GGUF's extra
    control/unknown tokens as added special tokens with llama.cpp's phi-3 attributes (rstrip on
    every special token except <unk>, <s>, <|endoftext|>; </s> rstrip too), built here with the
    `tokenizers` library itself.
  * llama2.c tok*.bin: sentencepiece with a ModelProto built from the .bin's pieces and scores
    (llama2c_to_spm_model; validated: for tokenizers/llama2-spm/tokenizer.bin it gives exactly the ids
    of the original tokenizer.model on every string).
  * stories260K: hf/tokenizer.json via HF tokenizers for the json and the GGUF (same vocabulary);
    tok512.bin via the sentencepiece model rebuilt from it (the two differ only on strings holding
    "<s>"/"</s>"/"<unk>", which HF matches as special tokens and SentencePiece/llama2.c treat as text).

Output (deterministic: same inputs -> byte-identical files): strings.json (the test strings) and
one <name>.json per tokenizer: {"tokenizer", "reference", "ids": [[...] per string], "decoded":
{index: text} only where the reference's decode(ids) differs from the string, "with_special":
{"text", "ids"} (HF only: the post-processor's template)}.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

PROBE = "Hello world"


# ---------------------------------------------------------------------------------------------
# The test strings (>= 200): fixed literals plus systematic combinations; no randomness.
# ---------------------------------------------------------------------------------------------
def make_strings():
    s = []
    # Plain English and TinyStories-like prose.
    s += ["Hello world", "Hello, world!", "hello", "Hello", "HELLO", "The quick brown fox jumps over the lazy dog.",
          "I believe the meaning of life is", "Simply put, the theory of relativity states that ",
          "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
          "Lily's mom said, \"Lily, let's go to the park.\"", "One day, she saw a big, red ball.",
          "Tom and Sue were friends. They liked to play with toys.\n\nThe end.",
          "â€œHello,â€\x9d said the boy.", "a", "I", "A b C d E f"]
    # Whitespace: runs, tabs, newlines, unusual spaces.
    s += ["", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r", " \n ", "\t\t", " \t ", "a  b", "a   b",
          "a    b", "a\tb", "a\t\tb", "a \t b", "a\nb", "a\n\nb", "a\r\nb", "a \nb", "a\n b", "a\n\n  b",
          "trailing ", "trailing  ", "trailing\n", "trailing\n\n", " both ", "  both  ", "\n\nparagraph\n\n",
          "line1\nline2\r\nline3\rline4", "\u00a0nbsp\u00a0here", "a\u3000b", "em\u2003space", "zero\u200bwidth",
          "line\u2028sep", "v\x0btab\x0cff", "nel\u0085x", "  \n\t  \n", "word" + " " * 9 + "word", "x\n" * 5]
    # Leading spaces.
    s += [" Hello", "  Hello", "   Hello world", " 1", " ,", " !", "  !!", " a", " é", " 你好", " <s>", "\tHello",
          "\nHello", " \nHello"]
    # Accents and non-Latin alphabets.
    s += ["café", "naïve résumé", "Ångström", "Crème brûlée", "ñandú", "cafe\u0301", "e\u0301\u0302\u0303",
          "Ελληνικά γράμματα", "Москва — столица России.", "Tiếng Việt có dấu", "Straße", "İstanbul ılık",
          "ǅemal", "Ærøskøbing", "Zürich über Öl", "façade déjà vu"]
    # Emoji.
    s += ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷🇯🇵", "I ❤️ NY", "🤖🤖🤖", "a😀b", "😀 😀", "Hi 👋, how are you? 🙂",
          "\u2764\ufe0f"]
    # CJK, Arabic, Hebrew, Indic, Thai, Ethiopic.
    s += ["你好，世界", "日本語のテキストです。", "한국어 텍스트", "中文 English 混合 text", "東京タワー", "漢字かなカナ",
          "我爱北京天安门", "こんにちは世界", "مرحبا بالعالم", "السلام عليكم ورحمة الله", "שלום עולם", "नमस्ते दुनिया",
          "สวัสดีชาวโลก", "ሰላም ለዓለም", "Привет, мир!", "Γειά σου Κόσμε", "\u200fRTL mark", "العربية 123 English"]
    # Code.
    s += ["def f(x):\n    return x**2\n", "int main() { return 0; }",
          "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "<html><body>Hi</body></html>",
          "SELECT * FROM users WHERE id = 42;", '{"key": [1, 2, 3], "nested": {"a": null}}', r"^\s*(\d+)\.\d{2}$",
          "    indented\n        more\n", "x += 1  # comment", "fn main() -> Result<(), Box<dyn Error>> {}",
          "`code` and ```fenced```", "$HOME/.bashrc && echo $?", "a->b; c::d; e=>f; g!=h; i<=j",
          "import numpy as np\nnp.zeros((3, 4))", "if __name__ == '__main__':\n    main()",
          "#include <stdio.h>\n", "// comment\n/* block */", "x = [i for i in range(10) if i % 2]"]
    # Numbers.
    s += ["12345", "1234567890123456789012345", "3.14159265358979", "1,000,000", "2024-01-15T12:30:00Z",
          "+1 (555) 123-4567", "100%", "$1,234.56", "1st 2nd 3rd 4th", "٣٤٥ ١٢", "Ⅻ ½ ²³", "0x1F 0b1010 1e-9",
          "7", "42", "999", "1000", "10000", "-5", "3.0", "v1.2.3"]
    # Special-token strings of the various vocabularies (and near misses).
    s += ["<s>", "</s>", "<unk>", "<s>Hello</s>", "Hello<s>world", " <s> ", "<s> <s>", "<|endoftext|>",
          "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<|begin_of_text|>Hi",
          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "[INST] Hi [/INST]", "[INST]Hi[/INST]",
          "<|im_start|>user\nHi<|im_end|>", "<|user|>\nHi<|end|>\n<|assistant|>", "<|user|> Hi <|end|> ",
          "<<s>>", "<s", "s>", "<0x0A>", "<pad>", "[PAD32011]", "<|placeholder1|>  x", "</s>\n\n</s>"]
    # Contractions and apostrophes.
    s += ["it's", "IT'S", "don't", "I'm", "we'll", "they've", "she'd", "you're", "'s", "O'Neil's", "'''",
          "it\u2019s", "Don'T", "rock 'n' roll", "'tis"]
    # Punctuation and symbols.
    s += ["!!!", "???", "...", "—", "–", "\u201cquoted\u201d", "«guillemets»", "(parens) [brackets] {braces}",
          "@user #hashtag", "a/b\\c", "~`!@#$%^&*()_+-=", "....", "?!?!", "™©®", "§¶†‡"]
    # Very long words and runs.
    s += ["a" * 100, "supercalifragilisticexpialidocious" * 3, "pneumonoultramicroscopicsilicovolcanoconiosis",
          "x" * 300, "ab" * 150, "😀" * 40, "中" * 100, "1" * 100, "-" * 80, " " * 50, "\n" * 20, "hello" * 40,
          "=" * 64 + "\n" + "=" * 64, "aaaa bbbb " * 20]
    # Mixed cases, identifiers, URLs, odd code points.
    s += ["camelCaseIdentifier", "snake_case_identifier", "kebab-case-id", "URL: https://example.com/path?q=1&b=2#frag",
          "email@example.com", "\u2581already\u2581escaped", "\u0120", "  \u2581 ", "\\n literal", "tab\tseparated\tvalues",
          "A\x00B", "\ufeffBOM", "𝕳𝖊𝖑𝖑𝖔", "ｆｕｌｌｗｉｄｔｈ", "ﬁ ligature", "Ⓐ", "HelloWorld", "hello.world",
          "x86_64-linux-gnu", "U.S.A.", "e.g., i.e."]
    # Systematic: a word pair joined by each kind of whitespace, and each script after a space/newline.
    joins = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", " \n", "\n ", "\n\n"]
    for j in joins:
        s.append("hello" + j + "world")
    for w in ["über", "日本", "😀x", "123", "<s>", "don't", "ß", "\u0301a"]:
        s.append(" " + w)
        s.append("\n" + w)
        s.append(w + " ")
    # A longer multi-script paragraph.
    s.append("The café in Zürich (est. 1920) serves 3 kinds of crème brûlée — 美味しい! 🍮\n"
             "\tPrices: $4.50, €5.00; call +41 44 123 45 67.\n\n"
             "«C'est la vie», she said. Москва, 北京, القاهرة… it's all the same.")
    # Deduplicate, keeping the first occurrence (deterministic order).
    seen, out = set(), []
    for x in s:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# ---------------------------------------------------------------------------------------------
# GGUF metadata (the few value types vocabularies use).
# ---------------------------------------------------------------------------------------------
def gguf_metadata(path):
    fmt = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def rd(code):
        nonlocal pos
        (v,) = struct.unpack_from("<" + code, data, pos)
        pos += struct.calcsize("<" + code)
        return v

    def rstr():
        nonlocal pos
        n = rd("Q")
        v = data[pos:pos + n].decode("utf-8")
        pos += n
        return v

    def val(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("I"), rd("Q")
            return [val(et) for _ in range(n)]
        return rd(fmt[t])

    assert data[:4] == b"GGUF", path
    pos = 4
    rd("I")
    rd("Q")
    nkv = rd("Q")
    meta = {}
    for _ in range(nkv):
        k = rstr()
        meta[k] = val(rd("I"))
    return meta


# ---------------------------------------------------------------------------------------------
# llama2.c tok*.bin -> a SentencePiece ModelProto (hand-serialized protobuf: no protobuf package
# needed), so the sentencepiece library itself is the reference for llama2.c vocabularies.
# ---------------------------------------------------------------------------------------------
def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, wire, payload):
    key = _varint((num << 3) | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def read_llama2c_tokenizer(path):
    with open(path, "rb") as f:
        data = f.read()
    pos, pieces, scores = 4, [], []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        pieces.append(data[pos:pos + n].decode("utf-8"))
        scores.append(score)
        pos += n
    return pieces, scores


def llama2c_to_spm_model(path, out_path):
    """Pieces: ' ' -> '\u2581'; 0 <unk> (UNKNOWN), 1 <s> / 2 </s> (CONTROL), 3..258 bytes (BYTE)."""
    pieces, scores = read_llama2c_tokenizer(path)
    body = b""
    for i, (p, s) in enumerate(zip(pieces, scores)):
        if i == 0:
            p, t = "<unk>", 2
        elif i in (1, 2):
            p, t = p.strip(), 3
        elif 3 <= i <= 258:
            t = 6
        else:
            p, t = p.replace(" ", "\u2581"), 1
        msg = _field(1, 2, p.encode("utf-8")) + _field(2, 5, struct.pack("<f", s)) + _field(3, 0, _varint(t))
        body += _field(1, 2, msg)
    trainer = (_field(3, 0, _varint(2)) + _field(4, 0, _varint(len(pieces))) + _field(35, 0, _varint(1)) +
               _field(40, 0, _varint(0)) + _field(41, 0, _varint(1)) + _field(42, 0, _varint(2)) +
               _field(43, 0, _varint(-1)))
    normalizer = (_field(1, 2, b"identity") + _field(3, 0, _varint(1)) + _field(4, 0, _varint(0)) +
                  _field(5, 0, _varint(1)))
    with open(out_path, "wb") as f:
        f.write(body + _field(2, 2, trainer) + _field(3, 2, normalizer))
    return out_path


def build_phi3_reference(data, tmpdir):
    """llama2-spm tokenizer.json + phi-3's extra GGUF tokens, as llama.cpp treats them."""
    base = json.load(open(os.path.join(data, "tokenizers/llama2-spm/tokenizer.json"), encoding="utf-8"))
    phi = gguf_metadata(os.path.join(data, "vocab-gguf/ggml-vocab-phi-3.gguf"))
    llama = gguf_metadata(os.path.join(data, "vocab-gguf/ggml-vocab-llama-spm.gguf"))
    toks, types = phi["tokenizer.ggml.tokens"], phi["tokenizer.ggml.token_type"]
    assert toks[:32000] == llama["tokenizer.ggml.tokens"], "phi-3's first 32000 pieces differ from Llama 2's"
    assert phi["tokenizer.ggml.scores"][3:32000] == llama["tokenizer.ggml.scores"][3:32000]
    assert types[3:32000] == llama["tokenizer.ggml.token_type"][3:32000]
    vocab = base["model"]["vocab"]
    assert all(vocab[t] == i for i, t in enumerate(toks[:32000]) if t in vocab)
    no_rstrip = {"<unk>", "<s>", "<|endoftext|>"}
    added = []
    for i, (t, ty) in enumerate(zip(toks, types)):
        if ty in (2, 3, 4):  # unknown, control, user-defined: matched in the text before BPE
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": t not in no_rstrip, "normalized": False, "special": ty != 4})
    base["added_tokens"] = added
    path = os.path.join(tmpdir, "phi3-tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(base, f, ensure_ascii=False)
    return path


# ---------------------------------------------------------------------------------------------
# Reference runners.
# ---------------------------------------------------------------------------------------------
def run_hf(jobs, backend, node_module):
    """jobs: list of (tokenizer.json path, strings) -> (version, [(ids, decoded, with_special)])."""
    if backend in ("auto", "python"):
        try:
            import tokenizers  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError:
            if backend == "python":
                raise
        else:
            out = []
            for path, strings in jobs:
                t = Tokenizer.from_file(path)
                ids = [t.encode(x, add_special_tokens=False).ids for x in strings]
                dec = [t.decode(v, skip_special_tokens=False) for v in ids]
                out.append((ids, dec, t.encode(PROBE, add_special_tokens=True).ids))
            return "tokenizers " + tokenizers.__version__, out
    req = {"module": node_module, "jobs": [{"file": p, "strings": s, "special_probe": PROBE} for p, s in jobs]}
    proc = subprocess.run(["node", os.path.join(HERE, "hf_tokenizers_node.js")], input=json.dumps(req).encode("utf-8"),
                          stdout=subprocess.PIPE, check=True)
    res = json.loads(proc.stdout.decode("utf-8"))
    return "tokenizers " + res["version"], [(r["ids"], r["decoded"], r["with_special"]) for r in res["results"]]


def run_spm(path, strings):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    ids = [sp.encode(x) for x in strings]
    return "sentencepiece " + spm.__version__, ids, [sp.decode(v) for v in ids]


# name, file under data/, reference kind, reference file under data/ ("@phi3" = built above)
TOKENIZERS = [
    ("gpt2-json", "tokenizers/gpt2/tokenizer.json", "hf", "tokenizers/gpt2/tokenizer.json"),
    ("llama3-json", "tokenizers/llama3-bpe/tokenizer.json", "hf", "tokenizers/llama3-bpe/tokenizer.json"),
    ("llama2-json", "tokenizers/llama2-spm/tokenizer.json", "hf", "tokenizers/llama2-spm/tokenizer.json"),
    ("mistral-v1-json", "tokenizers/mistral/tokenizer.v1.json", "hf", "tokenizers/mistral/tokenizer.v1.json"),
    ("llama2-model", "tokenizers/llama2-spm/tokenizer.model", "spm", "tokenizers/llama2-spm/tokenizer.model"),
    ("llama2-bin", "tokenizers/llama2-spm/tokenizer.bin", "spm", "tokenizers/llama2-spm/tokenizer.model"),
    ("mistral-v1-model", "tokenizers/mistral/tokenizer.model.v1", "spm", "tokenizers/mistral/tokenizer.model.v1"),
    ("mistral-v3-model", "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3", "spm",
     "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3"),
    ("unigram-model", "tokenizers/spm-unigram-test/test_model.model", "spm",
     "tokenizers/spm-unigram-test/test_model.model"),
    ("gguf-gpt2", "vocab-gguf/ggml-vocab-gpt-2.gguf", "hf", "tokenizers/gpt2/tokenizer.json"),
    ("gguf-llama-spm", "vocab-gguf/ggml-vocab-llama-spm.gguf", "hf", "tokenizers/llama2-spm/tokenizer.json"),
    ("gguf-phi3", "vocab-gguf/ggml-vocab-phi-3.gguf", "hf", "@phi3"),
    ("stories260K-json", "models/stories260K/hf/tokenizer.json", "hf", "models/stories260K/hf/tokenizer.json"),
    ("stories260K-tok512", "models/stories260K/tok512.bin", "spm-llama2c", "models/stories260K/tok512.bin"),
    ("stories260K-gguf", "models/stories260K/stories260K.gguf", "hf", "models/stories260K/hf/tokenizer.json"),
]


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "tokenizers"))
    ap.add_argument("--backend", default="auto", choices=["auto", "python", "node"])
    ap.add_argument("--node-module", default="/tmp/npmtok2/node_modules/tokenizers")
    args = ap.parse_args()
    data = os.path.abspath(args.data)
    strings = make_strings()
    assert len(strings) >= 200, len(strings)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "strings.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(strings, ensure_ascii=False, indent=0) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        phi3 = build_phi3_reference(data, tmp)
        # The ModelProto builder must reproduce the original model from its llama2.c export.
        rebuilt = llama2c_to_spm_model(os.path.join(data, "tokenizers/llama2-spm/tokenizer.bin"),
                                       os.path.join(tmp, "llama2-rebuilt.model"))
        assert run_spm(rebuilt, strings)[1] == run_spm(os.path.join(data, "tokenizers/llama2-spm/tokenizer.model"),
                                                       strings)[1], "rebuilt llama2 model disagrees with the original"
        hf_entries = [t for t in TOKENIZERS if t[2] == "hf"]
        hf_files = sorted({t[3] for t in hf_entries})
        version, results = run_hf([(phi3 if f == "@phi3" else os.path.join(data, f), strings) for f in hf_files],
                                  args.backend, args.node_module)
        hf_by_file = dict(zip(hf_files, results))
        for name, file, kind, ref in TOKENIZERS:
            if kind == "hf":
                ids, dec, with_special = hf_by_file[ref]
                reference = f"HF {version}: " + ("tokenizers/llama2-spm/tokenizer.json + phi-3 GGUF added tokens "
                                                 "(see make_tokenizer_goldens.py)" if ref == "@phi3" else ref)
                special = {"text": PROBE, "ids": with_special}
            elif kind == "spm-llama2c":
                model = llama2c_to_spm_model(os.path.join(data, ref), os.path.join(tmp, name + ".model"))
                sver, ids, dec = run_spm(model, strings)
                reference = f"{sver}: SentencePiece model rebuilt from {ref} (see make_tokenizer_goldens.py)"
                special = None
            else:
                sver, ids, dec = run_spm(os.path.join(data, ref), strings)
                reference = f"{sver}: {ref}"
                special = None
            decoded = {str(i): d for i, (d, s) in enumerate(zip(dec, strings)) if d != s}
            doc = {"tokenizer": file, "reference": reference, "n_strings": len(strings), "with_special": special,
                   "decoded": decoded, "ids": ids}
            with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
                f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                                            for k, v in doc.items() if k != "ids"))
                f.write(',\n"ids": [\n' + ",\n".join(json.dumps(v, separators=(",", ":")) for v in ids) + "\n]\n}\n")
            print(f"{name:22s} {sum(map(len, ids)):7d} ids, {len(decoded):3d} strings not round-tripping  ({reference})")


if __name__ == "__main__":
    sys.exit(main())
