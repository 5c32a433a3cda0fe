"""Extending fsl costs one class and one registration line: a hallucinator and an encoder defined
here, registered with one line each, train, test, checkpoint and reload through the CLI."""

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

from fsl.cli import cli
from fsl.models.hallucinator import Hallucinator
from fsl.registry import ENCODERS, HALLUCINATORS
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


@pytest.fixture
def registered():
    saved = {r: dict(r._entries) for r in (HALLUCINATORS, ENCODERS)}
    HALLUCINATORS.register("shrink-to-mean", ShrinkToMean)   # the one line of a new hallucinator
    ENCODERS.register("tiny", TinyEncoder)                   # the one line of a new encoder
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
    from fsl.commands.common import load_model

    model = load_model(f"runs:/{run.info.run_id}")
    assert isinstance(model.encoder, TinyEncoder) and isinstance(model.hallucinator, ShrinkToMean)
    assert model.hallucinator.spread.item() != pytest.approx(0.1)  # it trained with the encoder
    listed = CliRunner().invoke(cli, ["hallucinate", "--help"]).output
    assert "shrink-to-mean" in listed


def test_an_unregistered_name_is_refused_listing_the_registered_ones(tracking):
    result = CliRunner().invoke(cli, ["protonet", *TINY, "--encoder", "tiny"])
    assert result.exit_code == 2 and "'tiny' is not one of 'conv4', 'resnet12'" in result.output
