"""What every command shares: the options that are not configuration, the reporter, the device,
loading data and models, a run's tags and data-set input, and SIGTERM handling."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import fsl
from fsl.choices import RESUME_LATEST
from fsl.config import TrainConfig
from fsl.data import DataSet, load_dataset
from fsl.errors import FslError, UsageError
from fsl.progress import progress
from fsl.runtime import resolve_device

LATEST = RESUME_LATEST  # `--resume` without a run id


@dataclass(frozen=True)
class RunOptions:
    """How a training run is tracked, as opposed to what it trains (`TrainConfig`)."""

    nested: bool = False                    # a child of the active run (sweeps)
    run_name: str | None = None             # None: a descriptive name from the config
    register: bool = True                   # register the best model in the model registry
    registered_model_name: str | None = None
    resume: str | None = None               # None, LATEST or a run id
    system_metrics: bool = True             # MLflow's CPU/memory (and GPU) sampling
    keep_checkpoint: Path | None = None     # copy the run's best checkpoint here (a sweep's twins)


@dataclass(frozen=True)
class Reporter:
    """Where a command's human output goes: lines and progress bars."""

    echo: Callable[[str], None] = print
    show_progress: bool = True

    def progress(self, total: int, label: str):
        return progress(total, label, self.show_progress)


SILENT = Reporter(lambda line: None, show_progress=False)


def device_option(name: str) -> torch.device:
    """`--device` resolved; a device this machine lacks is a usage error."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def load_data(cfg: TrainConfig, image_size: int | None = None, split: str = "splits") -> DataSet:
    """The data set named by cfg.data with cfg's format, size, channels, rotations and split
    options; `split="all"` makes every class a test class."""
    return load_dataset(cfg.data, image_size or cfg.image_size, cfg.format, cfg.channels, cfg.rotations,
                        split=split, **cfg.read_options())


def load_test_data(cfg: TrainConfig, data: DataSet) -> DataSet:
    """The data set the final test draws from: --test-data (read at the model's size and channel
    count; --test-split all: every class) or `data` itself."""
    if cfg.test_data is None:
        return data
    try:
        return load_dataset(cfg.test_data, data.image_size, None, data.channels, split=cfg.test_split)
    except FslError as exc:
        raise UsageError(f"--test-data {cfg.test_data}: {exc}") from None


def load_model(spec: str, map_location: str = "cpu", resolved=None):
    """A `FewShotClassifier` from a local checkpoint (loaded with weights_only=True: no code
    runs) or an MLflow URI (runs:/..., models:/...; see `fsl.tracking.model_registry.load_model_uri`,
    which also takes an already `resolved` models:/ URI)."""
    from fsl.models.classifier import load_checkpoint

    path = Path(spec)
    if path.exists():
        if not path.is_file():
            raise UsageError(f"--model {spec}: is a folder, not a checkpoint file")
        try:
            return load_checkpoint(path, map_location)
        except ValueError as exc:
            raise UsageError(f"--model {exc}") from None
    if ":/" not in spec:
        raise UsageError(f"--model {spec}: no such file, and not an MLflow URI (runs:/..., models:/...)")
    from fsl.tracking.model_registry import load_model_uri

    return load_model_uri(spec, map_location, resolved)


def run_tags(method: str, fingerprint: str | None = None, precision: str | None = None) -> dict[str, str]:
    """Tags of every run: what made it (version, commit), on what data, and which process
    (host and pid: how stale-run cleanup and `--resume` tell a live run from a dead one)."""
    from fsl import provenance

    tags = {"fsl.version": fsl.__version__, "fsl.method": method, "fsl.host": socket.gethostname(),
            "fsl.pid": str(os.getpid())}
    if fingerprint is not None:
        tags |= {"fsl.data_fingerprint": fingerprint, "fsl.precision": str(precision)}
    commit = provenance.git_commit()
    if commit:
        tags |= {"fsl.git_commit": commit, "fsl.git_dirty": str(provenance.source_diff() is not None).lower()}
    return tags


def log_source_diff(tracker) -> None:
    """Log `git_diff.patch` (fsl's uncommitted changes) to a run made from a modified checkout."""
    from fsl import provenance

    diff = provenance.source_diff()
    if diff is not None and tracker.run_id:
        with tempfile.TemporaryDirectory(prefix="fsl-diff-") as folder:
            path = Path(folder) / "git_diff.patch"
            path.write_text(diff)
            tracker.log_artifact(path)


def dataset_input(data: DataSet, cfg: TrainConfig) -> dict[str, Any]:
    """The data set as an MLflow dataset input: name, digest, source and profile."""
    name = "synthetic" if cfg.data == "synthetic" else Path(cfg.data).resolve().name
    source = {"data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
              "format": cfg.format or "detected", "rotations": cfg.rotations}
    source |= {k: v for k, v in cfg.read_options().items() if v is not None}
    if cfg.data == "synthetic":
        from fsl.data import synthetic

        source |= {"seed": synthetic.SEED, "version": synthetic.VERSION}
    profile = {"image_size": data.image_size, "channels": data.channels} | {
        f"{split}_classes": store.n_classes for split, store in data.splits.items()} | {
        f"{split}_images": int(store.images.shape[0]) for split, store in data.splits.items()}
    return {"name": name, "digest": data.fingerprint, "source": source, "profile": profile}


def log_eval(tracker, result, suffix: str = "") -> None:
    """An evaluation's per-episode accuracies as a series, and its mean and CI as metrics."""
    tracker.log_series(f"test_episode_acc{suffix}", result.accs)
    tracker.log_metrics({f"test_acc{suffix}": result.mean, f"test_ci95{suffix}": result.ci95})


def mlflow_runs():
    """The MLflow-backed tracking surface (imported only when a command tracks)."""
    from fsl.tracking.runs import MlflowRuns

    return MlflowRuns()
