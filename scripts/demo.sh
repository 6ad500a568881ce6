#!/usr/bin/env bash
# The main job: installs dependencies, builds the CLI (Release) and runs `mlxterp demo` on the embedded
# model (models/kjv-llama). Extra arguments go to the demo, e.g. scripts/demo.sh --prompt "And the LORD".
#   MLXTERP_BUILD_DIR (default build), MLXTERP_JOBS (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD=${MLXTERP_BUILD_DIR:-build}
JOBS=${MLXTERP_JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${MLXTERP_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target mlxterp_cli
exec "$BUILD/mlxterp" demo "$@"
