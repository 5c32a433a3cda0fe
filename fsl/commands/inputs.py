"""What a command loads: the device, the data set and the test data set of a config, and a
model by checkpoint path or MLflow URI."""

from __future__ import annotations

from pathlib import Path

import torch

from fsl.commands.options import Reporter
from fsl.config import DataConfig, TrainConfig, head_feature_warning
from fsl.data import DataSet, load_dataset
from fsl.errors import FslError, UsageError
from fsl.runtime import resolve_device


def device_option(name: str) -> torch.device:
    """`--device` resolved; a device this machine lacks is a usage error."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def load_data(cfg: DataConfig, image_size: int | None = None, split: str = "splits") -> DataSet:
    """The data set named by cfg.data with cfg's format, size, channels, rotations, reflections and split
    options; `split="all"` makes every class a test class."""
    return load_dataset(cfg.data, image_size or cfg.image_size, cfg.format, cfg.channels, cfg.rotations,
                        reflections=cfg.reflections, split=split, **cfg.read_options())


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


def warn_of_head_features(head: str, feature_transform: str, reporter: Reporter, trained: bool = False) -> None:
    """A warning line where the test-time head expects other features than the model gives it
    (`trained`: of a model that exists, as `fsl.config.head_feature_warning`)."""
    warning = head_feature_warning(head, feature_transform, trained)
    if warning:
        reporter.echo(warning)
