#!/usr/bin/env bash
# The test command: install what is missing, build, run every test (ctest). `.ci/run` runs this.
# Extra arguments go to ctest (e.g. scripts/test.sh -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/prepare_corpus.sh "${LINMOE_BUILD_DIR:-build}/linmoe"
cd "${LINMOE_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" "$@"
