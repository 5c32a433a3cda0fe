"""`fsl tune`: a hyper-parameter search on Optuna. Every trial is a training run nested under the
study's parent run, and any number of workers, on one machine or many, work on one study.

The study lives in an Optuna RDB storage (`--storage`; beside a local SQLite tracking store by
default), not in MLflow's own `mlflow.optuna.MlflowStorage`. Why: an RDB storage has heartbeats
(a worker killed with SIGKILL has its trial failed by the next worker's check, and retried), its
trial numbers come from one database transaction (MlflowStorage numbers trials from a metric
history keyed by timestamps, which racing workers can make collide), a pruned trial stays pruned
(MlflowStorage maps PRUNED to KILLED and back, so a Ctrl-C'd trial would read back as pruned), and
fsl trains inside its own run for each trial instead of one that the storage makes beside it.
Optuna and MLflow both version their tables in `alembic_version`, so the study needs a database
of its own: a second SQLite file, or its own PostgreSQL database.

How one worker goes:
1. check everything (the space, the objective, each bound and choice against the data) before
   any run opens;
2. create the study, or join it (its search space must be this one);
3. open the study's parent run (the first worker makes it; the others resume it), and run trials
   while the study lacks finished ones (COMPLETE or PRUNED): a trial's slot is taken when it
   starts, so workers never run more than `--trials`; a worker that sees every slot taken waits,
   since a slot held by a dead worker comes free when that trial is failed and retried;
4. write the parent's summary (best trial, all trials as CSV, Optuna's plots); the worker that
   completes the study's last trial then registers the best model (`--register best`) and
   retests the best settings over seeds (`--retest K`, through `fsl sweep`'s machinery).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fsl.commands.cmd_train import run_training
from fsl.commands.options import Reporter, RunOptions, quietable
from fsl.commands.records import mlflow_runs, run_tags
from fsl.commands.run_identity import config_hash
from fsl.commands.training_setup import prepare_training
from fsl.config import TrainConfig
from fsl.errors import FslError, RunStopped, UsageError
from fsl.processes import interruptible
from fsl.search_space import SearchSpace
from fsl.tracking.protocol import Runs
from fsl.tracking.stores import mask

# What a search may select on: validation figures only. A test figure chosen on is no longer a
# test of the chosen settings, so selection on one is refused (`check_objective`).
OBJECTIVES = ("best_val_acc", "pretrain_best_val_acc")
PRUNERS = ("median", "hyperband", "none")
JOIN_WAIT = 120.0   # seconds a joining worker waits for the creator to describe a new study
POLL = 1.0          # seconds between checks while every slot is taken by running trials
MAX_RETRY = 2       # times a trial whose worker died is run again
STORAGE_ATTEMPTS = 4


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs, besides the training configuration and the space."""

    study: str | None = None         # None: named from the space and the base configuration
    storage: str | None = None       # None: `<tracking store>.optuna.db` beside a local SQLite store
    trials: int | None = 20          # finished (COMPLETE or PRUNED) trials the study wants, all workers together
    timeout: float | None = None     # seconds this worker starts trials for
    objective: str = "best_val_acc"
    sampler_seed: int = 0
    pruner: str = "median"
    heartbeat: float = 10.0          # seconds between a trial's heartbeats; 3 missed fail it
    retest: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    register: str = "none"           # none | best


def check_objective(name: str) -> str:
    if name.startswith("test") or "_test" in name:
        raise UsageError(f"--objective {name}: a search selects on validation, never on a test figure (the "
                         f"test would then no longer test the chosen settings); use one of {', '.join(OBJECTIVES)}")
    if name not in OBJECTIVES:
        raise UsageError(f"--objective {name}: not a validation figure a trial logs; "
                         f"choose from {', '.join(OBJECTIVES)}")
    return name


