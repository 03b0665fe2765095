#!/usr/bin/env bash
# eval_layouts.sh LINMOE WORKDIR OUT: `linmoe eval` of one checkpoint gives the same validation
# loss on one rank and under layouts that split data, sequence, pipeline and experts (the
# evaluation covers eval_steps micro-batches in all, whatever dp is).
set -euo pipefail
linmoe=$1 workdir=$2 out=$3
cd "$workdir"
cfg=tests/parallel/configs/equivalence.yaml
rm -rf "$out"
"$linmoe" train -c "$cfg" --set train.steps=1 --set "run.output_dir=$out" \
  --set "checkpoint.dir=$out/ckpt" >"$out.train.log" 2>&1 || { cat "$out.train.log"; exit 1; }
line() { grep -o "loss [0-9.]* | perplexity [0-9.]*" "$1"; }
"$linmoe" eval -c "$cfg" --load "$out/ckpt" >"$out/one.log" 2>&1 || { cat "$out/one.log"; exit 1; }
ref=$(line "$out/one.log")
echo "one rank:            $ref"
for layout in "4 parallel.data=2 parallel.context=2" "8 parallel.data=4 parallel.pipeline=2 parallel.expert=4" \
  "8 parallel.tensor=2 parallel.data=2 parallel.pipeline=2"; do
  set -- $layout
  np=$1
  shift
  sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  mpirun -np "$np" --oversubscribe --bind-to none "$linmoe" eval -c "$cfg" --load "$out/ckpt" \
    "${sets[@]}" >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
  got=$(line "$out/run.log")
  echo "$np ranks ($*): $got"
  [[ $got == "$ref" ]] || { echo "FAIL: differs from one rank"; exit 1; }
done
echo ok
