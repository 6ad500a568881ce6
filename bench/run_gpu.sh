#!/usr/bin/env bash
# One run on the GPU machine (H100/H200, Ubuntu 24.04, nvcc 13, python3 = the venv holding the torch wheel):
# configure and build the CUDA build, run the unit tests on the GPU, then bench_sae and bench_pipeline with
# their PyTorch peers. Every stage runs even if an earlier one failed (where it can); each stage's status
# and time is printed, and a summary comes last. Logs go to $OUT (8 files at most):
#   env.log build.log tests.log bench_sae.log bench_sae.json bench_pipeline.log bench_pipeline.json summary.txt
#
#   bash bench/run_gpu.sh                 # from anywhere; OUT defaults to <repo>/gpu-out
#   GPU_SKIP_BENCH=1 bash bench/run_gpu.sh   # build and tests only
#
# PCRE2 and utf8proc are not installed there: Debian's libpcre2 / libutf8proc packages unpacked under
# .gpu-deps/ (e.g. .gpu-deps/root/usr, carried with the run) are found by their headers and real .so files,
# so dropped symlinks do not matter. Budget: everything ends within GPU_DEADLINE_S (default 530 s) of the
# start; the benchmarks' time is reserved before the rest of the test suite runs.
set -uo pipefail
START=$(date +%s)
DEADLINE=$((START + ${GPU_DEADLINE_S:-530}))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD_DIR:-$ROOT/build-cuda}
JOBS=${JOBS:-16}
SCRATCH=$(mktemp -d)
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
export PATH=/usr/local/cuda/bin:$PATH
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
PYTHON=${MLXTERP_PYTHON:-$(command -v python3)}
export MLXTERP_PYTHON=$PYTHON  # the benches run their PyTorch peers with it
{
  date -u
  echo "repo $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
  "$CUDACXX" --version | tail -2 || true
  cmake --version | head -1
  echo "python: $PYTHON"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
  "$PYTHON" -c 'import transformers; print("transformers", transformers.__version__)' || true
  echo "cores: $(nproc)"
  free -g | head -2
} >"$OUT/env.log" 2>&1

# PCRE2 and utf8proc from .gpu-deps (neither is installed there): the header's directory and the real
# shared library, linked through our own lib*.so / .so.N links in $SCRATCH (on the loader's path for the
# tests and benches), so symlinks dropped on the way do not matter.
DEPS=${GPU_DEPS:-$ROOT/.gpu-deps}
DEP_ARGS=()
# dep NAME HEADER LIB SONAME CMAKE_PREFIX: finds HEADER and the real libLIB.so.* under $DEPS.
dep() {
  local name=$1 header=$2 lib=$3 soname=$4 var=$5 h so
  h=$(find "$DEPS" -name "$header" | head -1)
  so=$(find "$DEPS" -name "lib$lib.so*" -type f | sort | tail -1)
  if [[ -n "$h" && -n "$so" ]]; then
    mkdir -p "$SCRATCH/deps"
    ln -sf "$so" "$SCRATCH/deps/lib$lib.so"
    ln -sf "$so" "$SCRATCH/deps/$soname"
    DEP_ARGS+=(-D${var}_INCLUDE_DIR="$(dirname "$h")" -D${var}_LIBRARY="$SCRATCH/deps/lib$lib.so")
    echo "$name from $DEPS: $h, $so" >>"$OUT/env.log"
  else
    echo "$name: $DEPS has no $header + lib$lib.so* (found '$h' '$so'); relying on the system's" >>"$OUT/env.log"
  fi
}
if [[ -d "$DEPS" ]]; then
  dep PCRE2 pcre2.h pcre2-8 libpcre2-8.so.0 PCRE2
  dep utf8proc utf8proc.h utf8proc libutf8proc.so.2 UTF8PROC
  export LD_LIBRARY_PATH="$SCRATCH/deps:${LD_LIBRARY_PATH:-}"
else
  echo "no $DEPS: relying on the system's libpcre2-8 and libutf8proc" >>"$OUT/env.log"
fi
cat "$OUT/env.log"

# ---- configure + build ---------------------------------------------------------------------------------------
TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
PREFIX="$TORCH_PREFIX"
[[ -d "$DEPS/root/usr" ]] && PREFIX="$PREFIX;$DEPS/root/usr"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
CONFIGURE=(cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DMLXTERP_CUDA=ON
  -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_CUDA_COMPILER="$CUDACXX" -DCMAKE_CUDA_ARCHITECTURES=90
  -DMLXTERP_CUDA_ARCHS=90 -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "${DEP_ARGS[@]}")
if ! stage configure 120 "$OUT/build.log" "${CONFIGURE[@]}"; then
  # Show why, then once more from a clean cache without cuDNN and with CUDA::nvToolsExt mapped onto nvtx3
  # (bench/torch_cuda_compat.cmake), the two things a torch wheel's CMake files have tripped on elsewhere.
  grep -B2 -A12 "CMake Error" "$OUT/build.log" | head -60
  rm -rf "$BUILD"
  stage configure_retry 120 "$OUT/build.log" "${CONFIGURE[@]}" -DCAFFE2_USE_CUDNN=OFF \
    -DCMAKE_PROJECT_TOP_LEVEL_INCLUDES="$ROOT/bench/torch_cuda_compat.cmake" ||
    grep -B2 -A12 "CMake Error" "$OUT/build.log" | tail -60
