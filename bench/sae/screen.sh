#!/usr/bin/env bash
# One screening run for docs/sae-results.md: the `sae train` line of run_full.sh on $OUT/cache (made by
# run_full.sh) with EPOCHS epochs and extra --set overrides, then held-out FVU / L0 / never-active by the
# reference script's evaluator (same split, one story at a time).
#   OUT=/tmp/mlxterp_sae_full bench/sae/screen.sh NAME EPOCHS {topk|batchtopk} [--set key=value ...]
# Writes $SCREEN_DIR/NAME (default /tmp/saex/NAME) and NAME.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1; ep=$2; arch=$3; shift 3
OUT=${OUT:-/tmp/mlxterp_sae_full}; DIR=${SCREEN_DIR:-/tmp/saex}
mkdir -p "$DIR"; rm -rf "${DIR:?}/$name"
./build/mlxterp sae train --layer 2 --component resid_post --threads 1 --plain-progress \
  --set expansion_factor=16 --set k=32 --set batch_size=256 --set learning_rate=1e-3 --set warmup_steps=100 \
  --set lr_scheduler=cosine --set validation_split=0.1 --set text_batch_size=32 --set context_size=256 \
  --set seed=42 --data "$OUT/cache" --set num_epochs="$ep" --set sae_type="$arch" "$@" --out "$DIR/$name" \
  > "$DIR/$name.log" 2>&1
/usr/bin/python3 bench/sae/screen_eval.py "$OUT/cache" "$arch" "$DIR/$name"
