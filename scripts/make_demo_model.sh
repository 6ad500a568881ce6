#!/usr/bin/env bash
# Makes the embedded demo model models/kjv-llama from scratch, deterministically:
#   1. data       the King James Bible from Debian's bible-kjv package (`bible`), one verse per line, in
#                 book order; five books held out for evaluation (Ruth, Jonah, Lamentations, Philippians, James)
#   2. tokenizer  a 4096-piece SentencePiece BPE model (byte fallback) trained on the training verses by
#                 Debian's spm_train, single-threaded with a fixed seed
#   3. corpus     models/kjv-llama/demo_corpus.txt, the text `mlxterp demo` trains its SAE on: Genesis
#                 and the five held-out books, one verse per line
#   4. model      `mlxterp train-lm`: a 4-layer Llama (d_model 256), AdamW + cosine schedule, on the CPU
#                 (one libtorch thread: with the cores shared, a second OpenMP thread mostly spin-waits)
#
# Usage: scripts/make_demo_model.sh [data|tokenizer|corpus|train|all]     (default: all)
# Environment: MLXTERP (the binary, default build/mlxterp), WORK (scratch, default build/kjv),
#              OUT (default models/kjv-llama), THREADS (default 1), NICE (default 10),
#              PRETOKENIZED=1 tokenizes with Python's sentencepiece into id files instead of passing the
#              text and tokenizer.model to train-lm (identical ids; train-lm refuses to --resume otherwise).
# Re-running `train` resumes from $WORK/checkpoint.safetensors when it exists.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MLXTERP=${MLXTERP:-$ROOT/build/mlxterp}
WORK=${WORK:-$ROOT/build/kjv}
OUT=${OUT:-$ROOT/models/kjv-llama}
THREADS=${THREADS:-1}
NICE=${NICE:-10}
STAGE=${1:-all}
HELDOUT_BOOKS="Ruth Jonah Lam Phi Jas"   # book codes as `bible -f` prints them
mkdir -p "$WORK"

stage_data() {
  command -v bible >/dev/null || { echo "error: make_demo_model: 'bible' not found; expected Debian's bible-kjv package (apt-get install bible-kjv)" >&2; exit 1; }
  # -f: one verse per line, "Ge1:1 In the beginning ..."; the range covers the whole text in book order.
  bible -p /usr/lib -f "Gen1:1-Rev22:21" > "$WORK/kjv.txt"
  local n
  n=$(wc -l < "$WORK/kjv.txt")
  [ "$n" -eq 31102 ] || { echo "error: make_demo_model: $WORK/kjv.txt has $n verses; expected 31102" >&2; exit 1; }
  # Drop the reference, route each verse by its book code.
  awk -v held="$HELDOUT_BOOKS" -v train="$WORK/train.txt" -v heldout="$WORK/heldout.txt" '
    BEGIN { split(held, h, " "); for (i in h) H[h[i]] = 1 }
    { book = $1; sub(/[0-9]+:[0-9]+$/, "", book); $1 = ""; sub(/^ /, "");
      if (book in H) print > heldout; else print > train }' "$WORK/kjv.txt"
  echo "data: $(wc -l < "$WORK/train.txt") training verses, $(wc -l < "$WORK/heldout.txt") held-out verses ($HELDOUT_BOOKS)"
  (cd "$WORK" && md5sum kjv.txt train.txt heldout.txt)
}

stage_tokenizer() {
  # Run inside $WORK with relative names: spm_train records its input path and model prefix in the model.
  (cd "$WORK" && spm_train --input=train.txt --model_prefix=tokenizer --model_type=bpe --vocab_size=4096 \
      --character_coverage=1.0 --byte_fallback=true --split_digits=true --normalization_rule_name=identity \
      --remove_extra_whitespaces=false --add_dummy_prefix=true --allow_whitespace_only_pieces=true \
      --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=1 --random_seed=1234 --minloglevel=1 \
      2> tokenizer.log && md5sum tokenizer.model)
}

stage_corpus() {
  # In Bible order, so its last lines are exactly heldout.txt (test_demo_model.cpp re-scores them).
  mkdir -p "$OUT"
  awk -v books="Ge $HELDOUT_BOOKS" '
    BEGIN { n = split(books, b, " "); for (i = 1; i <= n; i++) keep[b[i]] = 1 }
    { book = $1; sub(/[0-9]+:[0-9]+$/, "", book); if (!(book in keep)) next; $1 = ""; sub(/^ /, ""); print }' \
    "$WORK/kjv.txt" > "$OUT/demo_corpus.txt"
  echo "corpus: $(wc -l < "$OUT/demo_corpus.txt") verses in $OUT/demo_corpus.txt"
}

stage_train() {
  local data_args resume=()
  if [ "${PRETOKENIZED:-0}" = 1 ]; then
    /usr/bin/python3 - "$WORK" <<'EOF'
import sys, sentencepiece as spm
work = sys.argv[1]
sp = spm.SentencePieceProcessor(model_file=f"{work}/tokenizer.model")
for name in ("train", "heldout"):
    with open(f"{work}/{name}.txt") as f, open(f"{work}/{name}.ids", "w") as out:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                # BOS + pieces + EOS: what train-lm makes of each line with --tokenizer tokenizer.model
                out.write(" ".join(map(str, [sp.bos_id()] + sp.encode(line) + [sp.eos_id()])) + "\n")
EOF
    data_args=(--data-ids "$WORK/train.ids" --eval-data-ids "$WORK/heldout.ids" --vocab-size 4096 --bos-id 1 --eos-id 2)
  else
    data_args=(--data "$WORK/train.txt" --eval-data "$WORK/heldout.txt" --tokenizer "$WORK/tokenizer.model"
               --sample-prompt "And God said")
  fi
  [ -f "$WORK/checkpoint.safetensors" ] && resume=(--resume)
  nice -n "$NICE" "$MLXTERP" --threads "$THREADS" train-lm "${data_args[@]}" --out "$OUT" \
    --d-model 256 --n-layers 4 --n-heads 8 --n-kv-heads 4 --d-mlp 640 --context 128 \
    --steps 1200 --batch 8 --lr 2e-3 --min-lr 2e-4 --warmup 50 --weight-decay 0.1 --grad-clip 1.0 --seed 1234 \
    --log-every 10 --eval-every 100 --checkpoint-every 25 --checkpoint "$WORK/checkpoint.safetensors" --keep-checkpoint \
    --save-dtype bf16 "${resume[@]}"
  # With pre-tokenized data train-lm has no tokenizer to copy.
  [ -f "$OUT/tokenizer.model" ] || cp "$WORK/tokenizer.model" "$OUT/tokenizer.model"
}

case "$STAGE" in
  data) stage_data ;;
  tokenizer) stage_tokenizer ;;
  corpus) stage_corpus ;;
  train) stage_train ;;
  all) stage_data; stage_tokenizer; stage_corpus; stage_train ;;
  *) echo "usage: $0 [data|tokenizer|corpus|train|all]" >&2; exit 2 ;;
esac