def check_settings(base: TrainConfig, space: SearchSpace, settings: TuneSettings) -> None:
    """UsageError, before any work, for settings a search cannot run with."""
    check_objective(settings.objective)
    if settings.trials is not None and settings.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {settings.trials}")
    if settings.trials is None and settings.timeout is None:
        raise UsageError("give --trials, --timeout or both: a search needs a budget")
    if settings.timeout is not None and settings.timeout <= 0:
        raise UsageError(f"--timeout must be above 0 seconds, got {settings.timeout}")
    if not space.searched:
        raise UsageError("fsl tune needs at least one searched --param (a range LOW..HIGH or choices A,B)")
    if settings.pruner not in PRUNERS:
        raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got {settings.pruner!r}")
    if settings.heartbeat <= 0:
        raise UsageError(f"--heartbeat must be above 0 seconds, got {settings.heartbeat}")
    if settings.retest < 0:
        raise UsageError(f"--retest must be 0 or more, got {settings.retest}")
    if settings.retest and not settings.seeds:
        raise UsageError("--retest needs --seeds, e.g. 0,1,2")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("fsl tune runs one trial per process: start it without torchrun (start several "
                         "workers instead)")
    searched = {a.name for a in space.searched}
    hallucination = sorted(n for n in searched if n in ("M", "hallucinator") or n.startswith("hallucinator."))
    if hallucination and base.hallucinator is None:
        raise UsageError(f"--param {hallucination[0]}: a ProtoNet search has no hallucinator; search it with "
                         f"--method hallucinate")
    if "shots" in searched and base.test_shots is None:
        raise UsageError("a search over shots needs a fixed --test-shots: validation uses the training shots "
                         "otherwise, so best_val_acc would not compare across trials")
    if settings.objective == "pretrain_best_val_acc" and not base.pretrain_epochs and "pretrain_epochs" not in searched:
        raise UsageError("--objective pretrain_best_val_acc needs pre-training (--pretrain-epochs)")


def study_name(base: TrainConfig, space: SearchSpace, objective: str) -> str:
    """The default study name: the same command (configuration, space, objective) joins the same study."""
    return f"tune-{base.method}-{config_hash({'base': repr(base), 'space': space.signature(), 'o': objective})[:8]}"


def default_storage(tracking_uri: str) -> str:
    """The study's storage beside a local SQLite tracking store: `sqlite:///x/mlflow.db` ->
    `sqlite:///x/mlflow.optuna.db`. Any other store needs --storage (see the module's docstring)."""
    if not tracking_uri.startswith("sqlite:///"):
        raise UsageError(f"the tracking store {mask(tracking_uri)} is not a local SQLite file: give the "
                         f"study a database of its own with --storage (e.g. postgresql://host/fsl_optuna, or "
                         f"sqlite:///study.db on one machine)")
    path = tracking_uri.removeprefix("sqlite:///")
    return "sqlite:///" + str(Path(path).with_suffix("")) + ".optuna.db"


class _Surplus(Exception):
    """A trial started when every slot of --trials was already taken: given back unrun."""


@quietable
def run_tune(base: TrainConfig, space: SearchSpace, settings: TuneSettings = TuneSettings(),
             options: RunOptions = RunOptions(), reporter: Reporter = Reporter(),
             runs: Runs | None = None) -> dict[str, Any]:
    """Search `space` over training runs of `base` with Optuna (see the module's docstring).
    Returns what this worker saw at its end: the study's name, its best trial's number, value,
    params and run id, and the count of trials by state. Ctrl-C and SIGTERM end the worker's
    trial and the parent run KILLED; a study storage that stops answering is one line (FslError)."""
    check_settings(base, space, settings)
    if settings.register == "best" and options.registered_model_name:
        from fsl.tracking.model_registry import validate_model_name

        validate_model_name(options.registered_model_name)
    for corner in space.corners():  # every bound and choice, against the data, before any run opens
        prepare_training(base.with_values(corner), None)
    runs = runs or mlflow_runs()
    runs.check_store()
    storage_url = settings.storage or default_storage(_tracking_uri())
    with interruptible():
        try:
            return _search(base, space, settings, options, reporter, runs, storage_url)
        except Exception as exc:
            if _is_storage_error(exc):
                from fsl.tracking.runs import failure_line

                raise FslError(f"study storage {mask(storage_url)} stopped answering "
                               f"({failure_line(exc, storage_url)})") from None
            raise


