#!/usr/bin/env bash
# One run on the GPU machine (H100/H200, Ubuntu 24.04, nvcc 13, the torch wheel's libtorch): configure and
# build the CUDA build, run the unit tests on the GPU, then bench_sae and bench_pipeline with their PyTorch
# peers. Every stage runs even if an earlier one failed (where it can); each stage's status and time is
# printed, and a summary comes last. Logs go to $OUT (at most 8 files):
#   env.log build.log tests.log bench_sae.log bench_sae.json bench_pipeline.log bench_pipeline.json summary.txt
#
#   bash bench/run_gpu.sh                 # from the repository root; OUT defaults to ./gpu-out
#
# PCRE2 is not installed there: put Debian's libpcre2 dev files under .gpu-deps/ (any layout with the
# libpcre2-8.pc, pcre2.h and libpcre2-8.so); the script points pkg-config and the loader at them.
# Budget: everything is meant to end within ~8 minutes (GPU_DEADLINE_S, default 510 s after the start).
set -uo pipefail
set -x
START=$(date +%s)
DEADLINE=$((START + ${GPU_DEADLINE_S:-510}))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD_DIR:-$ROOT/build-cuda}
JOBS=${JOBS:-$(nproc)}
declare -A STATUS TIME

left() { echo $((DEADLINE - $(date +%s))); }
# stage NAME LIMIT_S LOG CMD...: runs CMD with a timeout (capped by the deadline), logs, records status/time.
stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local budget
  budget=$(left)
  ((budget > limit)) && budget=$limit
  if ((budget < 10)); then
    STATUS[$name]="skipped (out of time)"
    TIME[$name]=0
    echo "=== $name: skipped, out of time" | tee -a "$log"
    return 1
  fi
  echo "=== $name (limit ${budget}s): $*" | tee -a "$log"
  local t0 rc
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$budget" "$@" >>"$log" 2>&1
  rc=$?
  TIME[$name]=$(($(date +%s) - t0))
  if ((rc == 0)); then STATUS[$name]=ok; elif ((rc == 124)); then STATUS[$name]="TIMEOUT"; else STATUS[$name]="FAILED (exit $rc)"; fi
  echo "=== $name: ${STATUS[$name]} in ${TIME[$name]}s" | tee -a "$log"
  return $rc
}

# ---- environment ---------------------------------------------------------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
  nvcc --version || /usr/local/cuda/bin/nvcc --version || true
  cmake --version | head -1
  python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
  python3 -c 'import transformers; print("transformers", transformers.__version__)' || true
  nproc
  free -g | head -2
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

export PATH=/usr/local/cuda/bin:$PATH
export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

# PCRE2 from .gpu-deps: copies of its .pc files with the prefix rewritten to where the files really are.
DEPS=${GPU_DEPS:-$ROOT/.gpu-deps}
if [[ -d "$DEPS" ]]; then
  PCDIR=$(mktemp -d)
  INC=$(dirname "$(find "$DEPS" -name pcre2.h | head -1)" 2>/dev/null || true)
  while IFS= read -r pc; do
    libdir=$(dirname "$(dirname "$pc")")
    sed -e "s|^prefix=.*|prefix=$DEPS/usr|" -e "s|^exec_prefix=.*|exec_prefix=$DEPS/usr|" \
        -e "s|^libdir=.*|libdir=$libdir|" -e "s|^includedir=.*|includedir=${INC:-$DEPS/usr/include}|" \
        "$pc" >"$PCDIR/$(basename "$pc")"
    export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
    export LIBRARY_PATH="$libdir:${LIBRARY_PATH:-}"
  done < <(find "$DEPS" -name '*.pc')
  export PKG_CONFIG_PATH="$PCDIR:${PKG_CONFIG_PATH:-}"
  [[ -n "${INC:-}" ]] && export CPATH="$INC:${CPATH:-}"
  pkg-config --cflags --libs libpcre2-8 || echo "pkg-config does not see libpcre2-8 yet"
else
  echo "no $DEPS: relying on a system libpcre2-8"
fi

# ---- configure + build ---------------------------------------------------------------------------------------
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
CONFIGURE=(cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DMLXTERP_CUDA=ON
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DCMAKE_CUDA_COMPILER="$CUDACXX" -DCMAKE_CUDA_ARCHITECTURES=90
  -DMLXTERP_CUDA_ARCHS=90 -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_POLICY_VERSION_MINIMUM=3.5)
