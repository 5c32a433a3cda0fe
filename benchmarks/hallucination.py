"""Hallucination: what it costs per training step, and the M study without MLflow.

    python -m benchmarks.hallucination cost            # step time for M = 0 vs 100, 32 and 84 px
    python -m benchmarks.hallucination study [--episodes 3000]   # the M x hallucinator table
    python -m benchmarks.hallucination omniglot-study [--episodes 500]  # the same on Omniglot

`study` trains one model per (shots, hallucinator, M) on the built-in data exactly as
`fsl hallucinate` does (same trainer, same evaluation, same fixed test episodes) and prints a
markdown table of test accuracy ± 95% CI with the generator on and off. It is the benchmark
form of `fsl sweep-m`, kept free of MLflow so that it also runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.evaluate import evaluate, sample_episodes
from fsl.models.classifier import FewShotClassifier
from fsl.runtime import resolve_device, resolve_precision, seed_everything
from fsl.train import EpisodeTrainer, train


def _model(data, cfg: TrainConfig, precision: str, device) -> FewShotClassifier:
    seed_everything(cfg.seed)
    return FewShotClassifier.for_data(data, precision=precision, hallucinator=cfg.hallucinator,
                                      M=cfg.M).place(device)


def step_cost(device_name: str = "auto", steps: int = 30, repeats: int = 5, sizes=(32, 84)) -> dict:
    """Median ms per 5-way 1-shot training step for M = 0 and M = 100 with each hallucinator.

    The configurations' timed blocks are interleaved (one block of each, `repeats` times), so
    that all of them see the same machine."""
    device = resolve_device(device_name)
    precision = resolve_precision("auto", device)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "precision": precision}
    configs = (("M0", None, 0), ("calibrated_M100", "calibrated", 100), ("wang_M100", "wang", 100),
               ("improved_M100", "improved", 100))
    for size in sizes:
        data = load_dataset("synthetic", image_size=size)
        store = data.split("train").to(device)
        trainers = {}
        for label, kind, m in configs:
            cfg = TrainConfig(hallucinator=kind, M=m)
            trainers[label] = EpisodeTrainer(_model(data, cfg, precision, device), store, cfg, device)
            float(trainers[label].run(3)[0])  # warm-up
        times: dict[str, list[float]] = {label: [] for label in trainers}
        for _ in range(repeats):
            for label, trainer in trainers.items():
                t0 = time.perf_counter()
                float(trainer.run(steps)[0])
                times[label].append((time.perf_counter() - t0) / steps * 1e3)
        row = {label: {"ms_per_step": statistics.median(t), "min": min(t), "max": max(t)} for label, t in times.items()}
        for label in trainers:
            if label != "M0":
                row[label]["overhead_vs_M0"] = row[label]["ms_per_step"] / row["M0"]["ms_per_step"] - 1
        out[f"{size}px"] = row | {"feature_dim": 64 * (size // 16) ** 2}
    return out


def study(episodes: int = 3000, ms=(0, 10, 50, 100), shots=(1, 5), kinds=("wang", "improved"),
          test_episodes: int = 600, device_name: str = "auto", image_size: int = 32, data=None,
          test=None, **train_options) -> list[dict]:
    """One model per (shots, hallucinator, M). `data` (default: the built-in set) gives the
    train and val splits; `test` (default: data's test split) the test classes;
    `train_options` override TrainConfig fields (ways, queries, augment, ...)."""
    device = resolve_device(device_name)
    precision = resolve_precision("auto", device)
    data = data or load_dataset("synthetic", image_size=image_size)
    test = (test or data.split("test")).to(device)
    rows = []
    per_epoch = max(1, episodes // 10)
    for k in shots:
        for kind in kinds:
            for m in ms:
                if m == 0 and kind != kinds[0]:
                    continue  # M = 0 is the same plain ProtoNet for every generator
                cfg = TrainConfig(shots=k, epochs=episodes // per_epoch, episodes_per_epoch=per_epoch,
                                  val_episodes=100, hallucinator=kind if m else None, M=m,
                                  **train_options).resolved()
                t0 = time.perf_counter()
                result = train(_model(data, cfg, precision, device), data, cfg, device)
                eps = sample_episodes(test, cfg.test_shape, test_episodes, cfg.test_seed, "test")
                on = evaluate(result.model, test, eps, noise_seed=cfg.test_seed)
                off = evaluate(result.model, test, eps, M=0, noise_seed=cfg.test_seed)
                rows.append({"shots": k, "hallucinator": kind if m else "none", "M": m,
                             "test_acc": on.mean, "test_ci95": on.ci95,
                             "test_acc_no_hallucination": off.mean, "test_ci95_no_hallucination": off.ci95,
                             "best_val_acc": result.best_val_acc, "seconds": time.perf_counter() - t0})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def omniglot_study(episodes: int = 500, test_episodes: int = 600, device_name: str = "auto") -> list[dict]:
    """The M study on the Omniglot check's data (benchmarks/omniglot.py): background characters
    with rotations for training, the three unseen alphabets for testing; 20-way training."""
    import tempfile
    from pathlib import Path

    from benchmarks.omniglot import OMNIGLOT, unseen_split_file
    from fsl.data.readers import ReadOptions, read

    background = read(OMNIGLOT / "images_background_small1.zip",
                      opts=ReadOptions(rotations=True, split_ratio=(0.9, 0.1, 0.0)))
    split_file = unseen_split_file(OMNIGLOT / "images_background_small2.zip",
                                   Path(tempfile.mkdtemp()) / "unseen.txt")
    unseen = read(OMNIGLOT / "images_background_small2.zip", opts=ReadOptions(split_file=str(split_file)))
    return study(episodes, test_episodes=test_episodes, device_name=device_name, data=background,
                 test=unseen.split("test"), ways=20, queries=5, test_queries=5, augment=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| shots | hallucinator | M | test acc (generator on) | same encoder, generator off |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['shots']} | {r['hallucinator']} | {r['M']} | {r['test_acc']:.2f} ± {r['test_ci95']:.2f} "
                     f"| {r['test_acc_no_hallucination']:.2f} ± {r['test_ci95_no_hallucination']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cost", "study", "omniglot-study"])
    parser.add_argument("--episodes", type=int, default=3000, help="training episodes per model (study)")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed block (cost)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="32,84", help="image sizes (cost), comma-separated")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.what == "cost":
        result = step_cost(args.device, steps=args.steps, sizes=tuple(int(v) for v in args.sizes.split(",")))
        print(json.dumps(result, indent=2))
    elif args.what == "study":
        result = study(args.episodes, test_episodes=args.test_episodes, device_name=args.device)
        print(markdown(result))
    else:
        result = omniglot_study(args.episodes, args.test_episodes, args.device)
        print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
