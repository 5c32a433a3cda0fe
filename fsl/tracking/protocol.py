"""The tracking surface every command trains, tests and sweeps through: a `Runs` store that opens
runs, and the `Tracker` of one open run. `fsl.tracking.runs` implements it with MLflow, and
`fsl.tracking.null` without it (nothing recorded, no mlflow imported): the run path is one, and
tracking is a parameter of it. This module imports nothing of mlflow.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

# Run tags written for people, which fsl's results view shows as its first columns: the test
# accuracy ± CI rounded (the table cannot round a metric) and the registered version with
# whether it is champion (updated on the old champion's run when the alias moves).
RESULT_TAG = "fsl.result"
MODEL_TAG = "fsl.model"


@runtime_checkable
class Tracker(Protocol):
    """One open run. `run_id` is None where nothing is recorded."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...
    def logged_metric_keys(self) -> set[str]: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def set_description(self, text: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, dataset: Any, context: str) -> None: ...
    def log_model_input(self, model_id: str) -> None: ...


@runtime_checkable
class Runs(Protocol):
    """A store of runs: check it, find runs to resume or reuse, open one."""

    def check_store(self) -> None:
        """Fail in seconds, before any work, where runs could not be recorded."""

    def fail_stale_runs(self, experiment: str, keep: str | None = None, alive: Any = None) -> list[str]:
        """Mark FAILED the RUNNING runs whose process is gone; their ids."""

    def unfinished_runs(self, experiment: str) -> list:
        """The `RunRecord`s of training runs that did not finish, newest first."""

    def find_finished(self, experiment: str, config_hash: str) -> tuple[str, dict[str, float]] | None:
        """(run id, metrics) of the newest FINISHED run of this configuration with a test_acc."""

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""

    def run_record(self, run_id: str) -> Any:
        """What resuming needs to know of a run (`RunRecord`); UsageError for an unknown run."""

    def best_checkpoint(self, run_id: str, folder: Path) -> Path:
        """The run's best checkpoint, copied into `folder`; UsageError where it has none."""

    def link(self, run_id: str | None) -> str:
        """A line naming the run and where to see it."""

    def open(self, experiment: str, run_name: str | None = None, nested: bool = False,
             tags: dict[str, str] | None = None, run_id: str | None = None,
             system_metrics: bool = False) -> contextlib.AbstractContextManager[Tracker]:
        """Open a run (a new one, or `run_id` to resume it); it ends FINISHED, or FAILED / KILLED
        when the block raises."""


class RecordingTracker:
    """A tracker that also keeps the last value logged of every metric (`latest`): what a run
    reports to its caller (a sweep's table) the same way, whatever records it."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self.latest: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.latest |= {key: float(value) for key, value in metrics.items()}
        self._tracker.log_metrics(metrics, step)

    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None:
        values = [float(v) for v in values]
        if values:
            self.latest[key] = values[-1]
        self._tracker.log_series(key, values, first_step)
