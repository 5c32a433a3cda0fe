"""Speed: fsl's product path against the classic DataLoader + PIL reference, side by side.

Everything runs in one process on one device:
1. generate a Mini-ImageNet-shaped tree of 84x84 JPEGs (train/val/test class folders);
2. time both paths: training episodes/s at 5-way and 30-way 1-shot (15 queries), evaluation
   episodes/s at 5-way 1-shot, time to the first episode, peak host and device memory;
3. check accuracy parity of the product's bf16 against its fp32;
4. set the FLOPs of an episode against the measured matmul rate (the floor);
5. optionally try torch.compile (and CUDA graphs), and time MLflow logging's overhead.

Every rate is the median of --repeats timed blocks after a warm-up, with min and max; CUDA is
synchronised before each clock read. Prints a table and writes JSON.

    python -m benchmarks.bench                      # GPU: the full-size tree (64 x 600)
    python -m benchmarks.bench --small              # CPU smoke test (CI uses --tiny)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import reference
from benchmarks.timing import interleaved, rate, sync
from fsl.config import TrainConfig
from fsl.data.episodes import EpisodeShape
from fsl.data.readers import ReadOptions, read
from fsl.evaluate import episode_correct, evaluate, sample_episodes
from fsl.models.classifier import FewShotClassifier, build_model
from fsl.runtime import resolve_device, resolve_precision
from fsl.train import EpisodeTrainer


# --------------------------------------------------------------------------------- the tree
def _write_class(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    from fsl.data import synthetic

    folder, k, count, size = args
    concept = synthetic._draw_concept(np.random.default_rng([synthetic.SEED, k, 1]))
    images = synthetic._render_class(concept, count, size, np.random.default_rng([synthetic.SEED, k]))
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(np.round(images * 255).astype(np.uint8)):
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{k:03d}_{i:04d}.jpg", quality=90)


def make_tree(root: Path, train_classes: int, per_class: int, size: int = 84, eval_per_class: int = 100) -> Path:
    """train/ (train_classes x per_class), val/ (16) and test/ (20 classes) of synthetic concepts."""
    jobs, k = [], 0
    for split, classes, count in (("train", train_classes, per_class), ("val", 16, min(per_class, eval_per_class)),
                                  ("test", 20, min(per_class, eval_per_class))):
        for _ in range(classes):
            jobs.append((root / split / f"concept{k:03d}", k, count, size))
            k += 1
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_class, jobs))
    return root


def reset_host_peak() -> None:
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def host_peak_mib(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def device_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_device_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def conv4_train_flops(size: int, images: int) -> float:
    """Multiply-adds x2 of Conv-4's convolutions for `images`, x3 for forward + backward."""
    flops, side, cin = 0.0, size, 3
    for _ in range(4):
        flops += 2 * side * side * cin * 9 * 64
        side, cin = side // 2, 64
    return 3 * flops * images


def matmul_tflops(device: torch.device, n: int | None = None) -> tuple[float, str]:
    """The matmul rate that is the FLOP floor's yardstick, and its dtype: bf16 where the device
    has bf16 units, else fp32 (an emulated bf16 matmul of 2048² takes minutes on such a CPU)."""
    from fsl.runtime import cpu_has_fast_bf16

    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" or cpu_has_fast_bf16() else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    result = rate(lambda: (a @ b, 1)[1], device, warmup=2, repeats=reps)
    return result["median"] * 2 * n**3 / 1e12, str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------- paths
def product_model(data, precision: str, device: torch.device, compile_mode: str | None = None) -> FewShotClassifier:
    """`compile_mode` "step" leaves the model as it is (the trainer compiles its whole step); a
    torch.compile mode ("default", "reduce-overhead") compiles the encoder alone."""
    model = build_model(TrainConfig(seed=0), data, device, precision)
    if compile_mode and compile_mode != "step":
        model.encoder = torch.compile(model.encoder, mode=None if compile_mode == "default" else compile_mode)
    return model


