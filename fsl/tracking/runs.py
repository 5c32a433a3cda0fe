"""MLflow runs: open, log and end them; find stale and unfinished ones; guard the store.

A `Tracker` wraps one run. It logs params without clashing with what `mlflow run` already
logged, batches metric series, and `MlflowRuns.open` ends the run FAILED or KILLED when its block
raises, so no run is left RUNNING by an error. `fsl.tracking.null` has the same surface and
records nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from fsl.errors import FslError, RunStopped, UsageError
from fsl.processes import signals_held
from fsl.tracking import stores

BATCH = 1000  # MLflow's limit of metrics per log_batch call


def _quiet_mlflow() -> None:
    """Keep stderr for what a user can act on. MLflow warns on every run about things fsl has
    decided deliberately (pickled models, see the README; no type hints or input example on the
    serving model) and colours the warnings with ANSI codes; its system-metrics lines stay,
    since the user turned those on."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(type hint|input example|input_example)", category=UserWarning)
    for name in ("mlflow.pytorch", "mlflow.pyfunc", "mlflow.models.model", "mlflow.tracking._model_registry"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A database store that stops answering: MLflow logs the driver's traceback at ERROR before it
    # raises; fsl reports the failure once, in one line, naming the store (`MlflowRuns.open`).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


_quiet_mlflow()
UNFINISHED = ("RUNNING", "KILLED", "FAILED")
# Seconds between system-metric samples: MLflow's default (10 s, logged in batches of 1) would
# leave a one-minute run with a handful of points; 2 s costs well under 1% of a core.
SYSTEM_METRICS_INTERVAL = 2
# MLflow 3.14-3.17's UI chooses an experiment's view from the URL's `workflowType` parameter,
# else the browser's local storage, else GenAI; it does not read the `mlflow.experimentKind`
# tag (a feature flag compiled in bypasses it), so fsl sets no such tag and links with this.
TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
# The runs table's columns. MLflow 3.17 has no documented way to choose them; its UI restores a
# "shared view" from the experiment tag `mlflow.sharedViewState.<key>` (plain JSON of the
# table's UI state) when the address has `viewStateShareKey=<key>`. That is internal to MLflow
# and may change; the README says how to pick the columns by hand. Column ids are
# `<metrics|params|attributes>.` + the name in backquotes.
VIEW_KEY = "fsl-results"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
# The first two are tags that people read (`fsl.result`: the test accuracy ± CI rounded, which
# the table cannot do for a metric; `fsl.model`: the registered version and whether it is
# champion), so that the table answers "which run is best, what did it score, which model is
# champion" without a click; the raw metrics follow, and the table is sorted by `test_acc`.
RESULT_COLUMNS = ["tags.`fsl.result`", "tags.`fsl.model`", "metrics.`test_acc`", "metrics.`test_ci95`",
                  "metrics.`best_val_acc`", "params.`M`", "params.`hallucinator`", "params.`shots`",
                  "params.`encoder`", "attributes.`Models`", "attributes.`Dataset`"]
# The experiment's chart view draws its "primary metric" first (an experiment tag the UI reads):
# the validation curve, not a single-value bar chart. The run page orders charts by name.
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
RUN_NAME_COLUMN = "attributes.`Run Name`"
# The best run first (`orderByKey` / `orderByAsc`, restored with the columns); widths so that a
# metric reads in full: the table shows every digit MLflow stores and cannot round.
RESULTS_VIEW = {"selectedColumns": RESULT_COLUMNS, "columnOrder": [RUN_NAME_COLUMN, *RESULT_COLUMNS],
                "columnWidths": {RUN_NAME_COLUMN: 300, "tags.`fsl.result`": 130, "tags.`fsl.model`": 250},
                "orderByKey": "metrics.`test_acc`", "orderByAsc": False}
DESCRIPTION_TAG = "mlflow.note.content"  # the description of a run or an experiment, as the UI shows it


class Tracker:
    def __init__(self, run_id: str, client: MlflowClient) -> None:
        self.run_id = run_id
        self.client = client

    def log_params(self, params: dict[str, Any]) -> None:
        """Log each key not logged yet. Under `mlflow run` the entry point's parameters are
        already there (as the user typed them); logging them again with another spelling of the
        same value ("1e-3" vs "0.001") would raise "Changing param values is not allowed"."""
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v) for k, v in params.items() if k not in existing}
        items = list(fresh.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start:start + 100]), run_id=self.run_id)

    def logged_metric_keys(self) -> set[str]:
        """The metrics this run already has (a resumed run must not log its test twice)."""
        return set(self.client.get_run(self.run_id).data.metrics)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_description(self, text: str) -> None:
        """The run's description, one line that the run page shows first."""
        self.set_tags({DESCRIPTION_TAG: text})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._log_batch([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None:
        """One metric per value (step = index): `test_episode_acc` in a few calls, not 600."""
        now = int(time.time() * 1000)
        self._log_batch([Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)])

    def _log_batch(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), BATCH):
            _retry_locked(lambda: self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model_input(self, model_id: str) -> None:
        """A logged model as an input of this run (an evaluation): the run page links to it."""
        self.client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])

    def log_dataset(self, dataset: dict[str, Any], context: str) -> None:
        """An MLflow dataset input (shown in the run's Datasets section).

        dataset: {"name", "digest", "source", "profile"}; source and profile are JSON-able. The
        entity is built directly: MLflow's ready-made dataset classes drop a custom profile.
        """
        entity = DatasetEntity(name=dataset["name"], digest=dataset["digest"], source_type="fsl",
                               source=json.dumps(dataset["source"], sort_keys=True),
                               profile=json.dumps(dataset["profile"], sort_keys=True))
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])


