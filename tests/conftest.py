"""Shared fixtures: a private cache folder, one migrated MLflow database copied per test, and
one tiny trained model per session for the tests that only need a model."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch

torch.set_num_threads(1)  # tests are single-threaded: stable timings, no oversubscription in CI

TINY = ["--image-size", "16", "--epochs", "1", "--episodes-per-epoch", "4", "--val-episodes", "3",
        "--test-episodes", "5", "--queries", "3", "--test-queries", "3", "--precision", "fp32", "--no-register"]


def noise_keys(seed: int, episodes: int, ways: int = 5) -> torch.Tensor:
    """The hallucination noise keys of `episodes` episodes of classes 0..ways-1: int64 [episodes, ways]."""
    from fsl.models.noise import episode_keys

    return episode_keys(seed, range(episodes), torch.arange(ways).expand(episodes, -1))


def all_runs(client) -> list:
    """Every run of every experiment of the client's store, newest first."""
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="session", autouse=True)
def fsl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All caches of the session in one temp folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("fsl-cache")
    os.environ["FSL_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema created once (migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@contextlib.contextmanager
def tracking_store(folder: Path, migrated_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tracking store in `folder` (a copy of the migrated database, artifacts beside it), made
    the current one for this process and its subprocesses; yields its URI."""
    import mlflow

    db = folder / "mlflow.db"
    shutil.copy(migrated_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking(tmp_path: Path, migrated_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh tracking store per test."""
    with tracking_store(tmp_path, migrated_db, monkeypatch) as uri:
        yield uri


@pytest.fixture(scope="session")
def tiny_dataset():
    """The built-in data set at 16x16 (fast), shared by the session."""
    from fsl.data import load_dataset

    return load_dataset("synthetic", image_size=16)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_dataset) -> Path:
    """One tiny ProtoNet, trained once per session, saved as a checkpoint."""
    from fsl.commands.training_setup import prepare_training
    from fsl.config import TrainConfig
    from fsl.train import train

    cfg = TrainConfig(image_size=16, epochs=1, episodes_per_epoch=10, val_episodes=3, queries=3,
                      test_queries=3, precision="fp32", device="cpu")
    setup = prepare_training(cfg)
    folder = tmp_path_factory.mktemp("checkpoint")
    result = train(setup.model, setup.data, setup.cfg, setup.device, checkpoint_dir=folder)
    return result.best_checkpoint
