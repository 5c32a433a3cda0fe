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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
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
            _retry_locked(lambda: self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


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


class NullTracker:
    """The same surface as `Tracker`; records nothing."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_series(self, key: str, values: Iterable[float], first_step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def fail_stale_runs(experiment: str, keep: str | None = None) -> list[str]:
    """Mark FAILED the RUNNING fsl runs of this host whose process is gone (a kill -9 or a
    crash leaves them RUNNING forever), except `keep`, the run being resumed."""
    import socket

    client, running = _running_runs(experiment)
    stale = []
    for run in running:
        pid = run.data.tags.get("fsl.pid")
        if run.info.run_id == keep or run.data.tags.get("fsl.host") != socket.gethostname() or not pid:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            client.set_terminated(run.info.run_id, "FAILED")
            client.set_tag(run.info.run_id, "fsl.failure", "process gone while RUNNING; marked FAILED")
            stale.append(run.info.run_id)
        except PermissionError:
            pass  # alive, another user's
    return stale


def find_resumable(experiment: str, config_hash: str) -> str | None:
    """The newest RUNNING run of this configuration: the one a killed process left behind."""
    _, runs = _running_runs(experiment, f" and tags.`fsl.config_hash` = '{config_hash}'",
                            order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _running_runs(experiment: str, extra_filter: str = "", **search) -> tuple[MlflowClient, list]:
    """The RUNNING runs of an experiment (none if it does not exist yet), and the client."""
    client = locked_client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'" + extra_filter, **search)


def process_tags() -> dict[str, str]:
    import socket

    return {"fsl.host": socket.gethostname(), "fsl.pid": str(os.getpid())}


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
def store_lock() -> Iterator[None]:
    """An exclusive file lock beside a local SQLite store: two processes starting at once on a
    fresh `mlflow.db` would otherwise race in MLflow's schema creation and experiment creation."""
    import fcntl

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".db.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def locked_client() -> MlflowClient:
    """A client made under the store lock: making the first one creates a fresh store's schema."""
    with store_lock():
        return MlflowClient()


def check_reachable(timeout: float = 3.0) -> None:
    """Fail in seconds, before any training, when the tracking server does not answer.

    MLflow's own client retries for minutes; this asks the server's /health once."""
    import urllib.request

    from fsl.errors import UsageError

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except OSError as exc:
        raise UsageError(f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)}); "
                         f"check MLFLOW_TRACKING_URI") from None


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, nested: bool = False,
              tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[Tracker]:
    """Open a run, the run `mlflow run` made (MLFLOW_RUN_ID) without calling set_experiment, or
    `run_id` (to resume it).

    An exception inside the block ends the run FAILED (KILLED for Ctrl-C or SIGTERM) and propagates.
    """
    inherited = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if run_id or inherited:
        with store_lock():
            run = mlflow.start_run(run_id=run_id or inherited)
    else:
        with store_lock():
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


@contextlib.contextmanager
def null_run() -> Iterator[NullTracker]:
    """`start_run`'s stand-in that records nothing (benchmarks, non-zero DDP ranks)."""
    yield NullTracker()


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        from fsl.errors import UsageError

        raise UsageError(f"--run-id {run_id}: {str(exc).splitlines()[0]}") from None


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
            model = mlflow.pytorch.load_model(spec, map_location=map_location)
            if not isinstance(model, FewShotClassifier):
                raise UsageError(f"--model {spec}: is a {type(model).__name__}, not an fsl model")
            return model
        if spec.startswith("runs:/") and spec.rstrip("/").count("/") == 1:
            spec = spec.rstrip("/") + "/checkpoints/best.pt"
        return load_checkpoint(download(spec), map_location)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"--model {spec}: {str(exc).splitlines()[0]}") from exc


# ---------------------------------------------------------------------------- model registry
CHAMPION = "champion"
SERVE_SUFFIX = "-serve"


def pip_requirements() -> list[str]:
    """Pinned to what is installed: given explicitly, MLflow does not spend seconds inferring them."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "mlflow", "numpy", "pillow", "pandas")]


def _code_paths() -> list[str]:
    """The installed package's own folder (not the working directory): the code travels with the model."""
    return [str(Path(fsl.__file__).resolve().parent)]


def _tensor_signature(model):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    c, s = model.config["channels"], model.config["image_size"]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, s, s), "images")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.feature_dim), "features")]))


def _serve_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "role"), ColSpec("string", "label", required=False),
                       ColSpec("string", "image")]),
        outputs=Schema([ColSpec("long", "query"), ColSpec("string", "label"), ColSpec("double", "probability")]))


