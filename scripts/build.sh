#!/usr/bin/env bash
# Configures (once) and builds linmoe into build/ (or $LINMOE_BUILD_DIR). Incremental: quick when
# nothing changed. CUDA is built when nvcc is found (LINMOE_CUDA=AUTO); pass extra CMake
# arguments through LINMOE_CMAKE_ARGS, e.g. LINMOE_CMAKE_ARGS="-DLINMOE_CUDA=OFF".
set -euo pipefail
cd "$(dirname "$0")/.."
build=${LINMOE_BUILD_DIR:-build}
jobs=${LINMOE_BUILD_JOBS:-$(nproc)}
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${LINMOE_CMAKE_ARGS:-}
elif [[ -n ${LINMOE_CMAKE_ARGS:-} ]]; then
  cmake "$build" ${LINMOE_CMAKE_ARGS}
fi
cmake --build "$build" -j "$jobs"
