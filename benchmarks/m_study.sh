#!/usr/bin/env bash
# The replicated, paired M study of issue 10 (BENCHMARKS.md §4). Every model of the built-in
# data is trained with the default schedule (4 x 500 = 2,000 episodes) and tested on the same
# 600 test episodes; each sweep pairs its points with ProtoNet (M=0) seed by seed. A rerun skips
# the children that already FINISHED in the experiment, so the script survives interruptions and
# later parts reuse the ProtoNet runs of earlier ones. `calibrated` trains once per seed (its
# largest M) and tests its other M from that model.
#
#   bash benchmarks/m_study.sh [PART...]
#   parts: calibrated-1shot calibrated-5shot omniglot wang improved omniglot-wang omniglot-improved
#
# Runs in its own tracking store (./m-study.db, artifacts in ./mlruns) with --no-register; the
# Omniglot parts need ../shared/data/omniglot and write their rows to omniglot_*.json.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///m-study.db}
STUDY=(--epochs 4 --episodes-per-epoch 500 --val-episodes 100 --test-episodes 600 --patience 0
       --no-register --no-system-metrics --experiment m-study --baseline M=0)
OMNIGLOT=(python -m benchmarks.hallucination omniglot-study --episodes 1000)
parts=("${@:-calibrated-1shot calibrated-5shot omniglot wang improved omniglot-wang omniglot-improved}")
for part in ${parts[@]}; do
  case "$part" in
    calibrated-1shot) fsl sweep --method hallucinate --param hallucinator=calibrated --param M=0,10,50,100 \
                        --seeds 0,1,2,3,4 "${STUDY[@]}" ;;
    calibrated-5shot) fsl sweep --method hallucinate --shots 5 --param hallucinator=calibrated \
                        --param M=0,10,50,100 --seeds 0,1,2 "${STUDY[@]}" ;;
    wang|improved)    fsl sweep --method hallucinate --param hallucinator="$part" --param M=0,10,50,100 \
                        --seeds 0,1,2 "${STUDY[@]}" ;;
    omniglot)         "${OMNIGLOT[@]}" --ms 0,10,50,100 --seeds 0,1,2,3,4 --hallucinators calibrated \
                        --out omniglot_calibrated.json ;;
    omniglot-wang|omniglot-improved)   # M = 100 first: the setting users run
                      "${OMNIGLOT[@]}" --ms 0,100,10,50 --seeds 0,1,2 --hallucinators "${part#omniglot-}" \
                        --out "${part/-/_}.json" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
