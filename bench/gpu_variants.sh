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
# PCRE2 from .gpu-deps (as run_gpu.sh links it).
SO=$(find "$ROOT/.gpu-deps" -name 'libpcre2-8.so*' -type f 2>/dev/null | sort | tail -1)
if [[ -n "$SO" ]]; then
  LIB=$(mktemp -d)
  ln -sf "$SO" "$LIB/libpcre2-8.so.0"
  export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}"
fi
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
