import math

import numpy as np
import pytest
import torch

from fsl.evaluate import evaluate, mean_ci95, sample_episodes
from fsl.models.classifier import load_checkpoint


def test_mean_ci95_matches_a_hand_computation():
    values = [40.0, 60.0, 50.0, 70.0]
    mean = 55.0
    std = math.sqrt(((40 - 55) ** 2 + (60 - 55) ** 2 + (50 - 55) ** 2 + (70 - 55) ** 2) / 3)  # ddof=1
    got_mean, got_ci = mean_ci95(values)
    assert got_mean == pytest.approx(mean)
    assert got_ci == pytest.approx(1.96 * std / 2)


def test_mean_ci95_of_one_value_has_no_interval():
    mean, ci = mean_ci95([42.0])
    assert mean == 42.0 and math.isnan(ci)


def test_evaluation_repeats_exactly_and_batching_changes_nothing(trained_checkpoint, tiny_dataset):
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import episode_correct

    model = load_checkpoint(trained_checkpoint)
    store = tiny_dataset.split("test")
    episodes = sample_episodes(store, EpisodeShape(5, 1, 3), 12, seed=5, split="test")
    first, second = evaluate(model, store, episodes), evaluate(model, store, episodes)
    assert np.array_equal(first.accs, second.accs)
    one_at_a_time = episode_correct(model, store, episodes, batch=1)
    assert torch.equal(one_at_a_time.double() * 100 / 15, torch.from_numpy(first.accs))
    assert first.accs.shape == (12,) and ((first.accs >= 0) & (first.accs <= 100)).all()