def product_train_rate(data, shape: EpisodeShape, precision: str, device, warmup: int, steps: int,
                       repeats: int, compile_mode: str | None = None) -> dict:
    """Training steps per second of fsl's trainer: eager (compile_mode None), the whole step
    compiled as `--compile on` does ("step"), or the encoder alone compiled in a torch.compile mode."""
    model = product_model(data, precision, device, compile_mode)
    cfg = TrainConfig(ways=shape.ways, shots=shape.shots, queries=shape.queries,
                      compile="on" if compile_mode == "step" else "off")
    trainer = EpisodeTrainer(model, data.split("train"), cfg, device)
    reset_device_peak(device)
    out = rate(lambda: (trainer.run(steps), steps)[1], device, 1 if warmup else 0, repeats)
    out["device_peak_mib"] = device_peak_mib(device)
    if compile_mode == "step":  # why it ran eagerly, if it could not be compiled
        out["fallback"] = getattr(trainer.take_step, "fallback", "not compiled")
    return out


def reference_train_rate(tree: Path, shape: EpisodeShape, size: int, device, workers: int, warmup: int,
                         steps: int, repeats: int) -> dict:
    trainer = reference.ReferenceTrainer(size, shape.ways, shape.shots, shape.queries, device)
    episodes = iter(reference.loader(tree / "train", shape.ways, shape.shots, shape.queries, size, workers))

    def block() -> int:
        for _ in range(steps):
            trainer.step(next(episodes))
        return steps

    reset_device_peak(device)
    out = rate(block, device, 1 if warmup else 0, repeats)
    out["device_peak_mib"] = device_peak_mib(device)
    out["workers_peak_mib"] = sum(host_peak_mib(w.pid) for w in getattr(episodes, "_workers", []))
    episodes._shutdown_workers()  # free the workers now, not at garbage collection
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=64, help="train classes in the generated tree")
    parser.add_argument("--per-class", type=int, default=600, help="images per train class")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="reference DataLoader workers [min(8, cores)]")
    parser.add_argument("--steps", type=int, default=100, help="episodes per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-steps", type=int, default=None, help="episodes per reference block [--steps]")
    parser.add_argument("--parity-steps", type=int, default=1000, help="training episodes of the bf16/fp32 check")
    parser.add_argument("--schedule-steps", type=int, default=2000,
                        help="30-way episodes timed in one go and extrapolated to the paper's 20,000")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile and CUDA graphs")
    parser.add_argument("--logging", action="store_true", help="also time a run with and without MLflow")
    parser.add_argument("--small", action="store_true", help="CPU-sized: 32 classes x 60, few steps")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 30 classes x 16 at 32 px, 2 steps")
    parser.add_argument("--tree", type=Path, default=None, help="reuse a generated tree")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args()
    if args.tiny:
        args.classes, args.per_class, args.steps, args.repeats, args.size = 30, 16, 2, 2, 32
        args.parity_steps, args.schedule_steps, args.ref_steps = 2, 0, 2
    elif args.small:
        args.classes, args.per_class, args.steps, args.repeats = 32, 60, 10, 3
        args.parity_steps, args.schedule_steps = 0, 0
    return args


@dataclass
class Bench:
    """One benchmark run: its options, device, generated tree and the results so far."""

    args: argparse.Namespace
    device: torch.device
    precision: str
    workers: int
    tree: Path
    work: Path
    results: dict

    def save(self) -> None:  # after every section: a run cut short still leaves its figures
        self.args.out.write_text(json.dumps(self.results, indent=2))


