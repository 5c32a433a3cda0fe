"""The tracking protocol (`fsl.tracking.protocol`) recording nothing, without importing mlflow:
for a study on a machine without MLflow, a benchmark of what logging costs, and every DDP rank
but 0."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from fsl.errors import UsageError


class NullTracker:
    """The same methods as `runs.Tracker`; records nothing."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def logged_metric_keys(self) -> set[str]: return set()
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def set_description(self, text: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, dataset: Any, context: str) -> None: ...
    def log_model_input(self, model_id: str) -> None: ...


class NullRuns:
    """The `Runs` protocol (`fsl.tracking.protocol`) with no store: nothing to check, no run to
    find, reuse or resume; every run it opens records nothing."""

    def check_store(self) -> None: ...

    def fail_stale_runs(self, experiment: str, keep: str | None = None, alive: Any = None) -> list[str]:
        return []

    def unfinished_runs(self, experiment: str) -> list:
        return []

    def find_finished(self, experiment: str, config_hash: str) -> tuple[str, dict[str, float]] | None:
        return None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        raise UsageError(f"run {run_id}: not found (runs are not tracked here)")

    def run_record(self, run_id: str) -> Any:
        raise UsageError(f"run {run_id}: not found (runs are not tracked here)")

    def best_checkpoint(self, run_id: str, folder: Path) -> Path:
        raise UsageError(f"run {run_id}: not found (runs are not tracked here)")

    def link(self, run_id: str | None) -> str:
        return "run not tracked"

    @contextlib.contextmanager
    def open(self, experiment: str, run_name: str | None = None, nested: bool = False,
             tags: dict[str, str] | None = None, run_id: str | None = None,
             system_metrics: bool = False) -> Iterator[NullTracker]:
        yield NullTracker()
