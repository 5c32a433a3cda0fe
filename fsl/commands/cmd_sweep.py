"""`fsl sweep` and `fsl sweep-m`: a grid of training runs, each point once per seed, as nested
runs under one parent that aggregates over the seeds (planning and statistics: `fsl.sweeps`,
`fsl.stats`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

from fsl import sweeps, viz
from fsl.commands.cmd_train import TrainedTwin, run_test_of_twin, run_training
from fsl.commands.options import Reporter, RunOptions, quietable
from fsl.commands.records import log_source_diff, mlflow_runs, run_tags
from fsl.commands.run_identity import config_hash, run_params
from fsl.commands.training_setup import prepare_training
from fsl.config import DataConfig, TrainConfig
from fsl.data import DataSet
from fsl.errors import UsageError
from fsl.tracking.protocol import Runs


@quietable
def run_sweep(base: TrainConfig, grid: dict[str, list], options: RunOptions = RunOptions(),
              reporter: Reporter = Reporter(), *, seeds: list[int] | None = None, baseline: str | None = None,
              shard: int = 0, shards: int = 1, register: str = "none", runs: Runs | None = None,
              data: DataSet | None = None, test_data: DataSet | None = None,
              on_child: Callable[[sweeps.Child, sweeps.ChildResult], None] | None = None,
              plan: sweeps.Plan | None = None, tags: dict[str, str] | None = None) -> list[dict]:
    """Train and test every point of `grid` (field -> values), once per seed of `seeds`, as
    nested runs under one parent run.

    Every option and every child configuration is checked before the parent opens. A child whose
    configuration already has a FINISHED run in the experiment (the same `fsl.config_hash`) is
    not trained again: its metrics are reused, so a restarted sweep runs only the rest. The
    parent gets `sweep.csv` (per point: mean ± t-CI over seeds, paired difference to the
    baseline), `sweep_runs.csv` (per child), `sweep.png` and the aggregate as metrics.

    `register`: "none" registers nothing; "all" registers every child as it ends; "best"
    registers, per registry name (a sweep-m splits between fsl-protonet and fsl-hallucinate),
    the child of this process with the highest best_val_acc, once all of them ended (the
    champion rule then decides the alias). The parent's `fsl.best_child.<name>` tags name that
    child whatever `register` says.

    `runs`: the tracking surface (default MLflow; `NullRuns()`: nothing recorded, nothing reused,
    the same table). `data`, `test_data`: data sets already loaded, as for `run_training`.
    `on_child(child, result)` is called as each child ends (a study's log). `plan`: a plan made
    already (`sweeps.plan_points`: `fsl tune --retest`), instead of `grid` and the options that
    plan one; `tags`: more tags of the parent run.
    """
    plan = plan or sweeps.plan_sweep(base, grid, seeds=seeds, baseline=baseline, shard=shard, shards=shards)
    grid, shard, shards = {k: list(v) for k, v in plan.grid.items()}, plan.shard, plan.shards
    options = replace(options, register=register == "all")
    if register != "none" and options.registered_model_name:
        from fsl.tracking.model_registry import validate_model_name

        validate_model_name(options.registered_model_name)
    given = Given(data, test_data)
    _check_given_data(given, grid)
    runs = runs or mlflow_runs()
    runs.check_store()
    hashes = _child_hashes(plan, given)
    tags = run_tags("sweep") | {"fsl.sweep_grid": repr(grid), "fsl.sweep_shard": f"{shard}/{shards}"} | (tags or {})
    with runs.open(base.experiment, run_name=options.run_name or sweeps.sweep_run_name(plan), tags=tags,
                   system_metrics=options.system_metrics) as parent, \
            tempfile.TemporaryDirectory(prefix="fsl-sweep-") as workdir:
        log_source_diff(parent)
        parent.log_params({"sweep_" + k: ",".join(map(str, v)) for k, v in grid.items()}
                          | {"shard": shard, "shards": shards, "baseline": str(plan.baseline or ""),
                             "seeds": ",".join(map(str, plan.seeds)) if plan.replicated else ""})
        results = _run_children(runs, plan, hashes, options, reporter, given, Path(workdir), on_child)
        rows = sweeps.aggregate(plan, results)
        out = Path(workdir)
        parent.log_artifact(sweeps.write_csv(rows, out / "sweep.csv"))
        parent.log_artifact(sweeps.write_csv(sweeps.child_rows(plan, results), out / "sweep_runs.csv"))
        x, group_fields = sweeps.plot_axes(plan)
        parent.log_artifact(viz.sweep_plot(rows, x, group_fields, out / "sweep.png"))
        parent.log_metrics(sweeps.parent_metrics(rows))
        reused = sum(r.reused for r in results.values())
        best = best_children(plan, results, options.registered_model_name)
        best_tags = {f"fsl.best_child.{name}": f"{child} ({results[child].run_id})" for name, child in best.items()}
        parent.set_tags(sweeps.parent_tags(rows) | {"fsl.sweep_reused": reused} | best_tags)
        if register == "best":
            from fsl.commands.cmd_register import register_run

            for name, best_child in best.items():
                run_id = results[best_child].run_id
                if run_id is not None:  # None only without tracking, where nothing registers
                    register_run(run_id, name, False, reporter)
        for row in rows:
            reporter.echo(sweeps.describe(row, plan.baseline is not None))
        reporter.echo(f"sweep done: {len(plan.children)} runs ({reused} reused)")
    reporter.echo(runs.link(parent.run_id))
    return rows


def best_children(plan: sweeps.Plan, results: dict[str, sweeps.ChildResult],
                  registered_model_name: str | None) -> dict[str, str]:
    """Registry name -> the child (of this process) with the highest best_val_acc under it."""
    best: dict[str, str] = {}
    for child in plan.children:
        if child.name not in results or "best_val_acc" not in results[child.name].metrics:
            continue
        name = registered_model_name or f"fsl-{child.cfg.method}"
        score = results[child.name].metrics["best_val_acc"]
        if name not in best or score > results[best[name]].metrics["best_val_acc"]:
            best[name] = child.name
    return best


@dataclass(frozen=True)
class Given:
    """Data sets a caller loaded (None: read the children's `data` / `test_data`)."""

    data: DataSet | None = None
    test_data: DataSet | None = None


def _check_given_data(given: Given, grid: dict[str, list]) -> None:
    """A sweep over how data is read cannot run on data sets read already."""
    if given.data is None and given.test_data is None:
        return
    read_fields = {f.name for f in fields(DataConfig)} | {"test_data", "test_split"}
    axes = sorted(set(grid) & read_fields)
    if axes:
        raise UsageError(f"a sweep over {', '.join(axes)} reads its data itself: pass no data sets to run_sweep")


def _handed_over(runs: Runs, kept: Path, result: sweeps.ChildResult) -> TrainedTwin:
    """The checkpoint a child is tested from: the one its twin kept (`kept`), or, for a twin
    reused from an earlier sweep, its run's best checkpoint, fetched from the store beside it."""
    if not kept.exists():
        assert result.run_id is not None  # a reused twin: found in the store
        kept = runs.best_checkpoint(result.run_id, kept.with_suffix(""))
    return TrainedTwin(kept, result.run_id, result.metrics)


def _run_children(runs: Runs, plan: sweeps.Plan, hashes: dict[str, str], options: RunOptions, reporter: Reporter,
                  given: Given, workdir: Path, on_child) -> dict[str, sweeps.ChildResult]:
    """Every child of the plan, twins first (`sweeps.run_order`); a twin keeps its best
    checkpoint in `workdir` (named by its config hash: a point's name may hold any character)
    for the children tested from it."""
    results: dict[str, sweeps.ChildResult] = {}
    twins = {twin.name for child in plan.children if (twin := sweeps.trained_twin(plan, child))}
    for child in sweeps.run_order(plan):
        twin = sweeps.trained_twin(plan, child)
        # fetched only if the child is not reused (a twin reused from the store may need a download)
        handed = partial(_handed_over, runs, workdir / f"{hashes[twin.name]}.pt", results[twin.name]) if twin else None
        keep = workdir / f"{hashes[child.name]}.pt" if child.name in twins else None
        results[child.name] = _run_child(runs, child, hashes[child.name], replace(options, keep_checkpoint=keep),
                                         reporter, handed, given)
        if on_child:
            on_child(child, results[child.name])
    return results


def _child_hashes(plan: sweeps.Plan, given: Given) -> dict[str, str]:
    """The `fsl.config_hash` each child's run will have. Preparing each point once also checks
    every point (data, shapes, device) before the parent run opens."""
    hashes = {}
    for point in plan.mine:
        children = [c for c in plan.children if c.point == point]
        setup = prepare_training(children[0].cfg, None, given.data, given.test_data)
        for child in children:
            hashes[child.name] = config_hash(run_params(replace(setup, cfg=child.cfg.resolved()), 1))
    return hashes


def _run_child(runs: Runs, child: sweeps.Child, child_hash: str, options: RunOptions, reporter: Reporter,
               twin: Callable[[], TrainedTwin] | None, given: Given) -> sweeps.ChildResult:
    """Reuse a FINISHED run of the child's configuration, or test its trained twin's model
    (`sweeps.trained_twin`), or train it. The child's metrics are those its run logged, as the
    run itself reports them: the same whatever `runs` records."""
    found = runs.find_finished(child.cfg.experiment, child_hash)
    if found is not None:
        reporter.echo(f"--- sweep {child.name}: already finished as run {found[0]}, reused")
        return sweeps.ChildResult(found[0], found[1], reused=True)
    reporter.echo(f"--- sweep {child.name}")
    child_options = replace(options, nested=True, run_name=sweeps.child_run_name(child), resume=None)
    summary = run_test_of_twin(child.cfg, twin(), child_options, reporter, runs, given.data, given.test_data) \
        if twin else None
    if summary is None:
        summary = run_training(child.cfg, child_options, reporter, runs, given.data, given.test_data)
    return sweeps.ChildResult(summary.run_id, summary.metrics)
