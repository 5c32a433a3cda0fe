"""`--episodes-per-step E` runs its E episodes through the encoder as one batch, BatchNorm taking
each episode's statistics, each episode augmented and keyed by its own generator: the step equals
E episodes one after the other, with and without hallucination and augmentation."""

from __future__ import annotations

import copy

import pytest
import torch

from fsl.config import TrainConfig
from fsl.models.classifier import build_model
from fsl.train import EpisodeTrainer

CASES = {"plain": {}, "augment": {"augment": "omniglot"}, "wang": {"hallucinator": "wang", "M": 3},
         "improved": {"hallucinator": "improved", "M": 3}, "calibrated": {"hallucinator": "calibrated", "M": 3},
         "split-batch-norm": {"batch_norm": "split"}}  # this one loops (EpisodeLoss.batched says why)


def steps(cfg: TrainConfig, data, batched: bool, n: int):
    """The losses of `n` steps, the gradients of the first (before Adam moves anything) and the
    weights after the last."""
    torch.manual_seed(0)
    model = build_model(cfg, data, "cpu", cfg.precision)
    trainer = EpisodeTrainer(model, data.split("train"), cfg, torch.device("cpu"))
    trainer.batch_episodes = batched
    grads: list[dict] = []
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        if not grads:
            grads.append({k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step  # type: ignore[method-assign]
    torch.manual_seed(1)  # the hallucinators' dropout: the global generator, in the same order
    losses = [float(trainer.run(1)[0]) for _ in range(n)]
    return losses, grads[0], copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_batched_step_equals_the_episodes_one_after_the_other_in_fp32(case, tiny_dataset):
    """One step in fp32: the loss within 1e-5 relative, and the gradient within 1e-5 of the
    gradient's norm, parameter by parameter (elementwise, a near-zero element, such as a
    convolution's bias before BatchNorm whose true gradient is 0, is rounding noise in both)."""
    cfg = TrainConfig(image_size=16, queries=3, episodes_per_step=3, precision="fp32", device="cpu", seed=4,
                      **CASES[case])
    (loop_loss,), loop_grads, _ = steps(cfg, tiny_dataset, False, 1)
    (batched_loss,), batched_grads, _ = steps(cfg, tiny_dataset, True, 1)
    assert batched_loss == pytest.approx(loop_loss, rel=1e-5)
    assert batched_grads.keys() == loop_grads.keys()
    norm = torch.cat([g.flatten() for g in loop_grads.values()]).norm()
    for key, grad in loop_grads.items():
        assert (batched_grads[key] - grad).norm() <= 1e-5 * norm, key


@pytest.mark.parametrize("case", ["plain", "wang", "augment", "split-batch-norm"])
def test_three_batched_steps_give_the_weights_of_the_loop_in_fp64(case, tiny_dataset):
    """Three steps in fp64: the same weights to 1e-9 (Adam turns fp32 rounding noise in a
    near-zero gradient into a full step, so fp32 weights after Adam only agree where gradients do)."""
    cfg = TrainConfig(image_size=16, queries=3, episodes_per_step=3, precision="fp64", device="cpu", seed=4,
                      **CASES[case])
    loop_losses, _, loop_state = steps(cfg, tiny_dataset, False, 3)
    batched_losses, _, batched_state = steps(cfg, tiny_dataset, True, 3)
    assert batched_losses == pytest.approx(loop_losses, rel=1e-6)  # the losses are summed in float32
    for key, value in loop_state.items():
        if value.is_floating_point():
            assert torch.allclose(batched_state[key], value, rtol=1e-9, atol=1e-8), key
        else:
            assert torch.equal(batched_state[key], value), key


@pytest.mark.parametrize("momentum", [0.1, None, 0.0])
def test_episode_batch_norm_moves_running_statistics_as_e_calls_would_for_any_momentum(momentum):
    """momentum None is BatchNorm's cumulative average and 0 keeps the statistics: the grouped
    layer follows nn.BatchNorm2d called once per episode, in both, and its output is each
    episode's own normalisation."""
    from fsl.models.encoders import EpisodeBatchNorm2d

    grouped, reference = EpisodeBatchNorm2d(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    x = torch.randn(3 * 4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1
    grouped.episodes = 3
    out = grouped(x)
    expected = torch.cat([reference(x[i * 4:(i + 1) * 4]) for i in range(3)])
    assert torch.allclose(out, expected, atol=1e-5)
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(grouped, name), getattr(reference, name), atol=1e-6), name
    assert int(grouped.num_batches_tracked) == int(reference.num_batches_tracked) == 3
