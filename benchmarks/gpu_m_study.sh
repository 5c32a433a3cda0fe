#!/usr/bin/env bash
# The M study's 84x84 rows (BENCHMARKS.md §4a) on one GPU, without MLflow; installs nothing.
#   bash benchmarks/gpu_m_study.sh        # from the repository root; JSON and logs under ${OUT:-gpu_out}
# The same plan, trainer, fixed test episodes and statistics as `fsl sweep ... --seeds --baseline
# M=0` (benchmarks.hallucination study), at the study schedule (2,000 episodes, 600 test
# episodes), eager (--compile off: compiling each of ~40 models would cost more than it saves).
# Parts are ordered by priority and each has its own time limit; a cut part still leaves one
# JSON line per finished model in its log.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FSL_CACHE_DIR=${FSL_CACHE_DIR:-/tmp/fsl-gpu-cache}
STUDY="python3 -m benchmarks.hallucination study --image-size 84 --compile off --test-episodes 600"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

part() {  # part NAME LIMIT_S ARGS...: one study, its log and JSON under $OUT
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date +%T)"
    timeout "$limit" $STUDY "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 12 "$OUT/$name.log"; echo "=== $name rc=$rc $(date +%T)"
    return $rc
}

# A tiny run first: if the CUDA path breaks, the call ends in seconds, not at its limit.
part smoke 60 --episodes 8 --seeds 0 --hallucinators calibrated,wang --ms 0,10 || exit 1
part calibrated_1shot ${LIMIT_A:-190} --episodes 2000 --seeds 0,1,2,3,4 --hallucinators calibrated
part calibrated_5shot ${LIMIT_B:-100} --episodes 2000 --seeds 0,1,2 --hallucinators calibrated --shots 5
part others_1shot ${LIMIT_C:-200} --episodes 2000 --seeds 0,1,2 --hallucinators wang,improved
exit 0