fi
# Keep going past errors: build every target that can be built.
KEEP=(-- -k 0)
[[ ${#GEN[@]} -eq 0 ]] && KEEP=(-- -k)
stage build 330 "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS" \
  --target mlxterp bench_sae bench_pipeline mlxterp_tests mlxterp_cli "${KEEP[@]}"
grep -E "error:|Error [0-9]|FAILED:" "$OUT/build.log" | head -40
BIN_TESTS=$(find "$BUILD" -name mlxterp_tests -type f -perm -u+x | head -1)
BIN_SAE=$(find "$BUILD" -name bench_sae -type f -perm -u+x | head -1)
BIN_PIPE=$(find "$BUILD" -name bench_pipeline -type f -perm -u+x | head -1)

# ---- unit tests on the GPU ---------------------------------------------------------------------------------------
export MLXTERP_TEST_DEVICE=cuda
# The shared models and corpora: ../shared/data, or a copy carried as .shared-data (without them ~120 tests skip).
if [[ -z "${MLXTERP_DATA_DIR:-}" && ! -d "$ROOT/../shared/data" && -d "$ROOT/.shared-data" ]]; then
  export MLXTERP_DATA_DIR="$ROOT/.shared-data"
fi
GPU_TESTS='CudaSae*:SaeKernels*:ShuffleBuffer*:CudaTrainStep*:SaeStep*:ForwardOps*'
if [[ -n "$BIN_TESTS" ]]; then
  # The GPU-kernel tests in full (every assertion's message lands in tests.log).
  stage tests_cuda 120 "$OUT/tests.log" "$BIN_TESTS" --gtest_filter="$GPU_TESTS" --gtest_color=no
else
  STATUS[tests_cuda]="not built"
  echo "mlxterp_tests was not built" >>"$OUT/tests.log"
fi

# ---- benchmarks (each runs its PyTorch peer on the same GPU in the same invocation) ------------------------------
# GPU_SKIP_BENCH=1: tests only (a correctness run; saves ~100 s of device time).
SKIP_BENCH=${GPU_SKIP_BENCH:-0}
if [[ $SKIP_BENCH == 1 ]]; then
  STATUS[bench_sae]="skipped (GPU_SKIP_BENCH)"
  STATUS[bench_pipeline]="skipped (GPU_SKIP_BENCH)"
elif [[ -n "$BIN_SAE" ]]; then
  stage bench_sae 170 "$OUT/bench_sae.log" "$BIN_SAE" --device cuda --json "$OUT/bench_sae.json"
else
  # No build: at least the PyTorch numbers.
  STATUS[bench_sae]="not built; peer only"
  stage sae_peer_only 100 "$OUT/bench_sae.log" "$PYTHON" bench/reference/sae_peer.py --device cuda
  stage sae_peer_only_small 60 "$OUT/bench_sae.log" "$PYTHON" bench/reference/sae_peer.py --device cuda \
    --d 2048 --f 65536 --k 64
fi
if [[ $SKIP_BENCH == 1 ]]; then
  :
elif [[ -n "$BIN_PIPE" ]]; then
  stage bench_pipeline 200 "$OUT/bench_pipeline.log" "$BIN_PIPE" --device cuda --json "$OUT/bench_pipeline.json"
else
  STATUS[bench_pipeline]="not built; peer only"
  stage pipeline_peer_only 150 "$OUT/bench_pipeline.log" "$PYTHON" bench/reference/pipeline_peer.py --device cuda
fi

# ---- the rest of the suite with what time is left (8 shards in parallel; failures only) -------------------------
# One OpenMP thread per shard: libtorch's default threads in 8 processes spin against each other (the whole
# suite then needs minutes instead of ~40 s on 16 cores).
if [[ -n "$BIN_TESTS" ]]; then
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} stage tests_rest 150 "$OUT/tests.log" bash "$ROOT/bench/gtest_shards.sh" \
    "$BIN_TESTS" 8 "-$GPU_TESTS" "$SCRATCH"
fi

# ---- summary ------------------------------------------------------------------------------------------------------
{
  echo "run_gpu.sh finished in $(($(date +%s) - START)) s on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  for s in configure configure_retry build tests_cuda bench_sae sae_peer_only sae_peer_only_small bench_pipeline \
           pipeline_peer_only tests_rest; do
    [[ -n "${STATUS[$s]:-}" ]] && printf "  %-20s %-24s %5ss\n" "$s" "${STATUS[$s]}" "${TIME[$s]:-0}"
  done
  echo
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran|^shard" "$OUT/tests.log" 2>/dev/null | head -30
  echo
  sed -n '/== bench_sae summary/,$p' "$OUT/bench_sae.log" 2>/dev/null
  grep -E "check vs reference" "$OUT/bench_sae.log" 2>/dev/null
  echo
  sed -n '/== bench_pipeline summary/,$p' "$OUT/bench_pipeline.log" 2>/dev/null
  grep -h "\[peer\]" "$OUT/bench_sae.log" "$OUT/bench_pipeline.log" 2>/dev/null | tail -24
} >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
rm -rf "$SCRATCH"
exit 0
