"""Sweep planning and aggregation: pure functions, no torch, no MLflow.

A sweep is a grid (training option -> values) times a list of seeds. This module turns it into
the child runs to train, decides which of them a shard runs, pairs every point with its
baseline, and aggregates the per-seed results into one row per point. `fsl.commands.cmd_sweep.run_sweep`
trains and tracks; everything it decides comes from here.

Vocabulary:
- a *point* is one combination of grid values, e.g. {hallucinator: wang, M: 10};
- a *child* is a point trained with one seed (one nested MLflow run), named
  `<point>-seed<k>` when seeds are replicates (`--seeds`), `<point>` otherwise;
- the *baseline* (`--baseline FIELD=VALUE`) pairs each point with the point that differs from
  it only in FIELD (set to VALUE), seed by seed.

A point with M = 0 (or no hallucinator) is a plain ProtoNet whatever its hallucinator: such
points are merged into one ProtoNet point (hallucinator None, and every `hallucinator.*`
setting None), trained once per seed, so a grid `hallucinator=wang,improved x M=0,10` has 3
points, and both hallucinators pair with the same ProtoNet runs. Likewise a component setting
that the point's component does not have (`hallucinator.diversity_weight` on a `wang` point) is
None there, so the points that differ only in it are one point.

A hallucinator that does not act in training (`fsl.components.is_test_time`, e.g. calibrated)
trains the same weights at every M: of the children that differ only in M, the one with the
largest M is trained and the others are tested from its model (`trained_twin`).
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from fsl import compat
from fsl.components import is_test_time
from fsl.config import COMPONENT_AXES, FIELD_TYPES, TrainConfig
from fsl.errors import UsageError
from fsl.stats import paired_difference, seed_ci

# Per-child metrics averaged over seeds into the aggregate table (with a t-CI for accuracies);
# every metric named halluc_* (the hallucination diagnostics) is averaged too.
CI_METRICS = ("test_acc", "test_acc_no_hallucination")
MEAN_METRICS = ("best_val_acc",)


def child_metric(key: str) -> bool:
    """Whether a child's metric goes into its row of `sweep_runs.csv` (`child_rows`)."""
    return key in CI_METRICS or key in MEAN_METRICS or key.startswith(("test_ci95", "halluc_"))


def format_value(value: Any) -> str:
    """A grid value as it appears in names and tables: None is 'none'."""
    return "none" if value is None else str(value)


@dataclass(frozen=True)
class Point:
    """One grid point: (field, value) pairs in the grid's field order (hashable)."""

    items: tuple[tuple[str, Any], ...]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.items)

    @property
    def name(self) -> str:
        """`field=value,field=value`, e.g. 'hallucinator=wang,M=10' (a component setting that the
        point's component does not have is left out)."""
        return ",".join(f"{k}={format_value(v)}" for k, v in self.items if not ("." in k and v is None))

    def __str__(self) -> str:
        return self.name

    def with_value(self, field: str, value: Any) -> "Point":
        return Point(tuple((k, value if k == field else v) for k, v in self.items))


def is_protonet(cfg: TrainConfig) -> bool:
    """A configuration that trains a plain ProtoNet: no hallucinator, or M = 0."""
    return cfg.hallucinator is None or cfg.M == 0


def _applied(base: TrainConfig, point: Point) -> TrainConfig:
    """`base` with the point's values. None on a component setting (`hallucinator.x`) means the
    point's component does not have it; on a field it is the value (`hallucinator=none`)."""
    return base.with_values({k: v for k, v in point.items if v is not None or "." not in k})


def point_config(base: TrainConfig, point: Point) -> TrainConfig:
    """The training config of a point (seed not set). A ProtoNet point gets hallucinator None,
    M 0 and no hallucinator settings, so its config (and run identity) does not depend on which
    hallucinator's M = 0 it came from."""
    cfg = _applied(base, point)
    if is_protonet(cfg):
        cfg = replace(cfg, hallucinator=None, M=0, hallucinator_args={})
    return cfg