def _search(base: TrainConfig, space: SearchSpace, settings: TuneSettings, options: RunOptions,
            reporter: Reporter, runs: Runs, storage_url: str) -> dict[str, Any]:
    """`run_tune` once everything is checked: join or create the study, run trials, summarise."""
    import optuna

    name = settings.study or study_name(base, space, settings.objective)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fsl reports trials itself, one line each
    # heartbeats, fail_stale_trials and the matplotlib plots are "experimental" since Optuna 2.x
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = _storage(optuna, storage_url, settings.heartbeat)
    study, created, sampler_seed = _create_or_join(optuna, storage, name, space, settings)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    reporter.echo(f"study {name} ({'new' if created else 'joined'}; {mask(storage_url)}): "
                  f"{space.describe()}; maximising {settings.objective}; "
                  f"{settings.trials if settings.trials else 'unlimited'} trials"
                  f"{f', {settings.timeout:g} s' if settings.timeout else ''}; sampler seed {sampler_seed}")
    parent_id = None if created else _wait_for_attr(study, "fsl.parent_run_id", missing=None)
    # a worker that joins keeps the creator's host and pid on the parent (fsl's reaping reads them)
    tags = ({} if parent_id else run_tags("tune")) | {"fsl.study": name, "fsl.study_storage": mask(storage_url)}
    ran: list[int] = []  # the trials this worker ran
    with runs.open(base.experiment, run_name=options.run_name or name, run_id=parent_id, tags=tags,
                   system_metrics=False) as parent:
        if not parent_id:  # new, or its creator stopped before naming its parent run: this one is it
            study.set_user_attr("fsl.parent_run_id", parent.run_id)
            parent.log_params({"tune_space": space.describe()[:6000], "tune_objective": settings.objective,
                               "tune_trials": settings.trials or "", "tune_pruner": settings.pruner,
                               "tune_sampler": "TPE", "tune_sampler_seed": sampler_seed, "tune_study": name})
        trial_options = replace(options, nested=True, register=False, test=False, tsne=False, system_metrics=False,
                                resume=None, keep_checkpoint=None)
        objective = _objective(optuna, base, space, settings, study, trial_options, reporter, worker, sampler_seed,
                               ran)
        finished_before = _work(optuna, study, objective, settings)
        summary = _summarise(study, space, settings, parent, reporter)
    finisher = finished_before or _is_finisher(study, settings, worker, ran)
    if finisher and summary.get("best_run_id"):
        if settings.register == "best":
            _register_best(summary["best_run_id"], options, reporter)
        if settings.retest:
            _retest(base, space, study, settings, options, reporter, runs, parent.run_id)
    if parent.run_id:
        reporter.echo(runs.link(parent.run_id))
    return summary


def _work(optuna, study, objective, settings: TuneSettings) -> bool:
    """Run trials while the study lacks finished ones and --timeout allows (the module's docstring,
    3). Whether the study had every trial it wants before this worker looked (asked again)."""
    started, first = time.monotonic(), True
    while True:
        optuna.storages.fail_stale_trials(study)
        counts = _counts(study)
        # a WAITING trial (a dead worker's, to run again) is a free slot: `optimize` takes it first
        done, busy = counts["COMPLETE"] + counts["PRUNED"], counts["RUNNING"]
        if (settings.trials and done >= settings.trials) or \
                (settings.timeout and time.monotonic() - started >= settings.timeout):
            return first and settings.trials is not None and done >= settings.trials
        first = False
        if settings.trials and done + busy >= settings.trials:
            time.sleep(POLL)  # every slot taken by running trials: one comes free if its worker died
            continue
        study.optimize(objective, n_trials=1, catch=(_Surplus, FslError))  # a failed trial: the study goes on


def _tracking_uri() -> str:
    from fsl.tracking.runs import tracking_uri

    return tracking_uri()


def _storage(optuna, url: str, heartbeat: float):
    """Optuna's RDB storage with heartbeats: a trial silent for 3 heartbeats is failed by the next
    worker's check (`fail_stale_trials`), its run marked FAILED and the trial retried."""
    from fsl.tracking.runs import failure_line

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=max(1, round(heartbeat)),
                                              grace_period=max(3, round(3 * heartbeat)),
                                              heartbeat_stale_trial_callback=_on_stale_trial)
        except Exception as exc:  # two workers creating a new storage's tables at once: the later one retries
            if attempt == STORAGE_ATTEMPTS - 1:
                raise FslError(f"study storage {mask(url)} cannot be opened "
                               f"({failure_line(exc, url)})") from None
            time.sleep(1 + attempt)