def first_episode(bench: Bench):
    """Time to the first episode. Product: decode the tree once (cold) or load the cache (warm),
    put the train split on the device, one training step. Reference: start the loader, one step.
    Returns the decoded data set."""
    args, device = bench.args, bench.device
    first = {}
    for label in ("product_cold", "product_warm"):
        reset_host_peak()
        t0 = time.perf_counter()
        data = read(bench.tree, "split-folders", ReadOptions(image_size=args.size))
        model = product_model(data, bench.precision, device)
        float(EpisodeTrainer(model, data.split("train").to(device), TrainConfig(), device).run(1)[0])
        first[label] = time.perf_counter() - t0
        bench.results.setdefault("host_peak_mib", {})[label] = host_peak_mib()
    reset_host_peak()
    t0 = time.perf_counter()
    ref = reference.ReferenceTrainer(args.size, 5, 1, 15, device)
    ref.step(next(iter(reference.loader(bench.tree / "train", 5, 1, 15, args.size, bench.workers))))
    first["reference"] = time.perf_counter() - t0
    bench.results["first_episode_s"] = first
    print("first episode (s):", {k: round(v, 2) for k, v in first.items()}, flush=True)
    bench.save()
    return data


def train_rates(bench: Bench, data) -> None:
    """Training episodes per second at 5- and 30-way 1-shot, product against reference."""
    args, results = bench.args, bench.results
    results["train"] = {}
    for ways in (5, 30):
        shape = EpisodeShape(ways, 1, 15)
        reset_host_peak()
        prod = product_train_rate(data, shape, bench.precision, bench.device, 1, args.steps, args.repeats)
        prod["host_peak_mib"] = host_peak_mib()
        reset_host_peak()
        refr = reference_train_rate(bench.tree, shape, args.size, bench.device, bench.workers, 1,
                                    args.ref_steps or args.steps, args.repeats)
        refr["host_peak_mib"] = host_peak_mib()
        results["train"][f"{ways}way"] = {"product": prod, "reference": refr,
                                          "ratio": prod["median"] / refr["median"]}
        print(f"train {ways}-way 1-shot: product {prod['median']:.1f} ep/s, reference {refr['median']:.1f} ep/s, "
              f"x{prod['median'] / refr['median']:.1f}", flush=True)
        bench.save()


def eval_rates(bench: Bench, data) -> None:
    """Evaluation at 5-way 1-shot: the product batches episodes, the reference loads each."""
    args, device = bench.args, bench.device
    test, shape5 = data.split("test"), EpisodeShape(5, 1, 15)
    eval_n = max(args.steps, 10) if not args.tiny else 4
    episodes = sample_episodes(test, shape5, eval_n, seed=0, split="test")
    model = product_model(data, bench.precision, device)
    prod = rate(lambda: (episode_correct(model, test, episodes), eval_n)[1], device, 1, args.repeats)
    ref = reference.ReferenceTrainer(args.size, 5, 1, 15, device)
    ref_eval = iter(reference.loader(bench.tree / "test", 5, 1, 15, args.size, bench.workers))
    refr = rate(lambda: (sum(ref.accuracy(next(ref_eval)) for _ in range(eval_n)), eval_n)[1], device, 1, args.repeats)
    ref_eval._shutdown_workers()
    bench.results["eval"] = {"5way": {"product": prod, "reference": refr, "ratio": prod["median"] / refr["median"]}}
    print(f"eval 5-way 1-shot: product {prod['median']:.1f} ep/s, reference {refr['median']:.1f} ep/s", flush=True)
    bench.save()
    if device.type == "cuda" or args.small:
        n600 = sample_episodes(test, shape5, 600, seed=1, split="test")
        sync(device)
        t0 = time.perf_counter()
        episode_correct(model, test, n600).sum().item()
        bench.results["eval"]["600_episodes_s"] = time.perf_counter() - t0