def normalise(base: TrainConfig, point: Point) -> Point:
    """The point as `point_config` reads it: on a ProtoNet point the hallucinator None, M 0 and
    every hallucinator setting None; on any point a setting its component does not have None."""
    cfg = _applied(base, point)
    protonet = is_protonet(cfg)
    fixed: dict[str, Any] = {"hallucinator": None, "M": 0} if protonet else {}
    for key, _ in point.items:
        axis, dot, setting = key.partition(".")
        if dot and axis in COMPONENT_AXES:
            name = getattr(cfg, axis)
            if (axis == "hallucinator" and protonet) or name is None or name not in COMPONENT_AXES[axis] \
                    or setting not in COMPONENT_AXES[axis].settings(name):
                fixed[key] = None
    return Point(tuple((k, fixed.get(k, v)) for k, v in point.items))


def expand_grid(base: TrainConfig, grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """Every point of `grid` in itertools.product order (the first field varies slowest),
    normalised, with duplicates (the merged ProtoNet points) kept at their first position."""
    fields = list(grid)
    points: dict[Point, None] = {}
    for values in itertools.product(*grid.values()):
        points.setdefault(normalise(base, Point(tuple(zip(fields, values)))), None)
    return list(points)


# ---------------------------------------------------------------------------------- input
def option_name(text: str) -> str:
    """A training option as `--param` names it: dashes as underscores, old names as today's
    (`hallucinations` is `M`)."""
    name = text.strip().replace("-", "_")
    return compat.OPTION_ALIASES.get(name, name)


def parse_grid(base: TrainConfig, items: Sequence[str]) -> dict[str, list]:
    """`--param NAME=V1,V2` items -> {name: typed values}. NAME is a training option (`shots`,
    `distance`; old names such as `hallucinations` and `encoder_width` too), or a component setting
    by its dotted name (`hallucinator.diversity_weight`), read with the type its component
    declares: the component named by the grid or, if the grid does not name one, by `base`.
    UsageError naming the item for anything else."""
    texts = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = option_name(key)
        if not sep or not text.strip():
            raise UsageError(f"--param must be NAME=V1,V2,... with a training option or a component setting, "
                             f"got {item!r}")
        texts[key] = [v.strip() for v in text.split(",") if v.strip()]
    return {key: [_grid_value(base, texts, key, v) for v in values] for key, values in texts.items()}


def _grid_value(base: TrainConfig, texts: Mapping[str, Sequence[str]], key: str, text: str) -> Any:
    """One value of grid axis `key`, typed (see `parse_grid`)."""
    axis, dot, setting = key.partition(".")
    if dot and axis in COMPONENT_AXES:
        names = texts.get(axis) or [getattr(base, axis)]
        owners = [n for n in names if n in COMPONENT_AXES[axis] and setting in COMPONENT_AXES[axis].settings(n)]
        if not owners:
            raise UsageError(f"--param {key}: no {axis} of this sweep ({', '.join(map(str, names))}) has a setting "
                             f"{setting!r} (`fsl components {axis}` lists them)")
        spec = COMPONENT_AXES[axis].settings(owners[0])[setting]
        try:
            return spec.cast(text)
        except ValueError as exc:
            raise UsageError(f"--param {key}: {exc}") from None
    if key not in FIELD_TYPES or key.endswith("_args"):
        raise UsageError(f"--param {key}: not a training option or a component setting (such as "
                         f"hallucinator.diversity_weight)")
    return _cast_field(FIELD_TYPES[key], text, key)


def _cast_field(annotation: str, text: str, key: str) -> Any:
    """A grid value of a TrainConfig field, read with the field's annotation ('int | None', 'bool')."""
    if "None" in annotation and text.lower() == "none":
        return None
    try:
        if "bool" in annotation:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
        return float(text) if "float" in annotation else int(text) if "int" in annotation else text
    except (KeyError, ValueError):
        raise UsageError(f"--param {key}: cannot read {text!r} as {annotation}") from None


def parse_seeds(text: str | None) -> list[int] | None:
    """`--seeds`: '0,1,2' -> [0, 1, 2]; None or 'auto' -> None (no replicates: the one --seed).
    Empty, repeated or non-integer seeds raise UsageError."""
    if text is None or text.strip() == "auto":
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}")
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"--seeds must not repeat a seed, got {text!r} (repeated: {repeated})")
    return seeds


@dataclass(frozen=True)
class Baseline:
    """`--baseline FIELD=VALUE`: field is a grid field, value one of its grid values."""

    field: str
    value: Any

    def __str__(self) -> str:
        return f"{self.field}={format_value(self.value)}"