def _on_stale_trial(study, trial) -> None:
    """A trial whose worker stopped answering: its run FAILED (it would stay RUNNING: fsl's own
    reaping knows only this host's processes), then a retry of its params (Optuna's callback)."""
    import optuna

    run_id = trial.user_attrs.get("fsl.run_id")
    if run_id:
        from fsl.tracking.runs import tag_run

        tag_run(run_id, {"fsl.trial_state": "FAIL", "fsl.failure": "its worker stopped answering (no heartbeat); "
                         "the trial is run again"}, status="FAILED")
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def _create_or_join(optuna, storage, name: str, space: SearchSpace, settings: TuneSettings):
    """(study, created, sampler seed): a new study described by this space, or the existing one if
    it searches this space (UsageError naming both spaces otherwise). TPE samples with
    --sampler-seed in the worker that creates the study, so a one-worker search repeats; a worker
    that joins draws its own seed (the same seed and history would propose the same settings)."""
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(),
              "none": lambda: optuna.pruners.NopPruner()}[settings.pruner]()
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                                    sampler=optuna.samplers.TPESampler(seed=settings.sampler_seed))
    except optuna.exceptions.DuplicatedStudyError:
        seed = int.from_bytes(os.urandom(4), "little")
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.TPESampler(seed=seed))
        theirs = _wait_for_attr(study, "fsl.space", missing=space.signature())
        if "fsl.space" not in study.user_attrs:  # its creator stopped before describing it
            study.set_user_attr("fsl.objective", settings.objective)
            study.set_user_attr("fsl.space", theirs)
        if theirs != space.signature() or study.user_attrs.get("fsl.objective") != settings.objective:
            import json

            raise UsageError(f"--study {name} exists with another search space: it searches "
                             f"{', '.join(json.loads(theirs))} for {study.user_attrs.get('fsl.objective')}; "
                             f"this command: {space.describe()} for {settings.objective}") from None
        return study, False, seed
    study.set_user_attr("fsl.objective", settings.objective)
    study.set_user_attr("fsl.space", space.signature())
    return study, True, settings.sampler_seed


def _wait_for_attr(study, key: str, missing: Any = None) -> Any:
    """A study attribute its creator sets just after creating it (a worker joining at the same
    moment waits); `missing` after JOIN_WAIT seconds (the creator stopped before setting it)."""
    deadline = time.monotonic() + JOIN_WAIT
    while True:
        attrs = study.user_attrs
        if key in attrs:
            return attrs[key]
        if time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def _counts(study) -> dict[str, int]:
    """Trials by state name (surplus trials, given back unrun, are not counted)."""
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
    for trial in study.get_trials(deepcopy=False):
        if not trial.user_attrs.get("fsl.surplus"):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _takes_a_slot(study, trial, trials: int | None) -> bool:
    """Whether `trial` (just started) fits in --trials: the finished trials and the running ones
    numbered before it leave it a slot. Two workers starting the last slot's trial at once: the
    lower number runs, the other is given back unrun."""
    if not trials:
        return True
    ahead = 0
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or other.user_attrs.get("fsl.surplus"):
            continue
        running_before = other.state.name == "RUNNING" and other.number < trial.number
        if other.state.name in ("COMPLETE", "PRUNED") or running_before:
            ahead += 1
    return ahead < trials


