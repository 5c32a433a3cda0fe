#!/usr/bin/env bash
# The replicated, paired recipe study of issue 18 (BENCHMARKS.md §6): each step of the recipe
# (pre-training, test-time CL2N features, augmentation, episodic fine-tuning) on the built-in
# data, 5-way 1-shot at 32 px, 3 seeds, the same 600 test episodes, fp32. A rerun skips the
# children that already FINISHED in the experiment (the config hash), so parts share runs.
#
#   bash benchmarks/recipes.sh [PART...]
#   parts: pretrain-only finetune hallucinate 5shot encoder wang 5shot-steps
#
# pretrain-only: `fsl pretrain` (10 epochs) tested as is, with and without CL2N and the standard
#                augmentation, paired against no augmentation.
# finetune:      today's ProtoNet (2,000 episodes) with and without 10 epochs of pre-training
#                first, with and without CL2N, paired against no pre-training.
# hallucinate:   the calibrated hallucinator on top of the best recipe (pre-training + CL2N, tested
#                as is), M = 0, 10, 100, paired against M = 0 (the same model, hallucinator off).
# 5shot:         today's ProtoNet and the best recipe (pre-training + CL2N) at 5-way 5-shot.
# 5shot-steps:   the single steps at 5-way 5-shot: CL2N on ProtoNet, pre-training tested as is with
#                and without CL2N, and `calibrated` (M = 10) on top of pre-training + CL2N.
# encoder:       the best recipe with ResNet-12 at width 0.25 instead of Conv-4.
# wang:          Wang et al.'s generator on top of pre-training + CL2N; it must train with the
#                encoder, so with the 2,000 episodes of fine-tuning (M = 0: the same without it).
# `python -m benchmarks.recipe_study table` pairs every child with today's ProtoNet seed by seed.
#
# The recipes are the files of fsl/recipes (`--recipe simpleshot` = pre-training 10 epochs, no
# episodic epochs, CL2N), the same files the README's commands name; the runs' identities are
# their settings, so runs made before the recipe files existed are reused.
# Runs in its own tracking store (./recipes.db, artifacts in ./mlruns) with --no-register.
set -euo pipefail
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///recipes.db}
STUDY=(--episodes-per-epoch 500 --val-episodes 100 --test-episodes 600 --patience 0 --precision fp32
       --seeds 0,1,2 --no-register --no-system-metrics --experiment recipes)
parts=("${@:-pretrain-only finetune hallucinate 5shot encoder wang}")
for part in ${parts[@]}; do
  case "$part" in
    pretrain-only) fsl sweep "${STUDY[@]}" --recipe simpleshot --param feature_transform=none,cl2n \
                     --param augment=none,standard --baseline augment=none ;;
    finetune)      fsl sweep "${STUDY[@]}" --param pretrain_epochs=0,10 --param feature_transform=none,cl2n \
                     --baseline pretrain_epochs=0 ;;
    hallucinate)   fsl sweep "${STUDY[@]}" --method hallucinate --recipe simpleshot \
                     --param hallucinator=calibrated --param M=0,10,100 --baseline M=0 ;;
    5shot)         fsl sweep "${STUDY[@]}" --param shots=5
                   fsl sweep "${STUDY[@]}" --recipe simpleshot --param shots=5 ;;
    5shot-steps)   fsl sweep "${STUDY[@]}" --shots 5 --param feature_transform=none,cl2n --baseline feature_transform=none
                   fsl sweep "${STUDY[@]}" --recipe simpleshot --shots 5 --param feature_transform=none,cl2n \
                     --baseline feature_transform=none
                   fsl sweep "${STUDY[@]}" --method hallucinate --recipe simpleshot \
                     --shots 5 --param hallucinator=calibrated --param M=0,10 --baseline M=0 ;;
    encoder)       fsl sweep "${STUDY[@]}" --recipe simpleshot --encoder-arg width=0.25 --param encoder=resnet12 ;;
    wang)          fsl sweep "${STUDY[@]}" --method hallucinate --pretrain-epochs 10 --feature-transform cl2n \
                     --param hallucinator=wang --param M=0,10 --baseline M=0 ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