def _matches(value: Any, text: str) -> bool:
    """Whether the grid value `value` is what `text` spells (read with the value's own type)."""
    if value is None:
        return text.lower() in ("none", "")
    if isinstance(value, bool):
        return text.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    try:
        return type(value)(text) == value
    except (TypeError, ValueError):
        return False


def parse_baseline(text: str | None, grid: Mapping[str, Sequence[Any]]) -> Baseline | None:
    """`--baseline FIELD=VALUE` checked against the grid; UsageError unless FIELD is a grid field
    and VALUE one of its values. None -> None. 'hallucinations' is read as M."""
    if text is None:
        return None
    field, sep, value = text.partition("=")
    field = field.strip().replace("-", "_")
    field = compat.OPTION_ALIASES.get(field, field)
    value = value.strip()
    if not sep or field not in grid:
        raise UsageError(f"--baseline must be FIELD=VALUE with FIELD one of the swept fields "
                         f"({', '.join(grid)}), got {text!r}")
    for candidate in grid[field]:
        if _matches(candidate, value):
            return Baseline(field, candidate)
    raise UsageError(f"--baseline {text}: {value!r} is not a point of the grid ({field} = "
                     f"{','.join(format_value(v) for v in grid[field])})")


# ---------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Child:
    """One nested run: a point trained with one seed. cfg is complete (seed set)."""

    point: Point
    seed: int
    cfg: TrainConfig
    name: str


@dataclass(frozen=True)
class Plan:
    """What one sweep process runs.

    points: every point of the grid (all shards); mine: the points this shard runs (its share,
    plus the baseline partners of its share); children: mine x seeds, point-major;
    seeds: the replicate seeds, or (base.seed,) without --seeds; replicated: --seeds given.
    """

    base: TrainConfig
    grid: Mapping[str, Sequence[Any]]
    points: list[Point]
    mine: list[Point]
    children: list[Child]
    seeds: tuple[int, ...]
    replicated: bool
    baseline: Baseline | Point | None  # a Point: every point pairs with it (`plan_points`)
    shard: int
    shards: int


def baseline_partner(base: TrainConfig, point: Point, baseline: Baseline | Point) -> Point:
    """The point `point` is compared with: the same values except baseline.field =
    baseline.value, normalised (so any hallucinator's M = 0 partner is the ProtoNet point); a
    baseline Point is every point's partner."""
    if isinstance(baseline, Point):
        return baseline
    return normalise(base, point.with_value(baseline.field, baseline.value))


def is_baseline(base: TrainConfig, point: Point, baseline: Baseline | Point | None) -> bool:
    """Whether `point` is its own baseline partner (a baseline point)."""
    return baseline is not None and baseline_partner(base, point, baseline) == point


def shard_points(points: Sequence[Point], shard: int, shards: int) -> list[Point]:
    """The points with index % shards == shard: shards split points, never the seeds of one."""
    return [p for i, p in enumerate(points) if i % shards == shard]


MAX_RUN_NAME = 100  # the runs table cuts names short anyway; MLflow itself allows more


def method_label(cfg: TrainConfig) -> str:
    """`protonet` or `hallucinate-<hallucinator>`: what a run trains, as run names say it."""
    return f"hallucinate-{cfg.hallucinator}" if cfg.hallucinator else "protonet"


def sweep_run_name(plan: "Plan") -> str:
    """The parent run's name: method, grid axes and seeds, e.g.
    `sweep-hallucinate-calibrated-M0,10,50,100-5seeds` (at most MAX_RUN_NAME characters)."""
    method = "hallucinate" if "hallucinator" in plan.grid else method_label(plan.base)
    axes = "-".join(f"{field}{'' if _numeric(values) else '='}{','.join(map(str, values))}"
                    for field, values in plan.grid.items())
    name = f"sweep-{method}-{axes}" + (f"-{len(plan.seeds)}seeds" if plan.replicated else "")
    return name if len(name) <= MAX_RUN_NAME else name[:MAX_RUN_NAME - 1] + "~"


def child_run_name(child: "Child") -> str:
    """A child run's name: its method and point, e.g. `hallucinate-calibrated-M=10-seed0`, or
    `hallucinate-hallucinator=wang,M=10-seed0` where the point names the hallucinator
    (`child.name`, the point alone, stays the sweep's internal key)."""
    label = method_label(child.cfg)
    if child.cfg.hallucinator and "hallucinator=" in child.name:
        label = "hallucinate"
    return f"{label}-{child.name}"[:MAX_RUN_NAME]


