"""`fsl sweep` and `fsl sweep-m`: a grid of training runs as nested runs under one parent."""

from __future__ import annotations

import csv
import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

from fsl import viz
from fsl.commands.common import Reporter, RunOptions, mlflow_runs, run_tags
from fsl.commands.train import prepare_training, run_training
from fsl.config import TrainConfig
from fsl.errors import UsageError


def run_sweep(base: TrainConfig, grid: dict[str, list], options: RunOptions = RunOptions(),
              reporter: Reporter = Reporter(), shard: int = 0, shards: int = 1) -> list[dict]:
    """Train and test every point of `grid` (field -> values) as nested runs under one parent.

    Points are enumerated in a fixed order; with `shards` > 1 this process runs only the points
    whose index % shards == shard, so N processes (one per GPU or machine, one tracking server)
    cover the grid once with no point run twice. The parent run gets a CSV table of every
    point and a plot of test accuracy ± CI against the first swept field.
    """
    points = shard_points(grid, shard, shards)
    configs = [replace(base, **p) for p in points]
    runs = mlflow_runs()
    runs.check_store()
    for c in configs:  # every point is checked before the parent run opens
        prepare_training(c)
    tags = run_tags("sweep") | {"fsl.sweep_grid": repr(grid), "fsl.sweep_shard": f"{shard}/{shards}"}
    with runs.open(base.experiment, run_name=options.run_name or "sweep-" + "-".join(grid), tags=tags) as parent, \
            tempfile.TemporaryDirectory(prefix="fsl-sweep-") as workdir:
        parent.log_params({"sweep_" + k: ",".join(map(str, v)) for k, v in grid.items()}
                          | {"shard": shard, "shards": shards})
        rows = [_run_point(point, cfg, options, reporter) for point, cfg in zip(points, configs)]
        table = write_table(rows, Path(workdir) / "sweep.csv")
        parent.log_artifact(table)
        fields = list(grid)
        group = fields[1] if len(fields) > 1 else None
        parent.log_artifact(viz.metric_vs_value(rows, fields[0], Path(workdir) / "sweep.png", group))
        best = max(rows, key=lambda r: r["test_acc"])
        parent.log_metrics({"best_test_acc": best["test_acc"]})
        reporter.echo(f"sweep done: {len(rows)} runs; best {best['test_acc']:.2f}% at "
                      + ", ".join(f"{k}={best[k]}" for k in fields))
    return rows


def shard_points(grid: dict[str, list], shard: int, shards: int) -> list[dict]:
    """This shard's grid points, in the grid's fixed order; usage errors for an empty grid or
    shard."""
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if not 0 <= shard < shards:
        raise UsageError(f"--shard must be between 0 and {shards - 1}, got {shard}")
    unknown = [f for f in grid if f not in TrainConfig.__dataclass_fields__]
    if unknown:
        raise UsageError(f"cannot sweep over {unknown}: not a training option")
    empty = [f for f, values in grid.items() if not values]
    if not grid or empty:
        raise UsageError(f"the sweep has no values for {', '.join(empty) or 'any option'}")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    mine = [p for i, p in enumerate(points) if i % shards == shard]
    if not mine:
        raise UsageError(f"--shard {shard} of {shards} has no grid points (the grid has {len(points)})")
    return mine


def _run_point(point: dict, cfg: TrainConfig, options: RunOptions, reporter: Reporter) -> dict:
    name = ",".join(f"{k}={v}" for k, v in point.items())
    reporter.echo(f"--- sweep point {name}")
    summary = run_training(cfg, replace(options, nested=True, run_name=name, resume=None), reporter)
    row = dict(point) | {"run_id": summary.run_id, "best_val_acc": summary.best_val_acc,
                         "test_acc": summary.test.mean, "test_ci95": summary.test.ci95}
    if summary.test_no_hallucination is not None:
        row |= {"test_acc_no_hallucination": summary.test_no_hallucination.mean,
                "test_ci95_no_hallucination": summary.test_no_hallucination.ci95}
    return row


def write_table(rows: list[dict], path: Path) -> Path:
    """Rows as a CSV whose columns are every key, in first-seen order."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
