#!/usr/bin/env bash
# rank_death.sh LINMOE WORKDIR OUT: a 4-rank training run (tp2 dp2) loses one rank to SIGKILL
# mid-training; the others must stop within a bounded time (30 s), with mpirun naming the rank
# and the signal, and the job's exit status non-zero. A hang fails the test.
set -uo pipefail
linmoe=$1 workdir=$2 out=$3
cd "$workdir"
rm -rf "$out"
mkdir -p "$out"
mpirun -np 4 --oversubscribe --bind-to none "$linmoe" train \
  -c tests/parallel/configs/equivalence.yaml --set train.steps=100000 \
  --set parallel.tensor=2 --set "run.output_dir=$out/run" --set "checkpoint.dir=$out/run/ckpt" \
  --set logging.level=info >"$out/log" 2>&1 &
job=$!
# Wait until training runs (a step line), then kill the last rank's process.
for _ in $(seq 1 120); do
  grep -q "step " "$out/log" 2>/dev/null && break
  sleep 0.5
done
victim=$(pgrep -f "$out/run" | tail -n 1)
[[ -n $victim ]] || { echo "FAIL: no linmoe process found"; cat "$out/log"; kill $job; exit 1; }
kill -9 "$victim"
start=$SECONDS
for _ in $(seq 1 60); do
  kill -0 $job 2>/dev/null || break
  sleep 0.5
done
if kill -0 $job 2>/dev/null; then
  echo "FAIL: the other ranks still run 30 s after one was killed"
  pkill -9 -f "$out/run"
  exit 1
fi
wait $job
rc=$?
echo "mpirun ended $((SECONDS - start)) s after the kill with exit status $rc"
tail -n 5 "$out/log"
[[ $rc -ne 0 ]] || { echo "FAIL: exit status 0"; exit 1; }
grep -q "signal 9" "$out/log" || { echo "FAIL: no message naming the signal"; exit 1; }
echo "ok"
