#!/usr/bin/env bash
# Issue 34's measurements of `fsl tune` on the built-in data (BENCHMARKS §11), on a 2-core CPU,
# each worker at one thread so that two workers do not measure oversubscription:
#   1. workers: one study of 8 trials over lr alone (the trials cost the same whatever TPE
#      draws; no pruning), run by 1 worker, then a fresh study run by 2 workers at once;
#   2. search: 30 trials over lr, ways and queries with median pruning, 2 workers;
#   3. retest: the 3 best settings trained again over seeds 0,1,2 and tested, paired with
#      today's ProtoNet at the same budget (the search's command joined once more, 2 threads).
# Usage: bash benchmarks/tune_search.sh OUT_DIR [phases: workers search retest]
# Runs from the repository's root; each phase writes its log and wall time under OUT_DIR.
set -euo pipefail
out=$(realpath -m "${1:?usage: tune_search.sh OUT_DIR [workers] [search] [retest]}")
shift
phases=${*:-workers search retest}
mkdir -p "$out"
fsl=(python -m fsl)

timed() {  # timed NAME COMMAND...: run, append "NAME seconds" to $out/wall.txt
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    echo "$name $(echo "$end - $start" | bc)" | tee -a "$out/wall.txt"
}

# the search budget: 4 epochs x 100 episodes (today's default is 4 x 500), 100 val episodes
budget=(--epochs 4 --episodes-per-epoch 100 --val-episodes 100 --experiment tune-study)
two_workers() {  # two_workers LOG_PREFIX ARGS...: the same command twice at once, 1 thread each
    local prefix=$1
    shift
    OMP_NUM_THREADS=1 "${fsl[@]}" tune "$@" >"$prefix-a.log" 2>&1 &
    local a=$!
    sleep 2  # the first creates the study; the second joins it (a race is also handled)
    OMP_NUM_THREADS=1 "${fsl[@]}" tune "$@" >"$prefix-b.log" 2>&1 &
    local b=$!
    wait $a
    wait $b
}

export MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
workers=(--param "lr=1e-4..1e-2:log" --pruner none --trials 8 --episodes-per-epoch 50 --epochs 4
         --val-episodes 100 --experiment tune-workers)
search=(--study builtin-30 --param "lr=1e-4..1e-2:log ways=5..20 queries=5..15" --trials 30 "${budget[@]}")
for phase in $phases; do
    case $phase in
        workers)
            timed workers-1 env OMP_NUM_THREADS=1 "${fsl[@]}" tune --study workers-1 "${workers[@]}" \
                >"$out/workers-1.log" 2>&1
            timed workers-2 two_workers "$out/workers-2" --study workers-2 "${workers[@]}" ;;
        search)
            timed search-2 two_workers "$out/search" "${search[@]}" ;;
        retest)
            timed retest env OMP_NUM_THREADS=2 "${fsl[@]}" tune "${search[@]}" --retest 3 --seeds 0,1,2 \
                >"$out/retest.log" 2>&1 ;;
        *) echo "unknown phase: $phase" >&2; exit 2 ;;
    esac
done