def _numeric(values: Sequence[Any]) -> bool:
    """Whether every value of a grid axis is a number (booleans are not)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def child_name(point: Point, seed: int, replicated: bool) -> str:
    """`<point>-seed<k>` for a replicate, `<point>` otherwise (e.g. 'hallucinator=wang,M=10-seed3')."""
    return f"{point.name}-seed{seed}" if replicated else point.name


def plan_sweep(base: TrainConfig, grid: Mapping[str, Sequence[Any]], *, seeds: Sequence[int] | None = None,
               baseline: str | Baseline | None = None, shard: int = 0, shards: int = 1) -> Plan:
    """Check the sweep's options and list its children. Raises UsageError, before any run opens,
    for: a field that is not a training option, an empty value list, --seeds with a `seed` grid
    axis, a bad shard, and a --baseline that is not a point of the grid."""
    grid = {k: list(v) for k, v in grid.items()}
    if not grid:
        raise UsageError("a sweep needs at least one --param")
    unknown = [f for f in grid if f not in TrainConfig.__dataclass_fields__
               and not (f.partition(".")[0] in COMPONENT_AXES and "." in f)]
    if unknown:
        raise UsageError(f"cannot sweep over {unknown}: not a training option or a component setting")
    empty = [f for f, v in grid.items() if not v]
    if empty:
        raise UsageError(f"--param {empty[0]}: no values")
    if seeds is not None and "seed" in grid:
        raise UsageError("--seeds and --param seed=... cannot be combined: --seeds repeats every point "
                         "per seed and aggregates over them, --param seed makes seed a grid axis")
    if seeds is not None and not seeds:
        raise UsageError("--seeds needs at least one seed")
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if not 0 <= shard < shards:
        raise UsageError(f"--shard must be between 0 and {shards - 1}, got {shard}")
    if not isinstance(baseline, Baseline):
        baseline = parse_baseline(baseline, grid)
    points = expand_grid(base, grid)
    mine = shard_points(points, shard, shards)
    if not mine:
        raise UsageError(f"--shard {shard} of {shards} has no grid points (the grid has {len(points)})")
    if baseline is not None:
        partners = [baseline_partner(base, p, baseline) for p in mine]
        mine = list(dict.fromkeys([q for q in partners if q not in mine] + mine))
    replicated = seeds is not None
    seed_list = tuple(seeds) if seeds is not None else (base.seed,)
    children = []
    for point in mine:
        cfg = point_config(base, point)
        for s in seed_list:
            child_cfg = replace(cfg, seed=s) if replicated else cfg  # else: --seed, or a `seed` grid axis
            children.append(Child(point, child_cfg.seed, child_cfg, child_name(point, s, replicated)))
    return Plan(base, grid, points, mine, children, seed_list, replicated, baseline, shard, shards)


def plan_points(base: TrainConfig, points: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> Plan:
    """A replicated sweep over a list of points instead of a grid (`fsl tune --retest`: the best
    settings a search found), each paired seed by seed with `base` itself, the baseline point.
    A point gives values for some fields; `base` gives the rest."""
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    fields = list(dict.fromkeys(k for p in points for k in p))

    def point(values: Mapping[str, Any]) -> Point:
        return normalise(base, Point(tuple((f, values[f] if f in values else _base_value(base, f)) for f in fields)))

    baseline = point({})
    mine = list(dict.fromkeys([baseline, *map(point, points)]))
    grid = {f: list(dict.fromkeys(p.values[f] for p in mine)) for f in fields}
    children = [Child(p, s, replace(point_config(base, p), seed=s), child_name(p, s, True))
                for p in mine for s in seeds]
    return Plan(base, grid, mine, mine, children, tuple(seeds), True, baseline, 0, 1)


def _base_value(base: TrainConfig, field: str) -> Any:
    """`base`'s value of a field, or of a component setting its component's args set (None: the
    component's own default, or a component without that setting)."""
    axis, dot, setting = field.partition(".")
    if dot:
        return getattr(base, f"{axis}_args", {}).get(setting)
    return getattr(base, field)


def test_time_fields(cfg: TrainConfig) -> tuple[str, ...]:
    """The fields of `cfg` that do not change its trained weights: the head (`--head`, which acts
    at test time only) and, for a test-time hallucinator (`fsl.components.is_test_time`), M."""
    return ("head", "head_args") + (("M",) if is_test_time(cfg.hallucinator) and cfg.M else ())


def _trained_weights(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its test-time fields neutral: two children with the same one train the same model."""
    neutral = replace(cfg, head="prototype", head_args={})
    return replace(neutral, M=1) if "M" in test_time_fields(cfg) else neutral


def trained_twin(plan: Plan, child: Child) -> Child | None:
    """The child whose trained model `child` is tested from, or None if `child` trains itself.

    Children of one seed whose configs differ only in test-time fields (`test_time_fields`: the
    head; M for a test-time hallucinator, M > 0) train the same weights. Of them, the one with
    the largest M (its checkpoint was chosen, and early stopping decided, on val accuracy at that
    M), then the prototype head, then the first in plan order trains, and the others borrow its
    model. Only children of this plan (this shard) are considered.
    """
    if len(test_time_fields(child.cfg)) == 2 and child.cfg.head == "prototype" and not any(
            c.cfg.head != "prototype" for c in plan.children):
        return None  # nothing but the prototype head in the plan: the hallucinator rule alone decides
    same = [c for c in plan.children if c.seed == child.seed and bool(c.cfg.M) == bool(child.cfg.M)
            and _trained_weights(c.cfg) == _trained_weights(child.cfg)]
    if len(same) < 2:
        return None
    order = {c.name: i for i, c in enumerate(plan.children)}
    trainer = max(same, key=lambda c: (c.cfg.M if "M" in test_time_fields(c.cfg) else 0,
                                       c.cfg.head == "prototype", -order[c.name]))
    return None if trainer.name == child.name else trainer


def run_order(plan: Plan) -> list[Child]:
    """The children in the order to run them: those that train first, then those tested from a
    trained twin (plan order within each)."""
    return sorted(plan.children, key=lambda c: trained_twin(plan, c) is not None)


# ---------------------------------------------------------------------------------- aggregate
@dataclass(frozen=True)
class ChildResult:
    """A finished child: its run, its metrics (name -> value), and whether an earlier run
    with the same configuration was reused instead of training it again."""

    run_id: str | None  # None under the null tracker
    metrics: dict[str, float]
    reused: bool = False


def child_rows(plan: Plan, results: Mapping[str, ChildResult]) -> list[dict]:
    """One row per child (results keyed by child name): grid values, seed, run id, reused,
    test_acc, test_ci95 (over episodes), and the other metrics of CI_METRICS, MEAN_METRICS
    and halluc_*; a child missing from `results` has no row."""
    rows = []
    for child in plan.children:
        if child.name not in results:
            continue
        result = results[child.name]
        row: dict[str, Any] = {k: format_value(v) for k, v in child.point.items}
        row |= {"point": child.point.name, "seed": child.seed, "run_id": result.run_id, "reused": result.reused}
        for key in sorted(result.metrics):
            if child_metric(key):
                row[key] = result.metrics[key]
        rows.append(row)
    return rows


def _per_seed(plan: Plan, point: Point, results: Mapping[str, ChildResult], metric: str) -> dict[int, float]:
    out = {}
    for child in plan.children:
        if child.point == point and child.name in results and metric in results[child.name].metrics:
            out[child.seed] = results[child.name].metrics[metric]
    return out


def aggregate(plan: Plan, results: Mapping[str, ChildResult]) -> list[dict]:
    """One row per point of the plan, in plan order.

    Columns: the grid values; `point`; `seeds` ('0,1,2'); `n_seeds`; `test_acc` and
    `test_acc_ci95`: mean over seeds of each seed's mean test accuracy and the Student-t 95%
    half-width over seeds (NaN with one seed); the same for `test_acc_no_hallucination` when the
    children have it; the mean over seeds of best_val_acc and of every halluc_* diagnostic;
    and with a baseline: `baseline` (the partner point's name), `is_baseline`, `diff_vs_baseline`
    (mean of per-seed differences of test_acc, point minus partner), `diff_vs_baseline_ci95`
    (Student t over those differences) and `diff_excludes_0` (True/False; empty for baseline
    points, which are not compared with themselves). A child missing from `results` (a study
    cut short) is left out: `n_seeds` says how many a point has, and a difference pairs only
    the seeds both points have.
    """
    rows = []
    for point in plan.mine:
        row: dict[str, Any] = {k: format_value(v) for k, v in point.items}
        acc = _per_seed(plan, point, results, "test_acc")
        row |= {"point": point.name, "seeds": ",".join(map(str, sorted(acc))), "n_seeds": len(acc)}
        for metric in CI_METRICS:
            values = _per_seed(plan, point, results, metric)
            if values:
                interval = seed_ci(list(values.values()))
                row |= {metric: interval.mean, f"{metric}_ci95": interval.half}
        if plan.baseline is not None:
            partner = baseline_partner(plan.base, point, plan.baseline)
            row |= {"baseline": partner.name, "is_baseline": partner == point}
            partner_acc = _per_seed(plan, partner, results, "test_acc")
            common = sorted(acc.keys() & partner_acc.keys())
            if partner != point and common:
                diff = paired_difference({s: acc[s] for s in common}, {s: partner_acc[s] for s in common})
                row |= {"diff_vs_baseline": diff.mean, "diff_vs_baseline_ci95": diff.half,
                        "diff_excludes_0": diff.excludes_zero}
        extra = sorted({k for c in plan.children if c.point == point and c.name in results
                        for k in results[c.name].metrics if k in MEAN_METRICS or k.startswith("halluc_")})
        for metric in extra:
            found = list(_per_seed(plan, point, results, metric).values())
            row[metric] = math.fsum(found) / len(found)
        rows.append(row)
    return rows


def metric_key(name: str) -> str:
    """A point name as an MLflow metric-name part: '=' -> '-', ',' -> '_', and any character
    MLflow refuses (it allows letters, digits, '_', '-', '.', ' ') -> '_'.
    'hallucinator=wang,M=10' -> 'hallucinator-wang_M-10'."""
    return re.sub(r"[^\w.\- ]", "_", name.replace("=", "-").replace(",", "_"))


def parent_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """The aggregate as the parent run's metrics: '<column>/<point>' for test_acc,
    test_acc_ci95, diff_vs_baseline and diff_vs_baseline_ci95, and best_test_acc (the best mean
    test accuracy). NaN values (one seed) are left out. Whether a difference's CI excludes 0 is a
    tag (`parent_tags`): as a 0/1 metric it would be a chart, the first of the experiment's."""
    out: dict[str, float] = {}
    for row in rows:
        for column in ("test_acc", "test_acc_ci95", "diff_vs_baseline", "diff_vs_baseline_ci95"):
            value = row.get(column)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out[f"{column}/{metric_key(row['point'])}"] = float(value)
    if rows:
        out["best_test_acc"] = max(r["test_acc"] for r in rows)
    return out


def parent_tags(rows: Sequence[dict]) -> dict[str, str]:
    """`fsl.diff_excludes_0.<point>`: `yes` or `no` for each point paired with a baseline."""
    return {f"fsl.diff_excludes_0.{metric_key(row['point'])}": "yes" if row["diff_excludes_0"] else "no"
            for row in rows if row.get("diff_excludes_0") is not None}


def plot_axes(plan: Plan) -> tuple[str, list[str]]:
    """The plot's x field and the fields that tell lines apart: x is M when swept, else the
    baseline field, else the first numeric field, else the first field."""
    fields = list(plan.grid)
    numeric = [f for f in fields if _numeric(plan.grid[f])]
    if "M" in fields:
        x = "M"
    elif isinstance(plan.baseline, Baseline) and plan.baseline.field in numeric:
        x = plan.baseline.field
    else:
        x = numeric[0] if numeric else fields[0]
    return x, [f for f in fields if f != x]


def describe(row: dict, baseline: bool) -> str:
    """One line of the sweep's summary for a point."""
    text = f"{row['point']}: {row['test_acc']:.2f}"
    if not math.isnan(row.get("test_acc_ci95", float("nan"))):
        text += f" ± {row['test_acc_ci95']:.2f}"
    text += f" over {row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}"
    if baseline and not row.get("is_baseline", True):
        text += f"; vs {row['baseline']}: {row['diff_vs_baseline']:+.2f}"
        if not math.isnan(row["diff_vs_baseline_ci95"]):
            text += f" ± {row['diff_vs_baseline_ci95']:.2f}"
        text += " (CI excludes 0)" if row["diff_excludes_0"] else " (CI includes 0)"
    elif row.get("is_baseline"):
        text += " (baseline)"
    return text


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """Rows as CSV with the union of their keys as columns (first-seen order); returns path."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