def _objective(optuna, base: TrainConfig, space: SearchSpace, settings: TuneSettings, study, options: RunOptions,
               reporter: Reporter, worker: str, sampler_seed: int, ran: list):
    """The function Optuna calls for each trial: train the trial's configuration in a nested run,
    report its validation figures to the pruner, return the objective."""
    from fsl.tracking.runs import tag_run

    first_episodic_step = _first_episodic_step(base, space)

    def objective(trial) -> float:
        if not _takes_a_slot(study, trial, settings.trials):
            trial.set_user_attr("fsl.surplus", True)
            raise _Surplus()
        ran.append(trial.number)
        trial.set_user_attr("fsl.worker", worker)
        values = {axis.name: axis.suggest(trial) for axis in space.axes}
        cfg = base.with_values(values)
        tried = ",".join(f"{a.name}={_short(values[a.name])}" for a in space.searched)
        run_name = f"trial-{trial.number}-{tried}"[:100]

        def on_validation(metric: str, epoch: int, value: float) -> None:
            trial.report(value, epoch + (0 if metric.startswith("pretrain") else first_episodic_step))
            if trial.should_prune():
                raise RunStopped(f"pruned after {metric} {value:.2f} at epoch {epoch}", "KILLED",
                                 {"fsl.trial_state": "PRUNED"})

        tags = {"fsl.study": study.study_name, "fsl.trial": str(trial.number), "fsl.trial_state": "RUNNING",
                "fsl.sampler_seed": str(sampler_seed), "fsl.worker": worker}
        def on_open(run_id: str | None) -> None:
            if run_id:
                trial.set_user_attr("fsl.run_id", run_id)  # the run a dead worker's trial leaves RUNNING

        trial_options = replace(options, run_name=run_name, tags=tuple(tags.items()), on_validation=on_validation,
                                on_open=on_open)
        reporter.echo(f"--- trial {trial.number}: {tried}")
        try:
            summary = run_training(cfg, trial_options, reporter)
            if settings.objective not in summary.metrics:
                raise FslError(f"the trial logged no {settings.objective} (no pre-training?)")
        except RunStopped as stopped:
            reporter.echo(f"trial {trial.number}: {stopped}")
            raise optuna.TrialPruned(str(stopped)) from None
        except BaseException as exc:  # a failed trial (FslError: the study goes on), Ctrl-C, a bug
            if isinstance(exc, FslError):
                reporter.echo(f"trial {trial.number} failed: {exc}")
            _tag_failed(trial.user_attrs.get("fsl.run_id"))
            raise
        value = summary.metrics[settings.objective]
        if summary.run_id:
            tag_run(summary.run_id, {"fsl.trial_state": "COMPLETE"})
        reporter.echo(f"trial {trial.number}: {settings.objective} {value:.2f}")
        return value

    return objective


def _first_episodic_step(base: TrainConfig, space: SearchSpace) -> int:
    """The pruner compares trials at one step: pre-training epoch e is step e, episodic epoch e is
    step P + e, P the most pre-training epochs any trial has, so the phases never share a step and
    Hyperband's budget counts epochs from 1."""
    bounds = [a.values for a in space.axes if a.name == "pretrain_epochs"]
    return max([base.pretrain_epochs, *(max(v) for v in bounds)])


