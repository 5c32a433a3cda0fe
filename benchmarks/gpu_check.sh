#!/usr/bin/env bash
# One prepared pass of every GPU figure in BENCHMARKS.md; installs nothing, ~8 minutes on an H100.
# Run from the repository root. Writes JSON and logs under ${OUT:-bench_out}.
# Sections are ordered by priority and each has its own time limit, so a slow one costs only itself.
set -u
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FSL_CACHE_DIR=/tmp/fsl-gpu-cache
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 250 python3 -m benchmarks.bench --classes 64 --per-class 100 --steps 200 --repeats 5 \
    --schedule-steps 2000 --parity-steps 1000 --compile --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
timeout 45 python3 -m benchmarks.hallucination cost --out "$OUT/hallucination_cost_gpu.json" 2>&1 | tail -n 40
timeout 75 python3 -m benchmarks.omniglot --steps 3000 --episodes 1000 2>&1 | tee "$OUT/omniglot_gpu.json"
timeout 140 python3 -m benchmarks.hallucination study --seeds 0 --hallucinators calibrated,wang --out "$OUT/m_study_gpu.json" \
    2>&1 | tee "$OUT/m_study_gpu.log"
exit 0
