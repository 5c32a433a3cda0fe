"""What a command is told besides its configuration: how its run is tracked (`RunOptions`) and
where its human output goes (`Reporter`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class Reporter:
    """Where a command's human output goes: lines and progress bars."""

    echo: Callable[[str], None] = print
    show_progress: bool = True

    def progress(self, total: int, label: str):
        return progress(total, label, self.show_progress)


SILENT = Reporter(lambda line: None, show_progress=False)
