"""The tracking surface that records nothing, without importing mlflow: what a benchmark that
measures logging cost, and every DDP rank but 0, train with."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator


class NullTracker:
    """The same methods as `runs.Tracker`; records nothing."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def logged_metric_keys(self) -> set[str]: return set()
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, dataset: Any, context: str) -> None: ...
    def log_model_input(self, model_id: str) -> None: ...


class NullRuns:
    """The same methods as `runs.MlflowRuns`: no store to check, no run to find or open."""

    def check_store(self) -> None: ...

    def fail_stale_runs(self, experiment: str, keep: str | None = None, alive: Any = None) -> list[str]:
        return []

    def unfinished_runs(self, experiment: str) -> list:
        return []

    def link(self, run_id: str) -> str:
        return f"run {run_id} (not tracked)"

    @contextlib.contextmanager
    def open(self, experiment: str, **_: Any) -> Iterator[NullTracker]:
        yield NullTracker()
