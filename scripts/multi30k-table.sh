#!/usr/bin/env bash
# Every run behind a Multi30k table of the README: a CE and an LS ensemble, a student of each (the CE run also
# one per truncation of the V' sweep), then the evaluations. Steps that do not depend on each other run at once,
# which pays on a GPU (small models leave it mostly idle); on the 2-core CPU run the commands one at a time
# (configs/multi30k-small.toml lists them). Every step resumes, so rerunning after a stop continues.
#
#   scripts/multi30k-table.sh configs/multi30k-small-gpu.toml runs/m30k-gpu
#
# RUN_PREFIX-ce and RUN_PREFIX-ls are the run directories; each step's output goes to RUN_PREFIX-<step>.log.
# ED names the command line of the CLI (default: ensemble-distill).
set -euo pipefail
config=$1 prefix=$2
ed=(${ED:-ensemble-distill})
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # up to six processes share the cores: more threads each only spin
mkdir -p "$(dirname "$prefix")"
ce="$prefix-ce" ls="$prefix-ls"
pids=()
start() {  # start NAME ARGS...: one CLI command in the background, its output in RUN_PREFIX-NAME.log
    local name=$1; shift
    "${ed[@]}" "$@" > "$prefix-$name.log" 2>&1 &
    pids+=($!)
}
join() {  # wait for every started command; any failure stops the script
    local pid
    for pid in "${pids[@]}"; do wait "$pid"; done
    pids=()
}

echo "$(date +%T) training the CE and LS ensembles"
start train-ce train-nmt --config "$config" --label-smoothing 0 --out "$ce"
start train-ls train-nmt --config "$config" --out "$ls"
join
echo "$(date +%T) memoizing the teachers and training the students"
# The V' sweep of the shipped configs, started side by side; sweep-nmt below trains any other truncation a config
# lists (one at a time) before it evaluates, so a different sweep_top_k is still honoured.
for k in 32 64 128 256; do start "distill-ce-top$k" distill-nmt --run "$ce" --top-k $k; done
start distill-ce-adaptive distill-nmt --run "$ce" --top-k 256 --epsilon 0.01
start distill-ls distill-nmt --run "$ls"
join
echo "$(date +%T) evaluating"
start evaluate-ce sweep-nmt --run "$ce"
start evaluate-ls evaluate-nmt --run "$ls"
join
echo "$(date +%T) done: $ce/eval/test/{results,truncation}.md, $ls/eval/test/results.md"
