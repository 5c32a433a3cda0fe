"""A training run's set-up: every option checked against the data and the model built, before any
run opens (a bad option never opens a run); `--init` copies a trained encoder in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fsl.commands.inputs import device_option, load_data, load_model, load_test_data
from fsl.config import TrainConfig
from fsl.data import DataSet
from fsl.data.episodes import EpisodeSampler
from fsl.errors import UsageError
from fsl.models.classifier import FewShotClassifier, build_model
from fsl.pretrain import check_pretraining
from fsl.runtime import resolve_precision, set_deterministic


@dataclass
class TrainingSetup:
    """Everything checked and resolved before a run starts: a bad option never opens a run."""

    cfg: TrainConfig
    data: DataSet
    device: torch.device
    precision: str
    model: FewShotClassifier
    test_data: DataSet | None = None  # --test-data; None: the test split of `data`
    handed_in: bool = False           # the data sets were read by the caller, not from cfg.data / cfg.test_data

    @property
    def test_set(self) -> DataSet:
        return self.test_data or self.data


def prepare_training(cfg: TrainConfig, device: torch.device | None = None, data: DataSet | None = None,
                     test_data: DataSet | None = None) -> TrainingSetup:
    """Validate the config against the data and build the model; raises UsageError/DataError.
    `device` overrides cfg.device (torchrun gives each rank its own); `data` and `test_data`, data
    sets already loaded, replace reading `cfg.data` and `cfg.test_data`."""
    cfg.validate()
    cfg = cfg.resolved()
    device = device or device_option(cfg.device)
    try:
        precision = resolve_precision(cfg.precision, device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    ratios = cfg.split_ratios
    if ratios is not None and (ratios[0] == 0 or ratios[1] == 0):
        raise UsageError(f"--split-ratio {cfg.split_ratio}: training needs train and val classes (shares > 0)")
    handed_in = data is not None or test_data is not None
    data = data or load_data(cfg)
    test_data = test_data or load_test_data(cfg, data)
    # Building the samplers checks ways and shots + queries against every split used.
    if cfg.epochs:  # `fsl pretrain` draws no training episodes
        EpisodeSampler(data.split("train"), cfg.train_shape, split="train")
    EpisodeSampler(data.split("val"), cfg.test_shape, split="val", option_prefix="test-")
    EpisodeSampler(test_data.split("test"), cfg.test_shape, split="test", option_prefix="test-")
    if cfg.pretrain_epochs:
        check_pretraining(cfg, data.split("train"))
    set_deterministic(cfg.deterministic)
    try:
        model = build_model(cfg, data, device, precision)
    except ValueError as exc:  # e.g. an encoder that cannot take this image size
        raise UsageError(f"--encoder {cfg.encoder}: {exc}") from None
    if cfg.init:
        _initialise_from(model, cfg.init)
    return TrainingSetup(cfg, data, device, precision, model, None if test_data is data else test_data, handed_in)


def shared_class_names(setup: TrainingSetup) -> list[str]:
    """Class names the --test-data shares with the training data (often leakage)."""
    if setup.test_data is None:
        return []
    seen = {name for split in setup.data.splits.values() for name in split.class_names}
    return sorted(seen & set(setup.test_data.split("test").class_names))


def _initialise_from(model: FewShotClassifier, spec: str) -> None:
    """Copy a trained model's encoder (and generator, if it has a compatible one) into `model`."""
    try:
        source = load_model(spec)
    except UsageError as exc:
        reason = str(exc).removeprefix("--model ").removeprefix(f"{spec}: ").removeprefix(f"{spec} is ")
        raise UsageError(f"--init {spec}: {reason}") from None
    if _encoder_shape(model) != _encoder_shape(source):
        raise UsageError(f"--init {spec}: incompatible model: it is {_encoder_identity(source)}, "
                         f"this run needs {_encoder_identity(model)}")
    model.encoder.load_state_dict(source.encoder.state_dict())
    if model.hallucinator is not None and source.hallucinator is not None and \
            type(source.hallucinator) is type(model.hallucinator):
        model.hallucinator.load_state_dict(source.hallucinator.state_dict())


def _encoder_shape(model: FewShotClassifier) -> tuple:
    """What must match to copy one model's encoder weights into another: the encoder, the images
    and every weight's name and shape (so a setting that shapes no weight, such as a drop rate,
    does not stand in the way)."""
    weights = tuple((k, tuple(v.shape)) for k, v in model.encoder.state_dict().items())
    return model.config["encoder"], model.config["channels"], model.config["image_size"], weights


def _encoder_identity(model: FewShotClassifier) -> str:
    """A model's encoder as a user reads it (the settings not at their defaults)."""
    from fsl.components import ENCODERS

    name = model.config["encoder"]
    defaults = {k: spec.default for k, spec in ENCODERS.settings(name).items()} if name in ENCODERS else {}
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in model.config["encoder_args"].items() if defaults.get(k, object()) != v)
    return (f"{model.config['encoder']}{f' ({settings})' if settings else ''} on {model.config['channels']}-channel "
            f"{model.config['image_size']}px images ({model.feature_dim}-d features)")