def _tag_failed(run_id: str | None) -> None:
    """`fsl.trial_state` FAIL on a trial's run, where it has one and the store answers."""
    from fsl.tracking.runs import tag_run

    if run_id:
        try:
            tag_run(run_id, {"fsl.trial_state": "FAIL"})
        except Exception:  # the store is down: the run's status says FAILED or KILLED anyway
            pass


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _trial_rows(study, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        state = "SURPLUS" if trial.user_attrs.get("fsl.surplus") else trial.state.name
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        rows.append({"number": trial.number, "state": state, "value": trial.value}
                    | {a.name: trial.params.get(a.name) for a in space.searched}
                    | {"run_id": trial.user_attrs.get("fsl.run_id"), "worker": trial.user_attrs.get("fsl.worker"),
                       "retry_of": trial.system_attrs.get("failed_trial"), "seconds": seconds})
    return rows


def _summarise(study, space: SearchSpace, settings: TuneSettings, parent, reporter: Reporter) -> dict[str, Any]:
    """The parent run's summary, from the study as it stands: best trial (tags and metric), a CSV
    of all trials, Optuna's optimisation history and parameter importances (matplotlib)."""
    from fsl.sweeps import write_csv

    counts = _counts(study)
    summary: dict[str, Any] = {"study": study.study_name, "counts": counts}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    with tempfile.TemporaryDirectory(prefix="fsl-tune-") as folder:
        out = Path(folder)
        parent.log_artifact(write_csv(_trial_rows(study, space), out / "trials.csv"))
        for path in _plots(study, out):
            parent.log_artifact(path)
    parent.log_metrics({f"trials_{state.lower()}": float(n) for state, n in counts.items()})
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        summary |= {"best_trial": best.number, "best_value": best.value, "best_params": dict(best.params),
                    "best_run_id": best.user_attrs.get("fsl.run_id")}
        parent.log_metrics({settings.objective: best.value})  # the best trial's
        parent.set_tags({"fsl.best_trial": str(best.number), "fsl.best_run": str(summary["best_run_id"])}
                        | {f"fsl.best.{k}": str(v) for k, v in best.params.items()})
        parent.set_description(f"best of {counts['COMPLETE']} trials ({counts['PRUNED']} pruned): trial {best.number}, "
                               f"{settings.objective} {best.value:.2f} with "
                               + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
        reporter.echo(f"best trial {best.number}: {settings.objective} {best.value:.2f} with "
                      + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    reporter.echo("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n))
    return summary


def _plots(study, out: Path) -> list[Path]:
    """Optuna's optimisation history and (with two finished trials that differ) parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    paths = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    drawings: list[tuple[str, Any]] = [("optimization_history.png", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2 and any(len({str(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        drawings.append(("param_importances.png", optuna_plots.plot_param_importances))
    for filename, draw in drawings:
        try:
            axes = draw(study)
        except (ValueError, RuntimeError):  # importances of a degenerate history: no plot, not an error
            continue
        figure: Any = axes.figure
        figure.tight_layout()
        figure.savefig(out / filename, dpi=110)
        plt.close(figure)
        paths.append(out / filename)
    return paths


def _is_finisher(study, settings: TuneSettings, worker: str, ran: list) -> bool:
    """Whether this worker registers and retests: the one whose trial finished the study last
    (with --trials), or, with --timeout alone, every worker for itself. (A worker that found the
    study finished when it started, asked again, does too: `_work` says so.)"""
    if not settings.trials:
        return True
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")
                and not t.user_attrs.get("fsl.surplus")]
    if len(finished) < settings.trials or not ran:
        return False  # stopped early (--timeout), or waited while others ran the last trials
    last = max(finished, key=lambda t: (t.datetime_complete, t.number))
    return last.user_attrs.get("fsl.worker") == worker


def _register_best(run_id: str, options: RunOptions, reporter: Reporter) -> None:
    """`--register best`: the best trial's model, registered as `fsl register` registers a run."""
    from fsl.commands.cmd_register import register_run
    from fsl.tracking.protocol import MODEL_TAG
    from fsl.tracking.runs import get_run

    if get_run(run_id).data.tags.get(MODEL_TAG, "not registered") != "not registered":
        return  # registered already (the study asked again)
    register_run(run_id, options.registered_model_name, False, reporter)


def _retest(base: TrainConfig, space: SearchSpace, study, settings: TuneSettings, options: RunOptions,
            reporter: Reporter, runs: Runs, parent_id: str | None) -> None:
    """`--retest K`: the K best settings trained again over --seeds and tested, each paired seed by
    seed with the base configuration (the options without the searched values), as one sweep."""
    from fsl import sweeps
    from fsl.commands.cmd_sweep import run_sweep

    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: (-t.value, t.number))[:settings.retest]
    points = [dict(t.params) for t in complete]
    plan = sweeps.plan_points(base.with_values(space.fixed_values()), points, list(settings.seeds))
    reporter.echo(f"retesting the {len(points)} best settings over seeds {','.join(map(str, settings.seeds))}, "
                  f"paired with the base configuration")
    run_sweep(base, {}, replace(options, run_name=f"retest-{study.study_name}", registered_model_name=None),
              reporter, plan=plan, register="none", runs=runs, tags={"fsl.study": study.study_name})
    if parent_id:
        from fsl.tracking.runs import tag_run

        tag_run(parent_id, {"fsl.retested": "yes"})


def _is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: Optuna wraps the driver's errors) says the database is unreachable."""
    import optuna
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
                             sqlalchemy.exc.InterfaceError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


