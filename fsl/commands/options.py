"""What a command is told besides its configuration: how its run is tracked (`RunOptions`) and
where its human output goes (`Reporter`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from fsl.choices import RESUME_LATEST
from fsl.progress import progress

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
    tsne: bool = True                       # draw the t-SNE of a hallucination run (sweeps: only if asked)
    test: bool = True                       # False: train and validate only, log no model (a search's trials)
    tags: tuple[tuple[str, str], ...] = ()  # more run tags, (name, value) pairs (a search's study and trial)
    on_open: Callable[[str | None], None] | None = None  # called with the run id once the run is open
    # called after each validation with (metric, epoch, value): `val_acc` per epoch, and
    # `pretrain_val_acc` per pre-training epoch; may raise RunStopped (a search's pruner)
    on_validation: Callable[[str, int, float], None] | None = None


@dataclass(frozen=True)
class Reporter:
    """Where a command's human output goes: lines and progress bars."""

    echo: Callable[[str], None] = print
    show_progress: bool = True

    def progress(self, total: int, label: str):
        return progress(total, label, self.show_progress)


SILENT = Reporter(lambda line: None, show_progress=False)


F = TypeVar("F", bound=Callable)


def quietable(command: F) -> F:
    """Give a command function a `quiet=False` keyword: `quiet=True` sends its lines and progress
    bars nowhere (`SILENT`) and holds MLflow's INFO lines (system metrics started, stopped) back,
    for a notebook; errors still raise."""
    @functools.wraps(command)
    def run(*args, quiet: bool = False, **kwargs):
        if not quiet:
            return command(*args, **kwargs)
        with _mlflow_info_off():
            return command(*args, **(kwargs | {"reporter": SILENT}))
    return run  # type: ignore[return-value]


@contextlib.contextmanager
def _mlflow_info_off() -> Iterator[None]:
    """MLflow's logger at WARNING for the block: set now, and through MLFLOW_LOGGING_LEVEL for an
    MLflow first imported inside it (its import sets the level from that variable)."""
    logger = logging.getLogger("mlflow")
    level, variable = logger.level, os.environ.get("MLFLOW_LOGGING_LEVEL")
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level or logging.INFO)
        if variable is None:
            os.environ.pop("MLFLOW_LOGGING_LEVEL", None)
        else:
            os.environ["MLFLOW_LOGGING_LEVEL"] = variable
