#!/usr/bin/env bash
# equivalence.sh LINMOE COMPARE WORKDIR OUT NP [--config YAML] [--tol T] [--set k=v ...] [--then NP2 [--set k=v ...]]
# Trains tests/parallel/configs/equivalence.yaml for three steps on one rank (the reference) and
# under mpirun with NP ranks and the given --set overrides (the layout), then compares losses,
# gradient norms, weights and optimizer state (compare_runs, relative 1e-5). With --then, the
# layout run stops after step 2 (a checkpoint) and step 3 resumes from it under the second
# layout: checkpoints reshard across layouts. Run from WORKDIR (the corpus path is relative
# to it).
set -euo pipefail
linmoe=$1 compare=$2 workdir=$3 out=$4 np=$5
shift 5
cfg=tests/parallel/configs/equivalence.yaml tol=1e-5
if [[ ${1:-} == --config ]]; then
  cfg=$2
  shift 2
fi
if [[ ${1:-} == --tol ]]; then
  tol=$2
  shift 2
fi
first=() then_np="" then=()
while (($#)); do
  if [[ $1 == --then ]]; then
    then_np=$2
    shift 2
    then=("$@")
    break
  fi
  first+=("$1")
  shift
done
set -- "${first[@]}"
cd "$workdir"
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
run=(--set "run.output_dir=$out/run" --set "checkpoint.dir=$out/run/ckpt")
if [[ -z $then_np ]]; then
  mpirun -np "$np" --oversubscribe --bind-to none "$linmoe" train -c "$cfg" "${run[@]}" "$@" \
    >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
else
  mpirun -np "$np" --oversubscribe --bind-to none "$linmoe" train -c "$cfg" "${run[@]}" "$@" \
    --set train.steps=2 >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
  mpirun -np "$then_np" --oversubscribe --bind-to none "$linmoe" train -c "$cfg" "${run[@]}" \
    --set checkpoint.load=auto --set logging.level=info "${then[@]}" >"$out/resume.log" 2>&1 ||
    { cat "$out/resume.log"; exit 1; }
  grep -q "loaded checkpoint .*iter_0000002" "$out/resume.log" ||
    { echo "FAIL: the resumed run did not load step 2"; cat "$out/resume.log"; exit 1; }
fi
"$compare" "$out/ref" "$out/run" "$tol"
