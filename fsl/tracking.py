"""MLflow tracking: the only module that imports mlflow.

A `Tracker` wraps one run. It logs params without clashing with what `mlflow run` already
logged, batches metric series, and ends the run FAILED or KILLED when the block raises, so no
run is left RUNNING by an error. `NullTracker` has the same methods and does nothing (used by
benchmarks and by non-zero DDP ranks).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient

import fsl

BATCH = 1000  # MLflow's limit of metrics per log_batch call


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

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._log_batch([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None:
        """One metric per value (step = index): `test_episode_acc` in a few calls, not 600."""
        now = int(time.time() * 1000)
        self._log_batch([Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)])

    def _log_batch(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


class NullTracker:
    """The same surface as `Tracker`; records nothing."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def git_commit() -> str | None:
    """The commit of the working directory's repository, if there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def base_tags(data_fingerprint: str, precision: str) -> dict[str, str]:
    tags = {"fsl.version": fsl.__version__, "fsl.data_fingerprint": data_fingerprint,
            "fsl.precision": precision}
    commit = git_commit()
    if commit:
        tags["fsl.git_commit"] = commit
    return tags


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, nested: bool = False,
              tags: dict[str, str] | None = None) -> Iterator[Tracker]:
    """Open a run, or the run `mlflow run` made (MLFLOW_RUN_ID) without calling set_experiment.

    An exception inside the block ends the run FAILED (KILLED for Ctrl-C) and propagates.
    """
    inherited = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if inherited:
        run = mlflow.start_run(run_id=inherited)
    else:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, nested=nested)
    tracker = Tracker(run.info.run_id, MlflowClient())
    if tags:
        tracker.set_tags(tags)
    try:
        yield tracker
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run()


def download(uri: str) -> Path:
    """A local copy of an MLflow artifact URI (runs:/..., models:/..., or any artifact store)."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def load_model(spec: str, map_location: str = "cpu"):
    """A `FewShotClassifier` from a checkpoint path or an MLflow URI.

    - a local `.pt` file: loaded with weights_only=True (runs no code);
    - `runs:/<run_id>`: that run's best checkpoint (`checkpoints/best.pt`);
    - any artifact URI ending in `.pt` (`runs:/<id>/checkpoints/best.pt`, `mlflow-artifacts:/...`);
    - `models:/<name>/<version>` or `models:/<name>@<alias>`: a logged PyTorch model.
    """
    from fsl.errors import UsageError
    from fsl.models.classifier import FewShotClassifier, load_checkpoint

    if Path(spec).exists():
        return load_checkpoint(spec, map_location)
    if ":/" not in spec:
        raise UsageError(f"--model {spec}: no such file, and not an MLflow URI (runs:/..., models:/...)")
    try:
        if spec.startswith("models:/"):
            import mlflow.pytorch

            model = mlflow.pytorch.load_model(spec, map_location=map_location)
            if not isinstance(model, FewShotClassifier):
                raise UsageError(f"--model {spec}: is a {type(model).__name__}, not an fsl model")
            return model
        if spec.startswith("runs:/") and spec.rstrip("/").count("/") == 1:
            spec = spec.rstrip("/") + "/checkpoints/best.pt"
        return load_checkpoint(download(spec), map_location)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"--model {spec}: {str(exc).splitlines()[0]}") from exc
