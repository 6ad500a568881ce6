#!/usr/bin/env bash
# The CUDA build and the test suite on a GPU machine (torch 2.x wheel with CUDA):
#   MLXTERP_DATA_DIR=<shared data> scripts/gpu_build_test.sh [build-dir]
# Extra CMake prefixes (e.g. Debian's PCRE2 unpacked into .gpu-deps/root/usr) go in MLXTERP_EXTRA_PREFIX.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
PREFIX="$TORCH_PREFIX${MLXTERP_EXTRA_PREFIX:+;$MLXTERP_EXTRA_PREFIX}"
t0=$(date +%s)
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_CUDA_ARCHITECTURES=90 \
      ${MLXTERP_CMAKE_ARGS:-} || exit 1
cmake --build "$BUILD" -j "$(nproc)" || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
# One test per core, one OpenMP thread each (more threads spin against each other and slow every test down).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MLXTERP_TEST_DEVICE=cuda ctest --test-dir "$BUILD" -j "$(nproc)" --output-on-failure --timeout 600 ${MLXTERP_CTEST_ARGS:-}
