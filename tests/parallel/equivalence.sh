#!/usr/bin/env bash
# equivalence.sh LINMOE COMPARE WORKDIR OUT NP [--set k=v ...]
# Trains tests/parallel/configs/equivalence.yaml for three steps on one rank (the reference) and
# under mpirun with NP ranks and the given --set overrides (the layout), then compares losses,
# gradient norms, weights and optimizer state (compare_runs, relative 1e-5). Run from WORKDIR
# (the corpus path is relative to it).
set -euo pipefail
linmoe=$1 compare=$2 workdir=$3 out=$4 np=$5
shift 5
cd "$workdir"
cfg=tests/parallel/configs/equivalence.yaml
rm -rf "$out"
mkdir -p "$out"
common=(--set "run.output_dir=$out/ref" --set "checkpoint.dir=$out/ref/ckpt")
# The reference uses the same overrides minus the layout (parallel.*).
ref_sets=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i += 2)); do
  [[ ${args[i + 1]} == parallel.* ]] || ref_sets+=("${args[i]}" "${args[i + 1]}")
done
"$linmoe" train -c "$cfg" "${common[@]}" "${ref_sets[@]}" >"$out/ref.log" 2>&1 ||
  { cat "$out/ref.log"; exit 1; }
mpirun -np "$np" --oversubscribe --bind-to none "$linmoe" train -c "$cfg" \
  --set "run.output_dir=$out/run" --set "checkpoint.dir=$out/run/ckpt" "$@" >"$out/run.log" 2>&1 ||
  { cat "$out/run.log"; exit 1; }
"$compare" "$out/ref" "$out/run" 1e-5
