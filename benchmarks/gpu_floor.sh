#!/usr/bin/env bash
# The GPU floor checks of issues 20 and 35: run this FIRST on a lent GPU, from the repository root.
# One prepared pass, under 5 minutes in all (each part has its own limit), installs nothing, needs no
# MLflow (the GPU machine has PyTorch only). Every figure lands under ${OUT:-bench_out}; copy them to
# benchmarks/results/ and into BENCHMARKS.md with the card's name.
#   bash benchmarks/gpu_floor.sh               # on the GPU
#   bash benchmarks/gpu_floor.sh --cpu-smoke   # every part at toy sizes on the CPU (CI runs this)
# It extends gpu_check.sh, which stays for the other GPU figures (the M study, Omniglot, the
# hallucinator's cost): when minutes are short, this script comes first and gpu_check.sh only after.
set -u
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FSL_CACHE_DIR=${FSL_CACHE_DIR:-/tmp/fsl-gpu-cache}
PY=${PYTHON:-python3}
part() {  # name, seconds, command...: its output in $OUT/<name>.log, its exit code in $OUT/parts.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$OUT/parts.txt"
  tail -n 3 "$OUT/$name.log"
}
if [ "${1:-}" = "--cpu-smoke" ]; then
  for p in smoke trainer batched resnet12 profile; do
    # the trainer's compiled step through Dynamo's eager backend (Inductor's C++ build: minutes)
    extra=(); [ "$p" = trainer ] && extra=(--compile-backend eager)
    part "$p" 120 $PY -m benchmarks.gpu_floor "$p" --tiny --device cpu --out "$OUT/$p.json" "${extra[@]}"
  done
  part bench 120 $PY -m benchmarks.bench --tiny --workers 1 --device cpu --out "$OUT/bench_floor.json"
  exit 0
fi
nvidia-smi -L || true
part smoke 30 $PY -m benchmarks.gpu_floor smoke --out "$OUT/smoke.json"
part trainer 45 $PY -m benchmarks.gpu_floor trainer --out "$OUT/trainer.json"
# issue 20's rows: 5- and 30-way 1-shot at 84x84 eager and captured (compile, CUDA graphs), bf16, the
# FLOP floor and the ratio, the paper's schedule (2,000 30-way episodes timed, extrapolated), the
# reference DataLoader + PIL pipeline in the same run, test episodes, precision parity
part bench 120 $PY -m benchmarks.bench --classes 64 --per-class 100 --steps 200 --repeats 5 \
    --schedule-steps 2000 --parity-steps 1000 --compile --out "$OUT/bench_floor.json"
part batched 40 $PY -m benchmarks.gpu_floor batched --out "$OUT/batched.json"
part resnet12 30 $PY -m benchmarks.gpu_floor resnet12 --out "$OUT/resnet12.json"
part profile 25 $PY -m benchmarks.gpu_floor profile --out "$OUT/profile.txt"
exit 0