if ! stage configure 150 "$OUT/build.log" "${CONFIGURE[@]}"; then
  # Show why, then try once more from a clean cache without cuDNN (not needed here).
  tail -60 "$OUT/build.log"
  rm -rf "$BUILD"
  stage configure_retry 150 "$OUT/build.log" "${CONFIGURE[@]}" -DCAFFE2_USE_CUDNN=OFF || tail -80 "$OUT/build.log"
fi
# -k 0 / --keep-going: build every target that can be built.
KEEP=(-- -k 0)
[[ ${#GEN[@]} -eq 0 ]] && KEEP=(-- -k)
stage build 330 "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS" \
  --target mlxterp bench_sae bench_pipeline mlxterp_tests mlxterp_cli "${KEEP[@]}"
grep -E "error|Error" "$OUT/build.log" | grep -v "Werror\|error_\|errors.h\|_error\|error\.hpp" | head -40
BIN_TESTS=$(find "$BUILD" -name mlxterp_tests -type f -perm -u+x | head -1)
BIN_SAE=$(find "$BUILD" -name bench_sae -type f -perm -u+x | head -1)
BIN_PIPE=$(find "$BUILD" -name bench_pipeline -type f -perm -u+x | head -1)

# ---- unit tests on the GPU ---------------------------------------------------------------------------------------
export MLXTERP_TEST_DEVICE=cuda
if [[ -n "$BIN_TESTS" ]]; then
  # The GPU-kernel tests first and in full; then the rest of the suite, failures only.
  stage tests_cuda 150 "$OUT/tests.log" "$BIN_TESTS" --gtest_filter='CudaSae*:SaeKernels*:ShuffleBuffer*:CudaTrainStep*' --gtest_color=no
  stage tests_rest 120 "$OUT/tests.log" "$BIN_TESTS" --gtest_filter='-CudaSae*:SaeKernels*:ShuffleBuffer*:CudaTrainStep*' \
    --gtest_brief=1 --gtest_color=no
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |^\[==========\]|Failure|error:" "$OUT/tests.log" | head -60
else
  STATUS[tests_cuda]="not built"
  echo "mlxterp_tests was not built" >>"$OUT/tests.log"
fi

# ---- benchmarks (each runs its PyTorch peer on the same GPU in the same invocation) ------------------------------
if [[ -n "$BIN_SAE" ]]; then
  stage bench_sae 200 "$OUT/bench_sae.log" "$BIN_SAE" --device cuda --json "$OUT/bench_sae.json"
else
  # No build: at least the PyTorch numbers.
  STATUS[bench_sae]="not built; peer only"
  stage sae_peer_only 150 "$OUT/bench_sae.log" python3 bench/reference/sae_peer.py --device cuda
  stage sae_peer_only_small 90 "$OUT/bench_sae.log" python3 bench/reference/sae_peer.py --device cuda \
    --d 2048 --f 65536 --k 64
fi
if [[ -n "$BIN_PIPE" ]]; then
  stage bench_pipeline 240 "$OUT/bench_pipeline.log" "$BIN_PIPE" --device cuda --json "$OUT/bench_pipeline.json"
else
  STATUS[bench_pipeline]="not built; peer only"
  stage pipeline_peer_only 200 "$OUT/bench_pipeline.log" python3 bench/reference/pipeline_peer.py --device cuda
fi

# ---- summary ------------------------------------------------------------------------------------------------------
set +x
{
  echo "run_gpu.sh finished in $(($(date +%s) - START)) s on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  for s in configure configure_retry build tests_cuda tests_rest bench_sae sae_peer_only sae_peer_only_small bench_pipeline pipeline_peer_only; do
    [[ -n "${STATUS[$s]:-}" ]] && printf "  %-20s %-24s %5ss\n" "$s" "${STATUS[$s]}" "${TIME[$s]:-0}"
  done
  echo
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran" "$OUT/tests.log" 2>/dev/null | head -20
  echo
  sed -n '/== bench_sae summary/,$p' "$OUT/bench_sae.log" 2>/dev/null
  grep -E "^\s+check vs reference" "$OUT/bench_sae.log" 2>/dev/null
  echo
  sed -n '/== bench_pipeline summary/,$p' "$OUT/bench_pipeline.log" 2>/dev/null
  grep -h "\[peer\]" "$OUT/bench_sae.log" "$OUT/bench_pipeline.log" 2>/dev/null | tail -24
} >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
exit 0
