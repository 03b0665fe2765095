#!/usr/bin/env bash
# checkpoint_mismatch.sh LINMOE WORKDIR OUT: a 3-stage pipeline resumes from a checkpoint whose
# vocabulary differs from the config. Only the first and last stages hold the mismatching
# tensors; every rank must still stop within seconds with one message and exit status 2.
set -uo pipefail
linmoe=$1 workdir=$2 out=$3
cd "$workdir"
cfg=tests/parallel/configs/equivalence.yaml
rm -rf "$out"
mkdir -p "$out"
layout=(--set parallel.pipeline=3 --set "parallel.pipeline_layers=[1, 2, 1]"
  --set "run.output_dir=$out" --set "checkpoint.dir=$out/ckpt")
mpirun -np 3 --oversubscribe --bind-to none "$linmoe" train -c "$cfg" "${layout[@]}" \
  --set train.steps=1 >"$out/save.log" 2>&1 || { cat "$out/save.log"; exit 1; }
timeout 60 mpirun -np 3 --oversubscribe --bind-to none "$linmoe" train -c "$cfg" "${layout[@]}" \
  --set checkpoint.load=auto --set model.vocab_size=300 >"$out/load.log" 2>&1
rc=$?
cat "$out/load.log" | head -3
[[ $rc -ne 124 ]] || { echo "FAIL: the ranks hung"; exit 1; }
[[ $rc -eq 2 ]] || { echo "FAIL: exit status $rc, expected 2"; exit 1; }
n=$(grep -c "does not match the model: the first tensor that differs is 'embed.weight'" "$out/load.log")
[[ $n -eq 1 ]] || { echo "FAIL: the message appears $n times, expected once"; exit 1; }
echo ok
