"""The model registry: log a trained model, register it under the champion rule, and load a
model back from an MLflow URI.

Each training run registers two models under one name pair: `<name>` (the PyTorch flavour, a
`FewShotClassifier`, loaded with `mlflow.pytorch.load_model`) and `<name>-serve` (the pyfunc of
`fsl.tracking.serving`, for `mlflow models serve`). The `champion` alias of both moves together,
only when the champion rule says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
from mlflow.tracking import MlflowClient

import fsl
from fsl.champion import champion_decision
from fsl.data.requests import MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES
from fsl.errors import UsageError
from fsl.tracking.protocol import MODEL_TAG
from fsl.tracking.runs import DESCRIPTION_TAG, Tracker, download

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class ResolvedModel:
    """What a `models:/` URI names: the registered name and version (None for `models:/m-<id>`),
    the run that trained it and the logged model's id (None where the version has none)."""

    uri: str
    name: str | None
    version: str | None
    run_id: str
    model_id: str | None

    def __str__(self) -> str:
        what = f"version {self.version} of {self.name}" if self.version else f"logged model {self.model_id}"
        return f"{self.uri} ({what}, run {self.run_id})"


def resolve_model_uri(spec: str) -> ResolvedModel:
    """The run behind `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/m-<model id>`,
    read from the registry's records only: nothing of the model's own files is opened.

    A version's run is its `run_id`, else the `fsl.run_id` tag fsl writes when it registers; a
    logged model's run is its `source_run_id`. Raises UsageError naming the URI."""
    client = MlflowClient()
    path = spec[len("models:/"):].strip("/")
    model_id: str | None
    try:
        if path.startswith("m-") and "/" not in path and "@" not in path:
            logged = client.get_logged_model(path)
            run_id, name, version, model_id = logged.source_run_id, None, None, logged.model_id
        else:
            if "@" in path:
                name, alias = path.split("@", 1)
                found = client.get_model_version_by_alias(name, alias)
            elif path.count("/") == 1:
                name, number = path.split("/")
                if number == "latest":  # MLflow's own spelling of the newest version
                    versions = client.search_model_versions(f"name='{name}'")
                    if not versions:
                        raise UsageError(f"--model {spec}: no registered model {name!r} (or it has no versions)")
                    number = str(max(int(v.version) for v in versions))
                found = client.get_model_version(name, number)
            else:
                raise UsageError(f"--model {spec}: expected models:/NAME@ALIAS, models:/NAME/VERSION or "
                                 f"models:/m-<model id>")
            run_id = found.run_id or found.tags.get("fsl.run_id")
            # MLflow 3 records the logged model as the version's source (`models:/m-<id>`); a
            # SQL store leaves `model_id` itself empty.
            source = found.source or ""
            model_id = found.model_id or (source[len("models:/"):] if source.startswith("models:/m-") else None)
            name, version = found.name, str(found.version)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"--model {spec}: {str(exc).splitlines()[0]}") from None
    if not run_id:
        raise UsageError(f"--model {spec}: version {version} of {name} names no run, so fsl has no "
                         f"checkpoint to load (it never unpickles a registered model)")
    return ResolvedModel(spec, name, version, run_id, model_id)


def load_model_uri(spec: str, map_location: str = "cpu", resolved: ResolvedModel | None = None):
    """A `FewShotClassifier` from an MLflow URI, always from a weights-only checkpoint:

    - `runs:/<run_id>`: that run's best checkpoint (`checkpoints/best.pt`);
    - any artifact URI ending in `.pt` (`runs:/<id>/checkpoints/best.pt`, `mlflow-artifacts:/...`);
    - `models:/<name>/<version>`, `models:/<name>@<alias>` or `models:/m-<id>`: the best
      checkpoint of the run that trained it (`resolve_model_uri`). The registered PyTorch model
      itself (a pickle, plus a `code/` folder MLflow puts on sys.path) is never loaded here: on a
      shared store, whoever can write one artifact could otherwise run code on every machine
      that evaluates the champion. `mlflow.pytorch.load_model` remains the user's own choice.

    `resolved`: what `resolve_model_uri(spec)` already returned, so a caller that records the
    version loads exactly that version (an alias can move between two lookups).
    """
    from fsl.models.classifier import load_checkpoint

    if resolved is None and spec.startswith("models:/"):
        resolved = resolve_model_uri(spec)
    uri = f"runs:/{resolved.run_id}/checkpoints/best.pt" if resolved else spec
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        uri = uri.rstrip("/") + "/checkpoints/best.pt"
    try:
        with tempfile.TemporaryDirectory(prefix="fsl-model-") as folder:  # removed, error or not
            return load_checkpoint(download(uri, folder), map_location)
    except mlflow.exceptions.MlflowException as exc:
        if resolved:
            raise UsageError(f"--model {resolved}: its run or its checkpoint (checkpoints/best.pt) is gone; "
                             f"fsl never falls back to the registered pickle") from None
        raise UsageError(f"--model {spec}: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:  # load_checkpoint: the artifact is not an fsl checkpoint
        raise UsageError(f"--model {resolved or spec}: {exc}") from None


CHAMPION = "champion"
SERVE_SUFFIX = "-serve"


def validate_model_name(name: str) -> None:
    """A registry name MLflow accepts, checked before any training: it refuses '/' and ':'."""
    try:
        from mlflow.utils.validation import _validate_model_name

        _validate_model_name(name)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"--registered-model-name {name!r}: {exc.message}") from None


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


