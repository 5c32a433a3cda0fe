"""The parts of `benchmarks/gpu_floor.sh` that `benchmarks.bench` does not cover (issue 35): the
trainer's own compiled path once, several episodes per step batched against the loop, ResNet-12
rows and a profiler summary. MLflow-free (the GPU machine has PyTorch only); every part writes
JSON (or text) to --out.

    python -m benchmarks.gpu_floor smoke    --out bench_out/smoke.json
    python -m benchmarks.gpu_floor trainer  --out bench_out/trainer.json      # fsl.train.train, compile=auto
    python -m benchmarks.gpu_floor batched  --out bench_out/batched.json      # --episodes-per-step 1, 4, 16
    python -m benchmarks.gpu_floor resnet12 --out bench_out/resnet12.json
    python -m benchmarks.gpu_floor profile  --out bench_out/profile.txt
    (--tiny: toy sizes on any device, what `gpu_floor.sh --cpu-smoke` runs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def setting(args) -> dict:
    """Sizes: the GPU rows, or toy ones (`--tiny`) that only check that every part runs."""
    tiny = args.tiny
    return {"size": 32 if tiny else 84, "steps": 2 if tiny else 50, "repeats": 1 if tiny else 5,
            "train_steps": 4 if tiny else 200, "queries": 2 if tiny else 15, "E": (1, 2) if tiny else (1, 4, 16)}


def data_and_device(args):
    from fsl.data import load_dataset
    from fsl.runtime import resolve_device

    device = resolve_device(args.device)
    data = load_dataset("synthetic", image_size=setting(args)["size"])
    return data, device


def eager_trainer(args):
    """A 5-way 1-shot eager trainer on the synthetic data at --precision auto: (trainer, precision, device)."""
    from fsl.config import TrainConfig
    from fsl.models.classifier import build_model
    from fsl.runtime import resolve_precision
    from fsl.train import EpisodeTrainer

    data, device = data_and_device(args)
    precision = resolve_precision("auto", device)
    cfg = TrainConfig(image_size=data.image_size, precision=precision, device=str(device), compile="off",
                      queries=setting(args)["queries"])
    trainer = EpisodeTrainer(build_model(cfg, data, device, precision), data.split("train").to(device), cfg, device)
    return trainer, precision, device


def smoke(args) -> dict:
    """What the machine is: the device, torch, and one tiny step of each path."""
    step, precision, device = eager_trainer(args)
    loss = float(step.run(1)[0])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "precision": precision, "one_step_loss": loss}


def trainer(args) -> dict:
    """fsl.train.train as `fsl protonet` runs it (compile=auto: the whole step compiled on CUDA), a
    short schedule: the trainer's compiled path has never run on a GPU before this. With
    --compile-backend (the CPU dry run: `eager`), the step is compiled on any device with that
    Dynamo backend, so that the path runs where Inductor's build would take minutes."""
    from torch._dynamo.utils import counters

    import fsl.runtime
    from fsl.config import TrainConfig
    from fsl.models.classifier import build_model
    from fsl.runtime import resolve_compile, resolve_precision
    from fsl.train import train

    data, device = data_and_device(args)
    n = setting(args)["train_steps"]
    precision = resolve_precision("auto", device)
    if args.compile_backend:
        fsl.runtime.compile_step = lambda step, device: torch.compile(step, backend=args.compile_backend)
    cfg = TrainConfig(image_size=data.image_size, epochs=2, episodes_per_epoch=n // 2, val_episodes=20,
                      precision=precision, device=str(device), queries=setting(args)["queries"],
                      compile="on" if args.compile_backend else "auto")
    counters.clear()
    started = time.perf_counter()
    result = train(build_model(cfg, data, device, precision), data, cfg, device)
    seconds = time.perf_counter() - started
    return {"episodes": n, "compiled": resolve_compile(cfg.compile, device), "precision": precision,
            "backend": args.compile_backend or "fsl's", "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "seconds": round(seconds, 2), "best_val_acc": result.best_val_acc,
            "epoch_seconds": [round(h.seconds, 2) for h in result.history]}


def batched(args) -> dict:
    """Training episodes/s at 5-way 1-shot 15-query with E = 1, 4, 16 episodes per step, batched
    (one encoder call per step, `EpisodeLoss.batched`) against the loop, blocks interleaved."""
    from benchmarks.timing import interleaved, training_block
    from fsl.config import TrainConfig
    from fsl.models.classifier import build_model
    from fsl.runtime import resolve_precision
    from fsl.train import EpisodeTrainer

    data, device = data_and_device(args)
    s = setting(args)
    precision = resolve_precision("auto", device)
    store = data.split("train").to(device)
    blocks, per_step = {}, {}
    for e in s["E"]:
        for mode in ("batched", "loop") if e > 1 else ("batched",):
            cfg = TrainConfig(image_size=data.image_size, episodes_per_step=e, precision=precision, device=str(device),
                              compile="off", queries=s["queries"])
            trainer_ = EpisodeTrainer(build_model(cfg, data, device, precision), store, cfg, device)
            trainer_.batch_episodes = mode == "batched"
            blocks[f"E{e}_{mode}"] = training_block(trainer_, s["steps"])
            per_step[f"E{e}_{mode}"] = e
    times = interleaved(blocks, device, repeats=s["repeats"])
    return {"device": str(device), "precision": precision, "size": data.image_size, "steps_per_block": s["steps"],
            "episodes_per_s": {k: round(per_step[k] * s["steps"] / statistics.median(v), 1) for k, v in times.items()}}


def resnet12(args) -> dict:
    """ResNet-12 at 84 px, 5-way 1-shot: training episodes/s, peak device memory, and a short
    schedule's validation accuracy."""
    from benchmarks.timing import rate
    from fsl.config import TrainConfig
    from fsl.models.classifier import build_model
    from fsl.runtime import resolve_precision
    from fsl.train import EpisodeTrainer

    data, device = data_and_device(args)
    s = setting(args)
    precision = resolve_precision("auto", device)
    cfg = TrainConfig(image_size=data.image_size, encoder="resnet12", precision=precision, device=str(device),
                      compile="off", encoder_args={"width": 0.25} if args.tiny else {}, queries=s["queries"])
    trainer_ = EpisodeTrainer(build_model(cfg, data, device, precision), data.split("train").to(device), cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measured = rate(lambda: (float(trainer_.run(s["steps"])[0]), s["steps"])[1], device, 1, s["repeats"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"episodes_per_s": measured, "peak_device_mib": peak, "precision": precision, "size": data.image_size}


def profile(args) -> str:
    """The top operators of 10 training steps (5-way 1-shot, eager), as text."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer_, precision, device = eager_trainer(args)
    trainer_.run(2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        float(trainer_.run(2 if args.tiny else 10)[0])
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=25)


PARTS = {"smoke": smoke, "trainer": trainer, "batched": batched, "resnet12": resnet12, "profile": profile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--compile-backend", help="trainer: compile the step with this Dynamo backend (e.g. eager)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = PARTS[args.part](args)
    args.out.write_text(result if isinstance(result, str) else json.dumps(result, indent=1) + "\n")
    print(result if isinstance(result, str) else json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
