#!/usr/bin/env bash
# The replicated, paired M study of issue 10 (BENCHMARKS.md §4), in the order of its value:
# every model is trained with the study schedule (2,000 episodes) and tested on the same 600
# test episodes; each sweep pairs its points with ProtoNet (M=0) seed by seed. A rerun skips the
# children that already FINISHED in the experiment, so the script survives interruptions and
# later sweeps reuse the ProtoNet runs of earlier ones.
#
#   bash benchmarks/m_study.sh [PART...]     # parts: calibrated-1shot others-1shot calibrated-5shot
#
# Runs in its own tracking store (./m-study.db, artifacts in ./mlruns) with --no-register.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///m-study.db}
STUDY=(--epochs 4 --episodes-per-epoch 500 --val-episodes 100 --test-episodes 600 --no-register
       --no-system-metrics --experiment m-study --baseline M=0)
parts=("${@:-calibrated-1shot others-1shot calibrated-5shot}")
for part in ${parts[@]}; do
  case "$part" in
    calibrated-1shot) fsl sweep --method hallucinate --param hallucinator=calibrated --param M=0,10,50,100 \
                        --seeds 0,1,2,3,4 "${STUDY[@]}" ;;
    others-1shot)     fsl sweep --method hallucinate --param hallucinator=wang,improved --param M=0,10,50,100 \
                        --seeds 0,1,2 "${STUDY[@]}" ;;
    calibrated-5shot) fsl sweep --method hallucinate --shots 5 --param hallucinator=calibrated \
                        --param M=0,10,50,100 --seeds 0,1,2 "${STUDY[@]}" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
