"""--compile: the whole training step (gradients zeroed, forward, loss, backward, Adam's step) through
torch.compile gives the training of the eager step, alone and with hallucination, augmentation,
several episodes per step and a resume; a step that cannot be compiled falls back to the eager
step exactly. The backend here is Dynamo's `eager` (Dynamo traces and replays the captured graphs
with PyTorch's own kernels): Inductor's C++ build takes minutes on a CI CPU, and CUDA graphs
(the backend on CUDA) need a GPU, so these tests cover the torch.compile path only; BENCHMARKS.md
times the real one on a GPU."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fsl.runtime
from fsl.config import TrainConfig
from fsl.models.classifier import build_model
from fsl.runtime import default_dtype
from fsl.train import EpisodeTrainer

CASES = {"plain": {}, "hallucination-augment-two-episodes": {"hallucinator": "wang", "M": 3, "augment": "omniglot",
                                                           "episodes_per_step": 2},
         "calibrated-split-batch-norm": {"hallucinator": "calibrated", "M": 3, "batch_norm": "split"}}
FULL = "hallucination-augment-two-episodes"


@pytest.fixture
def graphs(monkeypatch):
    """torch.compile with a backend that records each graph Dynamo captured, then runs it eagerly."""
    captured: list[torch.fx.GraphModule] = []

    def backend(graph: torch.fx.GraphModule, inputs):
        captured.append(graph)
        return graph.forward

    monkeypatch.setattr(fsl.runtime, "compile_step", lambda step, device: torch.compile(step, backend=backend))
    torch._dynamo.reset()
    yield captured
    torch._dynamo.reset()


def config(case: str, compile: str, precision: str = "fp64") -> TrainConfig:
    return TrainConfig(image_size=16, queries=3, precision=precision, device="cpu", seed=4, compile=compile,
                       lr_step=2, **CASES[case])


def trainer_for(cfg: TrainConfig, data) -> EpisodeTrainer:
    torch.manual_seed(0)
    return EpisodeTrainer(build_model(cfg, data, "cpu", cfg.precision), data.split("train"), cfg, torch.device("cpu"))


def run_steps(trainer: EpisodeTrainer, n: int) -> list[float]:
    torch.manual_seed(1)  # the hallucinators' dropout draws from the global generator
    return [float(trainer.run(1)[0]) for _ in range(n)]


@pytest.fixture
def fp64_process():
    """Float64 as the default dtype while the test runs. Compiled, Adam computes its bias corrections
    (1 - 0.999^step: cancellation) in tensors of the default dtype, eagerly in Python floats; with a
    float32 default the two steps differ by ~1e-5 relative (1e-6 in the weights after three steps,
    measured), with float64 by rounding. So an fp64 comparison compares the step, not that."""
    with default_dtype(torch.float64):
        yield


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_compiled_steps_give_the_losses_and_weights_of_the_eager_step(case, tiny_dataset, graphs, fp64_process):
    """fp64, three steps (the learning rate halves after two): the same losses to 1e-9 relative
    and the same weights and BatchNorm statistics to 1e-9 (1e-8 absolute: a convolution's bias
    before BatchNorm has a true gradient of 0, rounding noise that Adam turns into a step); and
    the compiled step really ran compiled: Dynamo captured the encoder's convolutions and Adam's
    update."""
    eager = trainer_for(config(case, "off"), tiny_dataset)
    compiled = trainer_for(config(case, "on"), tiny_dataset)
    assert compiled.whole_step and not eager.whole_step
    assert run_steps(compiled, 3) == pytest.approx(run_steps(eager, 3), rel=1e-9)
    for (key, a), b in zip(compiled.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-8), key
    code = "\n".join(g.code for g in graphs)
    assert "conv2d" in code and "addcdiv" in code and compiled.take_step.fallback is None


def test_a_resumed_compiled_run_continues_as_the_uninterrupted_one(tiny_dataset, graphs, fp64_process):
    """Two compiled steps, the trainer's state through a new trainer (as --resume does), two more:
    the weights of four uninterrupted eager steps."""
    whole = trainer_for(config(FULL, "off"), tiny_dataset)
    run_steps(whole, 4)
    first = trainer_for(config(FULL, "on"), tiny_dataset)
    run_steps(first, 2)
    state, weights = copy.deepcopy(first.state()), copy.deepcopy(first.model.state_dict())
    torch._dynamo.reset()  # a new process
    second = trainer_for(config(FULL, "on"), tiny_dataset)
    second.model.load_state_dict(weights)
    second.load_state(state)  # the global generator too (the hallucinator's dropout)
    [float(second.run(1)[0]) for _ in range(2)]
    for (key, a), b in zip(second.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-8), key


def test_a_step_that_cannot_be_compiled_is_undone_and_runs_eagerly(tiny_dataset, monkeypatch):
    """A compiler that fails after the step has half run (the weights moved, the generators drawn):
    the trainer puts everything back, warns once and trains exactly as the eager step does."""
    def failing(step, device):
        def compiled(*args):
            step(*args)  # the step's effects happen, then the "compiler" fails
            raise RuntimeError("backend cannot lower this operator\nsecond line")
        return compiled

    monkeypatch.setattr(fsl.runtime, "compile_step", failing)
    eager = trainer_for(config(FULL, "off"), tiny_dataset)
    fallback = trainer_for(config(FULL, "on"), tiny_dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_steps(fallback, 3) == pytest.approx(run_steps(eager, 3), rel=1e-12)
    assert [str(w.message) for w in caught] == [
        "--compile: the training step could not be compiled (RuntimeError: backend cannot lower this operator); "
        "it runs eagerly"]
    assert fallback.take_step.fallback == "RuntimeError: backend cannot lower this operator"
    for a, b in zip(fallback.model.state_dict().values(), eager.model.state_dict().values()):
        assert torch.equal(a, b)