def _retry_locked(call, attempts: int = 8) -> None:
    """SQLite allows one writer: a concurrent run's write can raise "database is locked".
    Retry with backoff instead of losing the metrics."""
    for attempt in range(attempts):
        try:
            return call()
        except mlflow.exceptions.MlflowException as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


@dataclass(frozen=True)
class RunRecord:
    """What resuming needs to know of a past run."""

    run_id: str
    status: str
    host: str | None
    pid: str | None
    config_hash: str | None
    params: dict[str, str]


class MlflowRuns:
    """The tracking store as fsl's commands use it."""

    def check_store(self) -> None:
        """Fail in seconds, before any work, in one line naming the store (its password masked),
        when runs could not be recorded (`fsl.tracking.stores.check`): a tracking server or
        database that does not answer (MLflow's own client retries for minutes), a database driver
        that is not installed, or a local store that is not a database or cannot be written."""
        stores.check(mlflow.get_tracking_uri())

    def fail_stale_runs(self, experiment: str, keep: str | None = None, alive=None) -> list[str]:
        """Mark FAILED the RUNNING runs of this host whose process is gone (a kill -9 or a crash
        leaves them RUNNING forever; sweep parents included), except `keep`, the run being
        resumed. `alive(host, pid)` says True/False/None (unknown: another host)."""
        client = locked_client()
        stale = []
        for run in _search(client, experiment, "attributes.status = 'RUNNING'"):
            tags = run.data.tags
            if run.info.run_id != keep and alive(tags.get("fsl.host"), tags.get("fsl.pid")) is False:
                client.set_terminated(run.info.run_id, "FAILED")
                client.set_tag(run.info.run_id, "fsl.failure", "process gone while RUNNING; marked FAILED")
                stale.append(run.info.run_id)
        return stale

    def unfinished_runs(self, experiment: str) -> list[RunRecord]:
        """fsl training runs of the experiment that did not finish (RUNNING, KILLED, FAILED), newest first."""
        runs = _search(locked_client(), experiment, "tags.`fsl.config_hash` LIKE '%'",
                       order_by=["attributes.start_time DESC"])  # MLflow's filters have no OR
        # a pruned trial of a search stopped on purpose: not a run to resume
        return [_record(r) for r in runs if r.info.status in UNFINISHED
                and r.data.tags.get("fsl.trial_state") != "PRUNED"]

    def find_finished(self, experiment: str, config_hash: str) -> tuple[str, dict[str, float]] | None:
        """The newest FINISHED run of this configuration (`fsl.config_hash` tag) that has a
        `test_acc`, as (run id, its metrics), or None: a sweep reuses it instead of training again."""
        runs = _search(locked_client(), experiment, f"attributes.status = 'FINISHED' and "
                       f"tags.`fsl.config_hash` = '{config_hash}'", order_by=["attributes.start_time DESC"])
        for run in runs:
            if "test_acc" in run.data.metrics:
                return run.info.run_id, dict(run.data.metrics)
        return None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        return dict(get_run(run_id).data.metrics)

    def run_record(self, run_id: str) -> RunRecord:
        return _record(get_run(run_id))

    def best_checkpoint(self, run_id: str, folder: Path) -> Path:
        """The run's `checkpoints/best.pt` artifact, downloaded into `folder`."""
        try:
            return download(f"runs:/{run_id}/checkpoints/best.pt", folder)
        except mlflow.exceptions.MlflowException as exc:
            raise UsageError(f"run {run_id}: it has no checkpoints/best.pt ({exc.message})") from None

    def link(self, run_id: str | None) -> str:
        """The run's name and its UI address (`run_link`)."""
        return run_link(run_id) if run_id else "run not tracked"

    @contextlib.contextmanager
    def open(self, experiment: str, run_name: str | None = None, nested: bool = False,
             tags: dict[str, str] | None = None, run_id: str | None = None,
             system_metrics: bool = False) -> Iterator[Tracker]:
        """Open a run: the one `mlflow run` made (MLFLOW_RUN_ID) without calling set_experiment,
        `run_id` (to resume it, whatever its status), or a new one named `run_name`.

        `system_metrics` samples CPU, memory (and GPU, with nvidia-ml-py) every
        SYSTEM_METRICS_INTERVAL seconds. An exception inside the block ends the run FAILED
        (KILLED for Ctrl-C or SIGTERM) and propagates; a normal exit ends it FINISHED.
        """
        inherited = os.environ.get("MLFLOW_RUN_ID") if not nested else None
        if system_metrics:
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)
            mlflow.set_system_metrics_samples_before_logging(1)
        with store_lock():
            if not (run_id or inherited):
                mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_id=run_id or inherited, run_name=None if run_id or inherited else run_name,
                               nested=nested, log_system_metrics=system_metrics)
        if not nested:  # spent (or passed over for `run_id`): MLflow would resume it as the next nested run
            os.environ.pop("MLFLOW_RUN_ID", None)
        tracker = Tracker(run.info.run_id, MlflowClient())
        if inherited and not run_id and run_name:
            tags = (tags or {}) | {"mlflow.runName": run_name}  # `mlflow run` named it at random
        try:  # from here on, an error ends the run FAILED (KILLED) instead of leaving it RUNNING
            _tag_experiment(tracker.client, run.info.experiment_id)
            if tags:
                tracker.set_tags(tags)
            yield tracker
        except RunStopped as stopped:  # on purpose (a pruned trial): its status and tags, no traceback
            with signals_held():
                tracker.set_tags(stopped.tags)
                _end_run(stopped.status)
            raise
        except KeyboardInterrupt:
            # `mlflow run` answers Ctrl-C with a SIGTERM to this process: the run is ended KILLED
            # with further signals held off, and, since `mlflow run` then marks it FAILED whatever
            # it ended with, a watcher puts KILLED back once `mlflow run` has exited.
            with signals_held():
                _end_run(RunStatus.to_string(RunStatus.KILLED))
                if inherited and not run_id:
                    from fsl.tracking import after_project_run

                    after_project_run.start(tracker.run_id, "KILLED")
            raise
        except BaseException as exc:
            if not stores.is_down(exc):
                with signals_held():
                    mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
                raise
            raise _failed_with_the_store(exc, tracker.run_id) from None
        else:
            mlflow.end_run()


