"""What every run records besides its metrics: its tags (version, commit, host, process), the
source diff, its data sets as MLflow inputs, an evaluation's metrics, and the MLflow store."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import fsl
from fsl.config import DataConfig
from fsl.data import DataSet
from fsl.tracking.protocol import RESULT_TAG


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


def dataset_input(data: DataSet, cfg: DataConfig) -> dict[str, Any]:
    """The data set as an MLflow dataset input: name, digest, source and profile."""
    name = "synthetic" if cfg.data == "synthetic" else Path(cfg.data).resolve().name
    source = {"data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
              "format": cfg.format or "detected", "rotations": cfg.rotations}
    source |= {"reflections": True} if cfg.reflections else {}
    source |= {k: v for k, v in cfg.read_options().items() if v not in (None, {})}
    if cfg.data == "synthetic":
        from fsl.data import synthetic

        source |= {"seed": synthetic.SEED, "version": synthetic.VERSION}
    profile = {"image_size": data.image_size, "channels": data.channels, "content_digest": data.content_digest()} | {
        f"{split}_classes": store.n_classes for split, store in data.splits.items()} | {
        f"{split}_images": int(store.images.shape[0]) for split, store in data.splits.items()}
    return {"name": name, "digest": data.fingerprint, "source": source, "profile": profile}



def log_eval(tracker, result, suffix: str = "") -> None:
    """An evaluation's per-episode accuracies as a series, and its mean and CI as metrics."""
    tracker.log_series(f"test_episode_acc{suffix}", result.accs)
    tracker.log_metrics({f"test_acc{suffix}": result.mean, f"test_ci95{suffix}": result.ci95})
    if not suffix:  # the runs table's first column: the figure rounded, as a metric cannot be there
        tracker.set_tags({RESULT_TAG: f"{result.mean:.2f} ± {result.ci95:.2f}"})


def mlflow_runs():
    """The MLflow-backed tracking surface (imported only when a command tracks)."""
    from fsl.tracking.runs import MlflowRuns

    return MlflowRuns()


def result_line(test, shape, plain=None) -> str:
    """A test result as people read it, rounded: `test 71.53 ± 0.71 % (600 episodes, 5-way 1-shot)`,
    with the same encoder's figure without hallucination where there is one."""
    text = f"test {test.mean:.2f} ± {test.ci95:.2f} % ({len(test.accs)} episodes, {shape.ways}-way {shape.shots}-shot)"
    return text + (f", {plain.mean:.2f} without hallucination" if plain is not None else "")