def serve_example():
    """A valid request for the serving model, logged as its `input_example` (what the model page
    shows a user): two labelled support images and one query, tiny PNGs in base64."""
    import base64

    import pandas as pd
    from PIL import Image

    def png(colour: tuple[int, int, int]) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    return pd.DataFrame({"role": ["support", "support", "query"], "label": ["cat", "dog", ""],
                         "image": [png((200, 40, 40)), png((40, 40, 200)), png((190, 50, 40))]})


def logged_model_name(registered: str, ways: int, shots: int) -> str:
    """`fsl-protonet-5w1s`: the registered name and the shape, in the characters MLflow allows in
    a logged model's name (it refuses `.`, `%`, `"`, `'`, `/` and `:`, which a registered name
    may have), so that any name `--registered-model-name` accepts can be logged."""
    return re.sub(r"[./%:'\"\\]", "-", f"{registered}-{ways}w{shots}s")


def log_models(tracker: Tracker, model, checkpoint: Path, name: str) -> tuple[str, str]:
    """Log the PyTorch model as `name` and the serving pyfunc as `name`-serve to the run; return
    their model URIs.

    The serving twin is logged first: MLflow's runs table lists a run's models newest first, so
    the PyTorch model, the one a user loads, is the one it shows."""
    import copy

    import torch

    cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    with _active(tracker.run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # type hints, input example: see runs._quiet_mlflow
        # Models-from-code: the pyfunc is this file, not a pickle, so a server can refuse pickles.
        serve = mlflow.pyfunc.log_model(
            name=name + SERVE_SUFFIX, python_model=str(Path(__file__).with_name("serve_model.py")),
            artifacts={"checkpoint": str(checkpoint)}, code_paths=_code_paths(),
            model_config={"max_image_pixels": MAX_IMAGE_PIXELS, "max_request_bytes": MAX_REQUEST_BYTES},
            pip_requirements=pip_requirements(), signature=_serve_signature(), input_example=serve_example())
        info = mlflow.pytorch.log_model(
            cpu_model, name=name, serialization_format="pickle", code_paths=_code_paths(),
            pip_requirements=pip_requirements(), signature=_tensor_signature(cpu_model))
    return info.model_uri, serve.model_uri


@contextlib.contextmanager
def _active(run_id: str) -> Iterator[None]:
    """Make `run_id` the active run for fluent calls, without ending it if it already was.

    Reopening an ended run (`fsl register --run-id`) sets it RUNNING; it is ended again with the
    status it had, so registering never changes a run's status."""
    active = mlflow.active_run()
    if active and active.info.run_id == run_id:
        yield
        return
    status = MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield
    finally:
        mlflow.end_run(status)


@dataclass
class Registration:
    name: str
    version: str
    champion: bool
    decision: str


def register(name: str, model_uri: str, serve_uri: str, run_id: str, val_acc: float,
             protocol: dict, result: str = "") -> Registration:
    """Register both models as new versions; move `champion` on both only if the rule says so.

    `result`: the run's result as people read it (`test 71.53 ± 0.71 % (...)`): each version's
    `fsl.test` tag and the start of its description. The serving twin is registered first, so
    that the PyTorch model, the one a user loads, is listed first (newest first) on the run page."""
    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion = {"val_acc": float(current.tags["fsl.val_acc"]),
                    "protocol": json.loads(current.tags["fsl.protocol"])}
    except mlflow.exceptions.MlflowException:
        current, champion = None, None
    promote, decision = champion_decision(val_acc, protocol, champion)
    # repr: the exact float, so that the same accuracy never "beats" its own rounded copy
    tags = {"fsl.val_acc": repr(float(val_acc)), "fsl.protocol": json.dumps(protocol, sort_keys=True),
            "fsl.run_id": run_id, "fsl.decision": decision, "fsl.champion": str(promote).lower(),
            "fsl.previous_champion_val_acc": repr(champion["val_acc"]) if champion else "none",
            "fsl.previous_champion_version": str(current.version) if current else "none"}
    tags |= {"fsl.test": result} if result else {}
    description = (f"{result + '; ' if result else ''}val {val_acc:.2f} % (what the champion rule compares); "
                   f"{decision}; trained in run {run_id}")
    with contextlib.redirect_stderr(io.StringIO()):  # "Successfully registered model ...": fsl says it once
        serve_version = mlflow.register_model(serve_uri, name + SERVE_SUFFIX, tags=tags)
        version = mlflow.register_model(model_uri, name, tags=tags)
    for registered, number, text in ((name, version.version, MODEL_DESCRIPTION),
                                     (name + SERVE_SUFFIX, serve_version.version, SERVE_DESCRIPTION)):
        client.update_model_version(registered, number, description=description)
        if not client.get_registered_model(registered).description:
            client.update_registered_model(registered, description=text.format(name=name))
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        client.set_registered_model_alias(name + SERVE_SUFFIX, CHAMPION, serve_version.version)
        if current is not None:  # its run must not still say champion
            previous_run = current.run_id or current.tags.get("fsl.run_id", "")
            set_model_text(client, previous_run, f"{name} v{current.version} · champion until v{version.version}")
    return Registration(name, version.version, promote, decision)


def set_model_text(client: MlflowClient, run_id: str, text: str) -> None:
    """What a run says of its model, for people: its `fsl.model` tag (a column of the results
    view) and the end of its description (`... · fsl-protonet v3 · champion`), which ends with
    the tag's previous text. A deleted run is left alone."""
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return
    old = run.data.tags.get(MODEL_TAG)
    client.set_tag(run_id, MODEL_TAG, text)
    description = run.data.tags.get(DESCRIPTION_TAG, "")
    if old and description.endswith(old):
        client.set_tag(run_id, DESCRIPTION_TAG, description[: -len(old)] + text)


MODEL_DESCRIPTION = ("fsl few-shot classifiers (PyTorch). Load the champion with "
                     "mlflow.pytorch.load_model('models:/{name}@champion') and call .classify(support, labels, "
                     "queries). Each version's description gives its test accuracy; the alias `champion` moves only to "
                     "a version with a better val accuracy under the same protocol.")
SERVE_DESCRIPTION = ("The serving twin of {name}: mlflow models serve -m models:/{name}-serve@champion "
                     "--env-manager local answers JSON requests of support and query images (README, Serving).")


@dataclass(frozen=True)
class LoggedModels:
    """A run's two logged models: the PyTorch flavour and its serving twin (model URIs)."""

    model_uri: str
    serve_uri: str


def log_run_models(tracker, model, checkpoint: Path, name: str, shape: tuple[int, int]) -> LoggedModels:
    """The run's PyTorch and serving models under the logged name of `name` and `shape` (ways,
    shots): found where the run logged them already (every training run logs them; `fsl
    register` of such a run), else logged now from `checkpoint`."""
    logged_name = logged_model_name(name, *shape)
    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    found = {m.name: m.model_uri for m in client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{tracker.run_id}'")}
    if logged_name in found and logged_name + SERVE_SUFFIX in found:
        return LoggedModels(found[logged_name], found[logged_name + SERVE_SUFFIX])
    return LoggedModels(*log_models(tracker, model, checkpoint, logged_name))


def register_logged(tracker, logged: LoggedModels, name: str, val_acc: float, protocol: dict,
                    result: str = "") -> Registration:
    """Register a run's logged models as new versions of `name` (champion rule) and tag the run."""
    reg = register(name, logged.model_uri, logged.serve_uri, tracker.run_id, val_acc, protocol, result)
    tracker.set_tags({"fsl.registered_model": f"{reg.name}/{reg.version}", "fsl.registry_decision": reg.decision})
    set_model_text(MlflowClient(), tracker.run_id,
                   f"{reg.name} v{reg.version} · {'champion' if reg.champion else 'not champion'}")
    return reg