def _failed_with_the_store(exc: BaseException, run_id: str) -> FslError:
    """The store stopped answering inside a run: end the run FAILED once it answers again, for at
    most STORE_RECOVERY seconds; after that the next fsl command on this host marks it FAILED (its
    process is gone). The error to raise: one line, never the password, not the driver's traceback."""
    uri = mlflow.get_tracking_uri()
    started = time.monotonic()
    ended = stores.wait_until_up(uri, STORE_RECOVERY) and _end_run(
        RunStatus.to_string(RunStatus.FAILED), retry_for=STORE_RECOVERY - (time.monotonic() - started))
    then = "the run is marked FAILED" if ended else (
        "the run stays RUNNING until the next fsl command on this host marks it FAILED "
        "(or `--resume` continues it)")
    return FslError(f"tracking store {stores.mask(uri)} stopped answering during run {run_id} "
                    f"({failure_line(exc, uri)}); {then}")


def _tag_experiment(client: MlflowClient, experiment_id: str) -> None:
    """The experiment's results view, primary metric and description (`mlflow ui` reads them)."""
    experiment_tags = {VIEW_TAG: json.dumps(RESULTS_VIEW), PRIMARY_METRIC_TAG: "val_acc",
                       DESCRIPTION_TAG: experiment_description(experiment_id)}
    for key, value in experiment_tags.items():
        _retry_locked(lambda: client.set_experiment_tag(experiment_id, key, value))


# Seconds a command whose store stopped answering waits for it to come back, to end its run
# (FSL_STORE_RECOVERY overrides it).
STORE_RECOVERY = float(os.environ.get("FSL_STORE_RECOVERY", 20))


