"""The recipe study's table (issue 18, BENCHMARKS.md §6): every recipe of `benchmarks/recipes.sh`
paired seed by seed with today's ProtoNet, across the sweeps of the study.

    python -m benchmarks.recipe_study table [--experiment recipes] [--out rows.csv]

Reads the FINISHED sweep children of the experiment in the current tracking store
(MLFLOW_TRACKING_URI); a recipe is the values of RECIPE_PARAMS, the baseline is ProtoNet with
none of the steps. Statistics are fsl's own (`fsl.stats`: Student t over seeds); a run's time
is its wall-clock time, pre-training and testing included.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from fsl.stats import paired_difference, seed_ci

# What tells two recipes apart, with the value a ProtoNet of fsl 0.1 has.
# The shots are the test shots: `fsl pretrain` runs log no training shots.
RECIPE_PARAMS = {"encoder": "conv4", "encoder_width": "1.0", "pretrain_epochs": "0", "epochs": "4",
                 "augment": "none", "feature_transform": "none", "hallucinator": "", "M": "0", "test_shots": "1"}


def recipe_of(params: dict[str, str]) -> tuple[str, ...]:
    """The recipe of a run's params (the width is `encoder.width` in runs since fsl 0.2)."""
    params = {"encoder_width": params.get("encoder.width", "1.0")} | params
    return tuple(params.get(k, default) for k, default in RECIPE_PARAMS.items())


def describe(recipe: tuple[str, ...]) -> str:
    """The steps of a recipe that differ from the baseline, as options."""
    steps = [f"{k}={v}" for (k, default), v in zip(RECIPE_PARAMS.items(), recipe) if v != default]
    return ", ".join(steps) or "ProtoNet (today)"


def collect(experiment: str) -> dict[tuple[str, ...], dict[int, tuple[float, float]]]:
    """recipe -> seed -> (test accuracy, minutes) of every finished sweep child."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in this tracking store")
    out: dict[tuple[str, ...], dict[int, tuple[float, float]]] = defaultdict(dict)
    for run in client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=5000):
        if "mlflow.parentRunId" not in run.data.tags or "test_acc" not in run.data.metrics:
            continue
        minutes = (run.info.end_time - run.info.start_time) / 60000
        out[recipe_of(run.data.params)][int(run.data.params["seed"])] = (run.data.metrics["test_acc"], minutes)
    return out


def baseline_of(recipe: tuple[str, ...]) -> tuple[str, ...]:
    """Today's ProtoNet at the recipe's shots."""
    return tuple(v if k == "test_shots" else default for (k, default), v in zip(RECIPE_PARAMS.items(), recipe))


# The best recipe of the study (pre-training + CL2N, tested as is): the other steps (a backbone,
# a hallucinator) are also paired against it.
BEST_STEPS = {"pretrain_epochs": "10", "epochs": "0", "feature_transform": "cl2n"}


def best_of(recipe: tuple[str, ...]) -> tuple[str, ...]:
    """The best recipe at the recipe's shots."""
    return tuple(BEST_STEPS.get(k, v if k == "test_shots" else default)
                 for (k, default), v in zip(RECIPE_PARAMS.items(), recipe))


def paired(acc: dict[int, float], other: dict[int, tuple[float, float]], prefix: str) -> dict:
    """The paired difference acc - other over their common seeds (at least 2), as row columns."""
    common = sorted(acc.keys() & other.keys())
    if len(common) < 2:
        return {}
    diff = paired_difference({s: acc[s] for s in common}, {s: other[s][0] for s in common})
    return {f"{prefix}diff": diff.mean, f"{prefix}diff_ci95": diff.half, f"{prefix}excludes_0": diff.excludes_zero}


def table(results: dict[tuple[str, ...], dict[int, tuple[float, float]]]) -> list[dict]:
    """One row per recipe: mean ± t-CI over seeds, and the paired difference to today's ProtoNet
    (`diff`) and to the best recipe (`best_diff`) at the same shots (seed by seed, the same test
    episodes)."""
    rows = []
    for recipe, seeds in sorted(results.items(), key=lambda kv: (kv[0][-1], kv[0] != baseline_of(kv[0]), kv[0])):
        acc = {s: a for s, (a, _) in seeds.items()}
        interval = seed_ci(list(acc.values()))
        row = {"recipe": describe(recipe), "seeds": ",".join(map(str, sorted(acc))), "test_acc": interval.mean,
               "test_acc_ci95": interval.half, "minutes": sum(m for _, m in seeds.values()) / len(seeds)}
        for other, prefix in ((baseline_of(recipe), ""), (best_of(recipe), "best_")):
            if recipe != other:
                row |= paired(acc, results.get(other, {}), prefix)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def diff(r: dict, prefix: str) -> str:
        if f"{prefix}diff" not in r:
            return "—"
        return f"{r[prefix + 'diff']:+.2f} ± {r[prefix + 'diff_ci95']:.2f}{' ✓' if r[prefix + 'excludes_0'] else ''}"

    lines = ["| recipe | seeds | test acc | vs ProtoNet (paired) | vs the best recipe (paired) | minutes per model |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seeds']} | {r['test_acc']:.2f} ± {r['test_acc_ci95']:.2f} "
                     f"| {diff(r, '')} | {diff(r, 'best_')} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table"])
    parser.add_argument("--experiment", default="recipes")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as CSV")
    args = parser.parse_args()
    rows = table(collect(args.experiment))
    print(markdown(rows))
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
