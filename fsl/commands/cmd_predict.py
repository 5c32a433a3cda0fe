"""`fsl predict`: classify the images of a folder, given a folder of labelled support images."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from fsl.commands.inputs import load_model, warn_of_head_features
from fsl.commands.options import Reporter
from fsl.data.images import IMAGE_SUFFIXES, decode_image
from fsl.errors import FslError, UsageError
from fsl.tracking.protocol import Runs


def predict_folder(model_spec: str, support_dir: str, query_dir: str, out: str | None = None,
                   reporter: Reporter = Reporter(), runs: Runs | None = None) -> list[tuple[str, str, float]]:
    """Classify query_dir/* given support_dir/<class>/*; print a table, optionally write a CSV.
    `runs`: the store an MLflow URI is read from (default: MLflow's), checked first."""
    if out:
        _check_writable(out)  # before any work, not after the table is printed
    if ":/" in model_spec and not Path(model_spec).exists():
        from fsl.commands.records import mlflow_runs

        (runs or mlflow_runs()).check_store()
    model = load_model(model_spec)
    size, channels = model.config["image_size"], model.config["channels"]
    classes = sorted(p for p in Path(support_dir).iterdir() if p.is_dir()) if Path(support_dir).is_dir() else []
    if not classes:
        raise UsageError(f"--support {support_dir}: needs one sub-folder of images per class, found none")
    support = [(folder.name, file) for folder in classes for file in _images(folder)]
    queries = _images(Path(query_dir)) if Path(query_dir).is_dir() else []
    if not support:
        raise UsageError(f"no images in --support {support_dir}")
    if not queries:  # every head needs a query; a transductive one also reads them together, so say so
        also = f" (the model's head {model.config['head']} is transductive: it classifies the query images " \
               "together, and one query alone gains nothing from it)" if model.head.transductive else ""
        raise UsageError(f"no images in --query {query_dir}{also}")
    warn_of_head_features(model.config["head"], model.config["feature_transform"], reporter, trained=True)

    def batch(files) -> torch.Tensor:
        return torch.stack([torch.from_numpy(decode_image(str(f), size, channels)) for f in files])

    prediction = model.classify(batch(f for _, f in support), [label for label, _ in support], batch(queries))
    rows = [(f.name, label, float(p.max())) for f, label, p in zip(queries, prediction.labels, prediction.probs)]
    width = max(len(r[0]) for r in rows)
    reporter.echo(f"{'query':{width}s}  {'predicted':20s} probability")
    for name, label, prob in rows:
        reporter.echo(f"{name:{width}s}  {label:20s} {prob:.4f}")
    if out:
        try:
            with open(out, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["query", "predicted", "probability"])
                writer.writerows(rows)
        except OSError as exc:  # a full disk shows only when the table is written
            raise FslError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return rows


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _check_writable(out: str) -> None:
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name")
    if not path.parent.resolve().is_dir():
        raise UsageError(f"--out {out}: the folder {path.parent} does not exist")
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise FslError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