class FewShotServe(mlflow.pyfunc.PythonModel):
    """The serving model: a JSON-able table in, predictions out, through `classify`.

    Input rows: `role` ("support" or "query"), `label` (support rows), `image` (base64 PNG/JPEG).
    Output rows, one per query in input order: `query` (its index among the queries), `label`
    (the predicted support label) and `probability`. The weights are the checkpoint artifact,
    loaded with weights_only=True.
    """

    def load_context(self, context) -> None:
        from fsl.models.classifier import load_checkpoint

        self.model = load_checkpoint(context.artifacts["checkpoint"]).eval()

    def predict(self, context, model_input, params=None):
        import base64

        import numpy as np
        import pandas as pd
        import torch

        from fsl.data.readers import decode_bytes
        from fsl.errors import DataError

        size, channels = self.model.config["image_size"], self.model.config["channels"]

        def batch(rows) -> torch.Tensor:
            return torch.stack([torch.from_numpy(decode_bytes(base64.b64decode(text), size, channels, "a request image"))
                                for text in rows["image"]])

        support = model_input[model_input["role"] == "support"]
        query = model_input[model_input["role"] == "query"]
        if support.empty or query.empty:
            raise DataError("a request needs rows with role 'support' (with labels) and role 'query'")
        prediction = self.model.classify(batch(support), list(support["label"]), batch(query))
        best = prediction.probs.max(-1).values.double().numpy()
        return pd.DataFrame({"query": np.arange(len(query)), "label": [str(x) for x in prediction.labels],
                             "probability": best})


def log_models(tracker: Tracker, model, checkpoint: Path) -> tuple[str, str]:
    """Log the PyTorch model and the serving pyfunc to the run; return their model URIs."""
    import copy

    import torch

    cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    with _active(tracker.run_id):
        info = mlflow.pytorch.log_model(
            cpu_model, name="model", serialization_format="pickle", code_paths=_code_paths(),
            pip_requirements=pip_requirements(), signature=_tensor_signature(cpu_model))
        serve = mlflow.pyfunc.log_model(
            name="serve", python_model=FewShotServe(), artifacts={"checkpoint": str(checkpoint)},
            code_paths=_code_paths(), pip_requirements=pip_requirements(), signature=_serve_signature())
    return info.model_uri, serve.model_uri


@contextlib.contextmanager
def _active(run_id: str) -> Iterator[None]:
    """Make `run_id` the active run for fluent calls, without ending it if it already was."""
    active = mlflow.active_run()
    if active and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


@dataclass
class Registration:
    name: str
    version: str
    champion: bool
    decision: str


def champion_decision(new_val: float, new_protocol: dict, champion: dict | None) -> tuple[bool, str]:
    """Whether a new version takes the champion alias, and why. Pure: the rule in one place.

    champion: {"val_acc": float, "protocol": dict} of the current champion, or None.
    """
    if champion is None:
        return True, "first version under this protocol: it becomes champion"
    if champion["protocol"] != new_protocol:
        differ = sorted(k for k in set(new_protocol) | set(champion["protocol"])
                        if new_protocol.get(k) != champion["protocol"].get(k))
        return False, f"protocol differs from the champion's ({', '.join(differ)}): champion left alone"
    if new_val > champion["val_acc"]:
        return True, f"val accuracy {new_val:.2f}% beats the champion's {champion['val_acc']:.2f}%"
    return False, f"val accuracy {new_val:.2f}% does not beat the champion's {champion['val_acc']:.2f}%"


def register(name: str, model_uri: str, serve_uri: str, run_id: str, val_acc: float,
             protocol: dict) -> Registration:
    """Register both models as new versions; move `champion` on both only if the rule says so."""
    import json

    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion = {"val_acc": float(current.tags["fsl.val_acc"]),
                    "protocol": json.loads(current.tags["fsl.protocol"])}
    except mlflow.exceptions.MlflowException:
        current, champion = None, None
    promote, decision = champion_decision(val_acc, protocol, champion)
    tags = {"fsl.val_acc": f"{val_acc:.6f}", "fsl.protocol": json.dumps(protocol, sort_keys=True),
            "fsl.run_id": run_id, "fsl.decision": decision, "fsl.champion": str(promote).lower(),
            "fsl.previous_champion_val_acc": f"{champion['val_acc']:.6f}" if champion else "none",
            "fsl.previous_champion_version": str(current.version) if current else "none"}
    version = mlflow.register_model(model_uri, name, tags=tags)
    serve_version = mlflow.register_model(serve_uri, name + SERVE_SUFFIX, tags=tags)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        client.set_registered_model_alias(name + SERVE_SUFFIX, CHAMPION, serve_version.version)
    return Registration(name, version.version, promote, decision)
