#!/usr/bin/env bash
# After bench/run_gpu.sh (same machine, same build): bench_sae's step for each value of an environment
# variable, one line per case and value, appended to $OUT/summary.txt. Used to choose kernel defaults:
#   bench/gpu_variants.sh MLXTERP_SAE_PREFETCH "0 1 2 3" llama3-8b llama3.2-1b
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu-out}
BUILD=${BUILD_DIR:-$ROOT/build-cuda}
VAR=$1 VALUES=$2
shift 2
# PCRE2 and utf8proc from .gpu-deps (as run_gpu.sh links them).
LIB=$(mktemp -d)
for pair in "pcre2-8:libpcre2-8.so.0" "utf8proc:libutf8proc.so.2"; do
  SO=$(find "$ROOT/.gpu-deps" -name "lib${pair%%:*}.so*" -type f 2>/dev/null | sort | tail -1)
  [[ -n "$SO" ]] && ln -sf "$SO" "$LIB/${pair#*:}"
done
export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}"
CASES=()
for c in "$@"; do CASES+=(--case "$c"); done
{
  echo
  echo "== $VAR variants ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
  for v in $VALUES; do
    env "$VAR=$v" timeout 120 "$BUILD/bench/bench_sae" --device cuda "${CASES[@]}" --no-peer --no-check 2>&1 |
      grep -E "^== case|mlxterp step|encoder GEMM|peak memory" | sed "s/^/[$VAR=$v] /"
  done
} >>"$OUT/summary.txt" 2>&1
