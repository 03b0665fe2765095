#!/usr/bin/env bash
# The main job: install what is missing, build, prepare the bundled corpus, and train the tiny
# default model (configs/tiny.yaml). Extra arguments go to `linmoe train` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/prepare_corpus.sh "${LINMOE_BUILD_DIR:-build}/linmoe"
exec "${LINMOE_BUILD_DIR:-build}/linmoe" train -c configs/tiny.yaml "$@"
