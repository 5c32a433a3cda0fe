"""Extending fsl costs one class and one registration line: a hallucinator, an encoder and a data
format defined here, registered with one line each, work through the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

from fsl.cli import cli
from fsl.components import ENCODERS, HALLUCINATORS, READERS
from fsl.data.readers import ArrayReader
from fsl.models.hallucinator import Hallucinator
from tests.conftest import TINY, all_runs


class ShrinkToMean(Hallucinator):
    """Hallucinates around the class mean with a learned spread."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.spread = nn.Parameter(torch.tensor(0.1))

    def forward(self, seeds, noise, class_means):
        return class_means + self.spread * noise


class TinyEncoder(nn.Module):
    """One conv and global average pooling: 8-d features at any size."""

    def __init__(self, in_channels: int, image_size: int, width: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.out_dim = 8

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((-2, -1))


class NpzSplits(ArrayReader):
    """A folder of train.npz, val.npz and test.npz, each with `images` (uint8 [N, H, W, 3]) and
    `labels` (a class name per image)."""

    def detects(self, root: Path) -> bool:
        return root.is_dir() and all((root / f"{split}.npz").is_file() for split in ("train", "val", "test"))

    def arrays(self, root: Path):
        splits = {}
        for split in ("train", "val", "test"):
            with np.load(root / f"{split}.npz") as arrays:
                splits[split] = (arrays["images"], [str(name) for name in arrays["labels"]])
        return splits


@pytest.fixture
def registered():
    saved = {r: dict(r._entries) for r in (HALLUCINATORS, ENCODERS, READERS)}
    HALLUCINATORS.register("shrink-to-mean", ShrinkToMean)   # the one line of a new hallucinator
    ENCODERS.register("tiny", TinyEncoder)                   # the one line of a new encoder
    READERS.register("npz-splits", NpzSplits)                # the one line of a new data format
    yield
    for registry, entries in saved.items():
        registry._entries = entries


def test_a_hallucinator_and_an_encoder_registered_in_one_line_each_work_through_the_cli(tracking, registered):
    result = CliRunner().invoke(cli, ["hallucinate", *TINY, "--encoder", "tiny", "--hallucinator", "shrink-to-mean",
                                      "-M", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "test without hallucination" in result.output
    client = MlflowClient()
    [run] = all_runs(client)
    assert run.data.params["encoder"] == "tiny" and run.data.params["hallucinator"] == "shrink-to-mean"
    assert run.data.params["feature_dim"] == "8"
    from fsl.commands.inputs import load_model

    model = load_model(f"runs:/{run.info.run_id}")
    assert isinstance(model.encoder, TinyEncoder) and isinstance(model.hallucinator, ShrinkToMean)
    assert model.hallucinator.spread.item() != pytest.approx(0.1)  # it trained with the encoder
    listed = CliRunner().invoke(cli, ["hallucinate", "--help"]).output
    assert "shrink-to-mean" in listed


def test_an_unregistered_name_is_refused_listing_the_registered_ones(tracking):
    result = CliRunner().invoke(cli, ["protonet", *TINY, "--encoder", "tiny"])
    choices = ", ".join(f"'{name}'" for name in ENCODERS)  # whatever encoders are registered
    assert result.exit_code == 2 and f"'tiny' is not one of {choices}" in result.output


def npz_data_set(root: Path) -> Path:
    """6 train, 5 val and 5 test classes of 4 flat-coloured 24x24 images each, as .npz files."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, classes in (("train", 6), ("val", 5), ("test", 5)):
        names = [f"{split}{c}" for c in range(classes) for _ in range(4)]
        colours = rng.integers(0, 256, (classes, 1, 1, 3))
        images = np.repeat(colours, 4, axis=0) + rng.integers(0, 20, (classes * 4, 24, 24, 3))
        np.savez(root / f"{split}.npz", images=images.clip(0, 255).astype(np.uint8), labels=np.array(names))
    return root


def test_a_format_registered_in_one_line_is_detected_read_cached_and_trained_on(tracking, registered, tmp_path):
    root = npz_data_set(tmp_path / "npz")
    shown = CliRunner().invoke(cli, ["data", "inspect", str(root)])
    assert shown.exit_code == 0 and "format: npz-splits" in shown.output, shown.output
    assert "6 classes, 24 images" in shown.output
    result = CliRunner().invoke(cli, ["protonet", *TINY, "--data", str(root), "--format", "npz-splits",
                                      "--test-ways", "5", "--ways", "5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [run] = all_runs(MlflowClient())
    assert run.data.params["format"] == "npz-splits" and run.info.status == "FINISHED"
    refused = CliRunner().invoke(cli, ["protonet", *TINY, "--data", str(root), "--val-share", "0.3"])
    assert refused.exit_code == 2 and "--val-share: the npz-splits format does not use it (it applies to course" \
        in refused.output
    listed = CliRunner().invoke(cli, ["protonet", "--help"]).output
    assert "npz-splits" in listed
