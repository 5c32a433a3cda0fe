"""Hallucination: what it costs per training step, and the M study without MLflow.

    python -m benchmarks.hallucination cost            # step time for M = 0 vs 100, 32 and 84 px
    python -m benchmarks.hallucination study [--seeds 0,1,2] [--hallucinators calibrated,wang]
    python -m benchmarks.hallucination omniglot-study [--seeds 0,1,2,3,4]   # train Omniglot set 1, test set 2
    python -m benchmarks.hallucination table sweep.csv [...]   # a sweep parent's table as markdown
    python -m benchmarks.hallucination logs study.log [...] --hallucinators wang --seeds 0,1,2
                                                       # a study's table from the model lines of its logs

`study` and `omniglot-study` are `fsl sweep --method hallucinate --param hallucinator=...
--param M=0,10,50,100 --seeds ... --baseline M=0` without MLflow: the same plan, trainer,
fixed test episodes, diagnostics and statistics (fsl.sweeps), so they also run on a bare GPU
machine, and on train and test data from two different sets, which the CLI cannot do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from benchmarks.timing import interleaved, training_block
from fsl import sweeps
from fsl.choices import COMPILE_MODES
from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.models.classifier import build_model
from fsl.runtime import resolve_device, resolve_precision
from fsl.train import EpisodeTrainer


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
            trainers[label] = EpisodeTrainer(build_model(cfg, data, device, precision), store, cfg, device)
        seconds = interleaved({label: training_block(trainer, steps) for label, trainer in trainers.items()},
                              device, repeats)
        times = {label: [s / steps * 1e3 for s in values] for label, values in seconds.items()}
        row = {label: {"ms_per_step": statistics.median(t), "min": min(t), "max": max(t)} for label, t in times.items()}
        for label in trainers:
            if label != "M0":
                row[label]["overhead_vs_M0"] = row[label]["ms_per_step"] / row["M0"]["ms_per_step"] - 1
        out[f"{size}px"] = row | {"feature_dim": 64 * (size // 16) ** 2}
    return out


def replicated_study(plan: sweeps.Plan, data, test=None, device_name: str = "auto", log=print) -> dict:
    """`fsl sweep` itself (`run_sweep`) under `NullRuns`: the same plan, trainer, twins, fixed
    test episodes, diagnostics and statistics, with nothing recorded and no MLflow needed. Trains
    on `data` (its train and val splits) and tests on `test` (a `DataSet` with a test split;
    default: data's own). `log` gets one JSON line per child as it ends (what `logs` reads back).
    Returns {"rows": per point, "children": per child, "environment": ...}."""
    from fsl.commands.cmd_sweep import run_sweep
    from fsl.commands.options import SILENT
    from fsl.tracking.null import NullRuns

    device = resolve_device(device_name)
    results, started = {}, time.perf_counter()

    def on_child(child: sweeps.Child, result: sweeps.ChildResult) -> None:
        results[child.name] = result
        trained_in = sweeps.trained_twin(plan, child)
        log(json.dumps({"child": child.name, "trained_in": trained_in.name if trained_in else None} | {
            k: v for k, v in result.metrics.items() if sweeps.child_metric(k)}))

    base = replace(plan.base, device=str(device))
    rows = run_sweep(base, dict(plan.grid), seeds=list(plan.seeds) if plan.replicated else None,
                     baseline=plan.baseline, reporter=SILENT, runs=NullRuns(), data=data, test_data=test,
                     on_child=on_child)
    environment = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "precision": resolve_precision(plan.base.precision, device),
                   "compile": plan.base.compile, "seconds": round(time.perf_counter() - started, 1)}
    log(json.dumps({"environment": environment}))
    return {"rows": rows, "children": sweeps.child_rows(plan, results), "environment": environment}


def study_plan(episodes: int, seeds, kinds, ms, shots: int = 1, test_episodes: int = 600,
               **options) -> sweeps.Plan:
    """The M study's plan: hallucinator x M, once per seed, paired with ProtoNet (M = 0);
    `episodes` training episodes in 4 epochs (validation after each), `options` other fields."""
    base = TrainConfig(**{"hallucinator": kinds[0], "M": max(ms), "shots": shots, "epochs": 4,
                          "episodes_per_epoch": max(1, episodes // 4), "val_episodes": 100,
                          "test_episodes": test_episodes} | options)
    return sweeps.plan_sweep(base, {"hallucinator": list(kinds), "M": list(ms)}, seeds=list(seeds),
                             baseline="M=0")


def builtin_plan(episodes: int = 2000, seeds=(0, 1, 2), kinds=("calibrated", "wang", "improved"),
                 ms=(0, 10, 50, 100), shots: int = 1, test_episodes: int = 600, image_size: int = 32,
                 compile: str = "auto") -> sweeps.Plan:
    """The M study's plan on the built-in data; `image_size` 84 gives Mini-ImageNet's shape."""
    return study_plan(episodes, seeds, kinds, ms, shots, test_episodes, image_size=image_size, compile=compile)


def study(device_name: str = "auto", **plan_options) -> dict:
    """The M study on the built-in data (the form of `fsl sweep ... --seeds --baseline M=0`
    that runs on a bare GPU machine); `plan_options` as `builtin_plan`'s."""
    plan = builtin_plan(**plan_options)
    return replicated_study(plan, load_dataset("synthetic", image_size=plan.base.image_size), device_name=device_name)


def omniglot_study(episodes: int = 1000, seeds=(0, 1, 2, 3, 4), kinds=("calibrated",), ms=(0, 10, 50, 100),
                   test_episodes: int = 600, device_name: str = "auto") -> dict:
    """The M study on the Omniglot check's data (benchmarks/omniglot.py): train on every
    character of images_background_small1 with rotations (20-way 1-shot 5-query episodes,
    augmentation, a seeded 10% of classes for validation), test 5-way 1-shot 5-query on the
    three alphabets only images_background_small2 has."""
    import tempfile
    from pathlib import Path

    from benchmarks.omniglot import OMNIGLOT, unseen_split_file
    from fsl.data import load_dataset

    background = load_dataset(str(OMNIGLOT / "images_background_small1.zip"), rotations=True,
                              split_ratio=(0.9, 0.1, 0.0))
    split_file = unseen_split_file(OMNIGLOT / "images_background_small2.zip",
                                   Path(tempfile.mkdtemp()) / "unseen.txt")
    unseen = load_dataset(str(OMNIGLOT / "images_background_small2.zip"), split_file=str(split_file))
    plan = study_plan(episodes, seeds, kinds, ms, 1, test_episodes, ways=20, queries=5, test_queries=5,
                      augment=True)
    return replicated_study(plan, background, unseen, device_name)


def markdown(rows: list[dict]) -> str:
    """The aggregate rows as a table: mean ± t-CI over seeds, paired difference to ProtoNet."""
    lines = ["| point | seeds | test acc | generator off | vs ProtoNet (paired) | offset | spread | collapse | mix "
             "| real proto offset | final proto offset |", "| --- " * 11 + "|"]
    for r in rows:
        def ci(key):
            return f"{r[key]:.2f} ± {r[key + '_ci95']:.2f}" if key in r else ""
        diff = "" if r.get("is_baseline", True) or "diff_vs_baseline" not in r else \
            f"{r['diff_vs_baseline']:+.2f} ± {r['diff_vs_baseline_ci95']:.2f}" + (" *" if r["diff_excludes_0"] else "")
        diag = [f"{r[k]:.3f}" if k in r else "" for k in
                ("halluc_mean_offset", "halluc_spread_ratio", "halluc_collapse", "halluc_mix_weight",
                 "halluc_support_offset", "halluc_prototype_offset")]
        lines.append(f"| {r['point']} | {int(r['n_seeds'])} | {ci('test_acc')} | {ci('test_acc_no_hallucination')} "
                     f"| {diff} | " + " | ".join(diag) + " |")
    return "\n".join(lines) + "\n\n* the 95% CI of the paired difference excludes 0"


def read_rows(path: str) -> list[dict]:
    """Aggregate rows back from a sweep's `sweep.csv` (numbers as floats, booleans as bool)."""
    import csv

    def value(text: str):
        if text in ("True", "False"):
            return text == "True"
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def rows_from_logs(plan: sweeps.Plan, paths) -> dict:
    """Aggregate a study from the one-JSON-line-per-model logs of `replicated_study` (for a
    study cut short or split over several calls): the first line of each child counts; a later
    line of the same child (a baseline trained again by another call) must agree with it."""
    names, results = {child.name for child in plan.children}, {}
    for path in paths:
        with open(path) as f:
            for line in f:
                record = json.loads(line) if line.startswith('{"child"') else {}
                name = record.pop("child", None)
                if name not in names:
                    continue
                metrics = {k: v for k, v in record.items() if k not in ("trained_in", "seconds")}
                if name in results and results[name].metrics["test_acc"] != metrics["test_acc"]:
                    raise ValueError(f"{path}: {name} has test_acc {metrics['test_acc']}, "
                                     f"another log {results[name].metrics['test_acc']}")
                results.setdefault(name, sweeps.ChildResult("", metrics))
    return {"rows": sweeps.aggregate(plan, results), "children": sweeps.child_rows(plan, results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cost", "study", "omniglot-study", "table", "logs"])
    parser.add_argument("files", nargs="*", help="table: sweep.csv files of sweep parents; logs: study logs")
    parser.add_argument("--episodes", type=int, default=None,
                        help="training episodes per model (study: 2000, omniglot-study: 1000)")
    parser.add_argument("--seeds", default=None, help="training seeds (study: 0,1,2; omniglot-study: 0,1,2,3,4)")
    parser.add_argument("--hallucinators", default=None, help="study: calibrated,wang,improved; omniglot: calibrated")
    parser.add_argument("--ms", default="0,10,50,100", help="values of M (0: ProtoNet, the baseline)")
    parser.add_argument("--shots", type=int, default=1, help="study: training and test shots")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed block (cost)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="32,84", help="image sizes (cost), comma-separated")
    parser.add_argument("--image-size", type=int, default=32, help="study: image size of the built-in data")
    parser.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                        help="study: torch.compile the step (auto: on CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.what == "cost":
        result = step_cost(args.device, steps=args.steps, sizes=tuple(int(v) for v in args.sizes.split(",")))
        print(json.dumps(result, indent=2))
    elif args.what == "table":
        result = [row for path in args.files for row in read_rows(path)]
        print(markdown(result))
    else:
        options = {"test_episodes": args.test_episodes, "ms": tuple(int(v) for v in args.ms.split(","))}
        if args.episodes:
            options["episodes"] = args.episodes
        if args.seeds:
            options["seeds"] = tuple(int(v) for v in args.seeds.split(","))
        if args.hallucinators:
            options["kinds"] = tuple(args.hallucinators.split(","))
        built_in = {"shots": args.shots, "image_size": args.image_size, "compile": args.compile}
        if args.what == "logs":  # the child names are the grid's, so an Omniglot study's logs read the same
            result = rows_from_logs(builtin_plan(**built_in, **options), args.files)
        elif args.what == "study":
            result = study(args.device, **built_in, **options)
        else:
            result = omniglot_study(device_name=args.device, **options)
        print(markdown(result["rows"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
