"""Typed run configuration, flattened under the CLI's option names for logging.

One frozen dataclass describes a training run. Its field names are the option names with
dashes turned into underscores (and `M` for `-M/--hallucinations`), which are also the
MLproject parameter names, so a value has one name from the command line to the MLflow UI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from fsl.data.episodes import EpisodeShape
from fsl.errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    data: str = "synthetic"
    format: str | None = None              # None: detected from the files
    image_size: int | None = None          # None: the data set's own size (32 for synthetic)
    channels: int | None = None            # None: inferred (greyscale trees -> 1, else 3)
    rotations: bool = False                # add 90/180/270-degree rotations as classes (Omniglot)
    augment: bool = False                  # random rotation/scale/shift of training images, on the device
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_ways: int = 5
    test_shots: int | None = None          # None: the same as shots
    test_queries: int = 15
    distance: str = "l2"
    epochs: int = 20
    episodes_per_epoch: int = 500          # optimiser steps per epoch
    episodes_per_step: int = 1             # episodes averaged per step and process (DDP: per rank)
    val_episodes: int = 100
    test_episodes: int = 600
    lr: float = 1e-3
    lr_step: int = 2000
    seed: int = 0                          # training episodes, initial weights, training noise
    val_seed: int = 1                      # the fixed val episodes (part of the registry protocol)
    test_seed: int = 2                     # the fixed test episodes and test-time noise
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"                  # torch.compile the training step: auto = on CUDA only
    experiment: str = "fsl"
    # Hallucination (Wang et al. 2018); hallucinator None is a plain ProtoNet.
    hallucinator: str | None = None
    M: int = 0
    diversity_weight: float = 0.1          # weight of the anti-collapse term (improved only)
    init: str | None = None                # start from a trained model (checkpoint or MLflow URI)

    @property
    def train_shape(self) -> EpisodeShape:
        return EpisodeShape(self.ways, self.shots, self.queries)

    @property
    def test_shape(self) -> EpisodeShape:
        """Validation and test episodes use the test way, shot and queries."""
        return EpisodeShape(self.test_ways, self.test_shots or self.shots, self.test_queries)

    @property
    def method(self) -> str:
        return "hallucination" if self.hallucinator else "protonet"

    def validate(self) -> None:
        """Raise UsageError naming the option for any value outside its range."""
        from fsl.models.distances import DISTANCES
        from fsl.models.hallucinator import GENERATORS
        from fsl.runtime import COMPILE_CHOICES, DEVICES, PRECISIONS

        for name in ("ways", "shots", "queries", "test_ways", "test_queries", "epochs",
                     "episodes_per_epoch", "episodes_per_step", "val_episodes", "test_episodes", "lr_step"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.test_shots is not None and self.test_shots < 1:
            raise UsageError(f"--test-shots must be at least 1, got {self.test_shots}")
        if self.image_size is not None and self.image_size < 16:
            raise UsageError(f"--image-size must be at least 16 (Conv-4 halves it four times), got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.distance not in DISTANCES:
            raise UsageError(f"--distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_CHOICES:
            raise UsageError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.device.split(":")[0] not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)} (optionally cuda:N), got {self.device!r}")
        if self.hallucinator is not None and self.hallucinator not in GENERATORS:
            raise UsageError(f"--hallucinator must be one of {', '.join(GENERATORS)}, got {self.hallucinator!r}")
        if self.M < 0:
            raise UsageError(f"-M/--hallucinations must be at least 0, got {self.M}")

    def resolved(self) -> "TrainConfig":
        return replace(self, test_shots=self.test_shots or self.shots)

    def to_params(self) -> dict[str, Any]:
        """Flat dict of every value for MLflow params: keys named like the options."""
        params = asdict(self.resolved())
        if not self.hallucinator:  # a ProtoNet run has no generator settings to record
            for key in ("hallucinator", "M", "diversity_weight"):
                params.pop(key)
        return {k: ("" if v is None else v) for k, v in params.items()}
