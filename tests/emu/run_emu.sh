#!/usr/bin/env bash
# Runs the CUDA-kernel tests (tests/unit/test_cuda_sae_kernels.cpp, test_forward_ops.cpp) on a machine without
# a GPU: the .cu files are compiled as C++ against tests/emu/emu/cuda_emu.h (a cooperative context per CUDA
# thread, all on one OS thread; __syncthreads and warp shuffles are barriers; divergent barriers abort).
#
#   tests/emu/run_emu.sh                      # needs a configured CPU build in ./build (libmlxterp.so)
#   SAN=address tests/emu/run_emu.sh          # with AddressSanitizer (out-of-bounds accesses)
#   SAE_TREE=/tmp/saetree tests/emu/run_emu.sh --gtest_filter='CudaTrainStep.*'
#       # also the trainer's hook: SAE_TREE holds the SAE trainer's include/ and src/sae/ (when this branch does
#       # not have them yet: git archive sae include src/sae | tar -x -C /tmp/saetree)
#
# It checks the kernels' logic (indexing, barriers, reductions, selection rules) against the libtorch
# reference; it says nothing about speed or about the GPU's memory model.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SAN=${SAN-}
OUT=$BUILD/emu${SAN:+-$SAN}
mkdir -p "$OUT"
FLAGS=(-std=c++20 -O1 -g -pthread -DMLXTERP_CUDA_EMULATE -DMLXTERP_HAVE_CUDA_KERNELS=1
       -I"$ROOT/include" -I"$ROOT/src" -I"$ROOT/tests/emu" -I"$ROOT/tests/unit" -isystem /usr/include/torch/csrc/api/include
       -DMLXTERP_TEST_DATA_DIR="\"$ROOT/../shared/data\"" -DMLXTERP_TEST_GOLDEN_DIR="\"$ROOT/tests/golden\""
       -DMLXTERP_TEST_SOURCE_DIR="\"$ROOT\"" -DMLXTERP_TEST_CLI="\"$BUILD/mlxterp\"")
[[ -n "$SAN" ]] && FLAGS+=(-fsanitize="$SAN" -fno-omit-frame-pointer)

compile() {  # src obj [extra flags]
  local src=$1 obj=$2
  shift 2
  if [[ ! -f "$obj" || "$src" -nt "$obj" || "$ROOT/src/cuda/common.cuh" -nt "$obj" || "$ROOT/tests/emu/emu/cuda_emu.h" -nt "$obj" ]]; then
    nice g++ "${FLAGS[@]}" "$@" -c "$src" -o "$obj"
  fi
}
for f in topk_select sparse_decode latent_update forward_kernels; do compile "$ROOT/src/cuda/$f.cu" "$OUT/$f.o" -x c++; done
compile "$ROOT/src/cuda/sae_kernels.cpp" "$OUT/sae_kernels.o"
compile "$ROOT/src/cuda/sae_kernels_cuda.cpp" "$OUT/sae_kernels_cuda.o"
compile "$ROOT/src/cuda/forward_ops.cpp" "$OUT/forward_ops.o"
compile "$ROOT/tests/unit/test_cuda_sae_kernels.cpp" "$OUT/test_cuda_sae_kernels.o"
compile "$ROOT/tests/unit/test_forward_ops.cpp" "$OUT/test_forward_ops.o"
if [[ -n "${SAE_TREE:-}" ]]; then
  FLAGS+=(-I"$SAE_TREE/include")
  mkdir -p "$OUT/sae"
  for f in step state config sae; do compile "$SAE_TREE/src/sae/$f.cpp" "$OUT/sae/$f.o"; done
  compile "$ROOT/src/cuda/sae_train_step_cuda.cpp" "$OUT/sae/sae_train_step_cuda.o"
  compile "$ROOT/tests/unit/test_cuda_train_step.cpp" "$OUT/sae/test_cuda_train_step.o"
  EXTRA_OBJS=("$OUT"/sae/*.o)
fi
compile "$ROOT/tests/unit/common.cpp" "$OUT/common.o"
compile "$ROOT/tests/unit/test_main.cpp" "$OUT/test_main.o"
# Our objects come first: their sae_kernels symbols take precedence over libmlxterp's CPU-only ones.
g++ "${FLAGS[@]}" "$OUT"/*.o ${EXTRA_OBJS[@]+"${EXTRA_OBJS[@]}"} -o "$OUT/emu_tests" -L"$BUILD" -Wl,-rpath,"$BUILD" -lmlxterp \
    -ltorch -ltorch_cpu -lc10 -lgtest -lpthread
"$OUT/emu_tests" "${@:---gtest_filter=CudaSae*:ForwardOps*}"
