#!/usr/bin/env bash
# Installs dependencies, builds (Release) and runs the whole test suite.
#   MLXTERP_BUILD_DIR (default build), MLXTERP_JOBS (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD=${MLXTERP_BUILD_DIR:-build}
JOBS=${MLXTERP_JOBS:-$(nproc)}
# One test per core: libtorch's OpenMP threads would otherwise spin against each other (several times slower).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${MLXTERP_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" -j "$JOBS" --output-on-failure --timeout 1500