def paper_schedule(bench: Bench, data) -> None:
    """The paper's schedule: 20,000 episodes of 30-way 1-shot, 15 queries, extrapolated."""
    steps = bench.args.schedule_steps
    trainer = EpisodeTrainer(product_model(data, bench.precision, bench.device), data.split("train"),
                             TrainConfig(ways=30, shots=1, queries=15), bench.device)
    float(trainer.run(20)[0])
    t0 = time.perf_counter()
    float(trainer.run(steps)[0])
    elapsed = time.perf_counter() - t0
    bench.results["schedule"] = {"timed_episodes": steps, "seconds": elapsed,
                                 "extrapolated_20000_s": elapsed * 20000 / steps}
    print(f"paper schedule: {steps} 30-way episodes in {elapsed:.1f} s -> 20,000 in "
          f"{bench.results['schedule']['extrapolated_20000_s']:.0f} s", flush=True)


def floor(bench: Bench) -> None:
    """FLOPs of one 30-way and one 5-way training episode against the matmul rate."""
    tflops, dtype = matmul_tflops(bench.device, 256 if bench.args.tiny else None)
    results = bench.results
    results["floor"] = {"matmul_tflops": tflops, "matmul_dtype": dtype}
    for ways in (5, 30):
        flops = conv4_train_flops(bench.args.size, ways * 16)
        floor_ms = flops / (tflops * 1e12) * 1e3
        measured_ms = 1e3 / results["train"][f"{ways}way"]["product"]["median"]
        results["floor"][f"{ways}way"] = {"gflop_per_episode": flops / 1e9, "floor_ms": floor_ms,
                                          "measured_ms": measured_ms, "times_floor": measured_ms / floor_ms}
    print("floor:", json.dumps(results["floor"]), flush=True)
    bench.save()


def precision_parity(bench: Bench, data) -> None:
    """Accuracy parity: bf16 against fp32, same initial weights, same episodes."""
    args, test = bench.args, data.split("test")
    parity = {}
    test_eps = sample_episodes(test, EpisodeShape(5, 1, 15), 300 if not args.tiny else 4, seed=2, split="test")
    for prec in ("fp32", bench.precision):
        model = product_model(data, prec, bench.device)
        trainer = EpisodeTrainer(model, data.split("train"), TrainConfig(), bench.device)
        t0 = time.perf_counter()
        float(trainer.run(args.parity_steps)[0])
        res = evaluate(model, test, test_eps)
        parity[prec] = {"acc": res.mean, "ci95": res.ci95, "train_s": time.perf_counter() - t0}
    bench.results["parity"] = parity | {"steps": args.parity_steps}
    print("parity:", json.dumps(parity), flush=True)
    bench.save()


def compile_trials(bench: Bench, data) -> None:
    """The whole step compiled (CUDA graphs on CUDA) and the encoder alone in torch.compile's modes,
    at 5- and 30-way; a failure is reported."""
    from torch._dynamo.utils import counters

    bench.results["compile"] = {}
    # the whole step (forward, loss, backward, Adam): what --compile runs; then the encoder alone in
    # CUDA graphs, fsl's compiled path before 2026-12-07 (the other modes: BENCHMARKS §2's older rows)
    trials = [("step", 5), ("step", 30), ("reduce-overhead", 5)]
    for mode, ways in trials if bench.device.type == "cuda" else [("step", 5)]:
        try:
            torch._dynamo.reset()
            counters.clear()
            t0 = time.perf_counter()
            out = product_train_rate(data, EpisodeShape(ways, 1, 15), bench.precision, bench.device, 1,
                                     bench.args.steps, bench.args.repeats, compile_mode=mode)
            out["with_warmup_s"] = time.perf_counter() - t0
            # how whole the capture is: Dynamo's graphs and the reasons it broke between them
            out["graphs"] = counters["stats"]["unique_graphs"]
            out["graph_breaks"] = {reason.splitlines()[0][:120]: n for reason, n in counters["graph_break"].items()}
        except Exception as exc:  # report what failed, keep the rest of the benchmark
            out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        bench.results["compile"][f"{mode}_{ways}way"] = out
        print(f"compile {mode} {ways}-way:", out.get("median", out.get("error")), flush=True)
        bench.save()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "cores": os.cpu_count(), "torch": torch.__version__, "precision": precision,
                     "size": args.size, "workers": workers, "steps_per_block": args.steps,
                     "reference_steps_per_block": args.ref_steps or args.steps, "repeats": args.repeats}
    work = Path(tempfile.mkdtemp(prefix="fsl-bench-"))
    os.environ["FSL_CACHE_DIR"] = str(work / "cache")
    t0 = time.perf_counter()
    tree = args.tree or make_tree(work / "tree", args.classes, args.per_class, args.size,
                                  eval_per_class=20 if args.tiny else 100)
    results["tree"] = {"train_classes": args.classes, "per_class": args.per_class,
                       "generate_s": round(time.perf_counter() - t0, 1)}
    bench = Bench(args, device, precision, workers, tree, work, results)
    print(f"device {results['device']}, {precision}; tree {args.classes}x{args.per_class} "
          f"in {results['tree']['generate_s']} s", flush=True)
    data = first_episode(bench)
    data = replace(data, splits={k: v.to(device) for k, v in data.splits.items()})
    train_rates(bench, data)
    eval_rates(bench, data)
    if args.schedule_steps:
        paper_schedule(bench, data)
    floor(bench)
    if args.parity_steps and precision != "fp32":
        precision_parity(bench, data)
    if args.compile:
        compile_trials(bench, data)
    if args.logging:
        results["logging"] = logging_overhead(work)
        print("logging:", json.dumps(results["logging"]), flush=True)
    bench.save()
    print_table(results)