def _end_run(status: str, retry_for: float = 0.0) -> bool:
    """End the active run with `status`, trying again for `retry_for` seconds while the store is
    down (a database that accepts connections again may still be starting up); False where there
    is no active run or the store never answered: then this run (only this one, not a sweep's
    parent) is forgotten locally, left RUNNING for the next command to reap."""
    run = mlflow.active_run()
    if run is None:
        return False
    deadline, popped = time.monotonic() + retry_for, False
    while True:
        try:
            if not popped:
                mlflow.end_run(status)  # ends this run and takes it off the stack
                popped = True
            else:
                MlflowClient().set_terminated(run.info.run_id, status)
            # read back: a store coming back up can lose a write it seemed to take
            if MlflowClient().get_run(run.info.run_id).info.status == status:
                return True
        except Exception as exc:
            if not stores.is_down(exc):
                raise
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    with contextlib.suppress(Exception):
        stack = mlflow.tracking.fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == run.info.run_id:
            stack.pop()
    return False


def failure_line(exc: BaseException, uri: str) -> str:
    """What the store's failure says, in one line without the URI's password: the first message
    along the chain of causes that speaks of the connection, else the first that says anything."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and text != "()":
            lines.append(text.splitlines()[0])
        current = current.__cause__ or current.__context__
    about = [line for line in lines if any(w in line.lower() for w in ("connect", "refused", "closed", "terminat"))]
    text = (about or lines or [type(exc).__name__])[0]
    secret = stores.password(uri)
    return (text.replace(secret, "***") if secret else text)[:160]


def ui_base() -> str:
    """Where the UI of the current store is: the server's own address, else `mlflow ui`'s default."""
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def results_table(experiment_id: str) -> str:
    """The experiment's runs table in the training view with fsl's results view (RESULTS_VIEW)."""
    return f"{ui_base()}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&viewStateShareKey={VIEW_KEY}"


def experiment_description(experiment_id: str) -> str:
    """The experiment's description (the experiments list shows it): the results link and how to
    read the table."""
    return (f"fsl results. Open the results table: {results_table(experiment_id)} . "
            "One row per run, the best test accuracy first: test_acc is the mean accuracy over the test "
            "episodes in percent, test_ci95 the half-width of its 95% confidence interval; best_val_acc is what "
            "the registry's champion rule compares. Each run's description says its result in one line; a "
            "sweep's parent has the replicated, paired table (sweep.csv, sweep.png).")


def run_link(run_id: str) -> str:
    """One line naming a run, its page in the MLflow UI (training view) and the experiment's runs
    table with fsl's result columns (RESULTS_VIEW): the server's own address for a server URI,
    else `mlflow ui`'s default address and the command serving it."""
    run = get_run(run_id)
    uri = mlflow.get_tracking_uri()
    page = f"{ui_base()}/#/experiments/{run.info.experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
    line = f"run {run.info.run_name or run_id} ({run_id}): {page} ; all runs: {results_table(run.info.experiment_id)}"
    if uri.startswith(("http://", "https://")):
        return line
    return f"{line}  (served by: mlflow ui --backend-store-uri {stores.mask(uri)})"


def _record(run) -> RunRecord:
    tags = run.data.tags
    return RunRecord(run.info.run_id, run.info.status, tags.get("fsl.host"), tags.get("fsl.pid"),
                     tags.get("fsl.config_hash"), dict(run.data.params))


def _search(client: MlflowClient, experiment: str, filter_string: str, **search) -> list:
    """Runs of an experiment (none if it does not exist yet)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string, **search)


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """The lock under which a fresh store's schema and experiments are created (`stores.lock`:
    a file beside SQLite, an advisory lock in PostgreSQL)."""
    with stores.lock(mlflow.get_tracking_uri()):
        yield


def locked_client() -> MlflowClient:
    """A client made under the store lock: making the first one creates a fresh store's schema."""
    with store_lock():
        return MlflowClient()


def tracking_uri() -> str:
    """The tracking store's URI, as MLflow resolves it (MLFLOW_TRACKING_URI, else its default)."""
    return mlflow.get_tracking_uri()


def tag_run(run_id: str, tags: dict[str, str], status: str | None = None) -> None:
    """Set tags on a run, and with `status` end it so (a run whose process is gone: a search's
    trial that stopped answering; a trial whose state its run should show)."""
    client = locked_client()
    for key, value in tags.items():
        _retry_locked(lambda: client.set_tag(run_id, key, value))
    if status:
        _retry_locked(lambda: client.set_terminated(run_id, status))


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"run {run_id}: {str(exc).splitlines()[0]}") from None


def download(uri: str, folder: str | Path | None = None) -> Path:
    """A local copy of an MLflow artifact URI (runs:/..., models:/..., or any artifact store),
    in `folder` (default: a new temporary folder of MLflow's, which nobody removes)."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder) if folder else None))
