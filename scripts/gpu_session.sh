#!/usr/bin/env bash
# What a session with the GPU machine runs, in as few device calls as possible (each ≤ 10 min).
# Prepare here once (no device time):
#   ../shared/tools/gpu-deps.sh --dev && cp ../shared/tools/gpu-env.sh .gpu-deps/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .gpu-deps/wheels flash-linear-attention fla-core
# Then device calls with carry [".gpu-deps"], each starting the machine's build if needed:
#   bash scripts/gpu_session.sh test      # build (16 cores) + every gpu-labelled test
#   bash scripts/gpu_session.sh bench     # kernels vs peers, grouped GEMM, end-to-end MFU
# Logs and JSON go to $OUT (8 files at most come back); the last lines printed are a summary.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-test}
out=${OUT:-/tmp/linmoe_gpu_out}
mkdir -p "$out"
source .gpu-deps/gpu-env.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,clocks.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"

build() {
  if [[ ! -x build-gpu/linmoe ]]; then
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DLINMOE_CUDA=ON >"$out/cmake.log" 2>&1 ||
      { tail -30 "$out/cmake.log"; exit 1; }
  fi
  cmake --build build-gpu -j16 >"$out/build.log" 2>&1 || { grep -m20 -E "error" "$out/build.log"; exit 1; }
  bash scripts/prepare_corpus.sh build-gpu/linmoe >/dev/null 2>&1 || true
}

case $phase in
  test)
    build
    (cd build-gpu && ctest -L gpu --output-on-failure --timeout 900) >"$out/ctest_gpu.log" 2>&1
    grep -E "tests passed|tests failed|Failed|Skipped|GPU memory" "$out/ctest_gpu.log" | tail -25
    ;;
  bench)
    build
    build-gpu/bench/bench_gpu_kernels --json "$out/linmoe_kernels.json" >"$out/linmoe_kernels.log" 2>&1
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      .gpu-deps/wheels/*.whl 2>/dev/null && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 timeout 240 python3 scripts/bench_peers.py --json "$out/peers.json" \
      >"$out/peers.log" 2>&1
    # End to end, bf16: the paper's A0.3B-2B (sliced if it does not fit: see the parameter line).
    build-gpu/bench/bench_train configs/a0.3b-2b.yaml --seq 2048,8192 --steps 5 --warmup 2 \
      --set train.precision=bf16 --set train.micro_batch_size=1 --json "$out/train.json" \
      2>&1 | tee "$out/train.log"
    tail -5 "$out/linmoe_kernels.log"
    ;;
  *)
    echo "usage: gpu_session.sh test|bench" >&2
    exit 2
    ;;
esac