def logging_overhead(work: Path, repeats: int = 3) -> dict:
    """Wall time of one small `run_training` with MLflow against the same with no tracker."""
    from fsl.commands.cmd_train import run_training
    from fsl.commands.options import SILENT, RunOptions
    from fsl.tracking.null import NullRuns

    cfg = TrainConfig(epochs=5, episodes_per_epoch=100, val_episodes=20, test_episodes=100,
                      experiment="bench-logging")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    options = RunOptions(register=True, system_metrics=False)
    times = interleaved({"with_mlflow": lambda: run_training(cfg, options, SILENT),  # the warm-up creates the store
                         "without": lambda: run_training(cfg, options, SILENT, runs=NullRuns())}, repeats=repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "all_s": times, "overhead": med["with_mlflow"] / med["without"] - 1}


def print_table(r: dict) -> None:
    print(f"\n{'measure':38s} {'product':>12s} {'reference':>12s} {'ratio':>7s}")
    for name, key in (("train 5-way 1-shot (episodes/s)", ("train", "5way")),
                      ("train 30-way 1-shot (episodes/s)", ("train", "30way")),
                      ("eval 5-way 1-shot (episodes/s)", ("eval", "5way"))):
        row = r[key[0]][key[1]]
        p, q = row["product"], row["reference"]
        print(f"{name:38s} {p['median']:12.1f} {q['median']:12.1f} {row['ratio']:7.1f}")
        print(f"{'  spread (min-max)':38s} {p['min']:5.1f}-{p['max']:<6.1f} {q['min']:5.1f}-{q['max']:<6.1f}")
    f = r["first_episode_s"]
    print(f"{'first episode (s), cold / warm cache':38s} {f['product_cold']:5.2f}/{f['product_warm']:<6.2f} "
          f"{f['reference']:12.2f}")
    t5 = r["train"]["5way"]
    print(f"{'peak host MiB (main process)':38s} {t5['product']['host_peak_mib']:12.0f} "
          f"{t5['reference']['host_peak_mib']:12.0f}   + workers {t5['reference']['workers_peak_mib']:.0f}")
    if t5["product"].get("device_peak_mib") is not None:
        print(f"{'peak device MiB (5-way training)':38s} {t5['product']['device_peak_mib']:12.0f} "
              f"{t5['reference']['device_peak_mib']:12.0f}")


if __name__ == "__main__":
    main()
