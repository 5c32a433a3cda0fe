"""fsl.diagnostics: hand-computed cases, the generic mixing weight, and the real model path."""

import math

import pytest
import torch

from fsl.components import HALLUCINATORS
from fsl.config import ModelSpec
from fsl.diagnostics import (
    METRICS,
    diagnostic_sums,
    diagnostics_from_sums,
    episode_prototypes,
    feature_diagnostics,
    hallucination_diagnostics,
    mix_weight,
)
from fsl.models.classifier import FewShotClassifier, model_config
from fsl.models.distances import logits
from tests.conftest import noise_keys


def t(rows):
    return torch.tensor([rows], dtype=torch.float64)


def test_diagnostics_of_a_hand_computed_episode():
    # class 0 real (0,0), (2,0): mean (1,0); class 1 real (10,0), (12,0): mean (11,0).
    # Between-class distance 10; every real point is 1 from its mean: sigma_real = 1.
    real, real_labels = t([[0, 0], [2, 0], [10, 0], [12, 0]]), torch.tensor([[0, 0, 1, 1]])
    # hallucinations: class 0 (1,1), (1,3): mean (1,2), 2 from the real mean, each point 1 from it;
    # class 1 (11,0) twice: mean (11,0), offset 0, spread 0.
    fake, fake_labels = t([[1, 1], [1, 3], [11, 0], [11, 0]]), torch.tensor([[0, 0, 1, 1]])
    # the same seeds with two noises: rows 1 and 0 apart: RMS = sqrt(1/2)
    a, b = t([[0, 0], [5, 5]]), t([[1, 0], [5, 5]])
    out = feature_diagnostics(real, real_labels, fake, fake_labels, a, b, ways=2)
    assert out["halluc_mean_offset"] == pytest.approx((2 + 0) / 2 / 10)          # 0.1
    assert out["halluc_spread_ratio"] == pytest.approx(math.sqrt((1 + 1 + 0 + 0) / 4) / 1)
    assert out["halluc_collapse"] == pytest.approx(1 - math.sqrt(0.5) / (math.sqrt(2) * 1))  # 0.5
    assert "halluc_prototype_offset" not in out  # no prototypes given
    # real prototypes (0,0) and (11,0): 1 and 0 from the class means; final (1,1) and (11,3): 1 and 3
    with_protos = diagnostics_from_sums(diagnostic_sums(real, real_labels, fake, fake_labels, a, b, 2,
                                                        t([[0, 0], [11, 0]]), t([[1, 1], [11, 3]])))
    assert with_protos["halluc_support_offset"] == pytest.approx((1 + 0) / 2 / 10)
    assert with_protos["halluc_prototype_offset"] == pytest.approx((1 + 3) / 2 / 10)


def test_a_generator_that_ignores_its_noise_is_fully_collapsed_and_wide_noise_is_not():
    real, labels = torch.randn(1, 20, 8), torch.arange(2).repeat(10)[None]
    same = torch.randn(1, 6, 8)
    assert feature_diagnostics(real, labels, real, labels, same, same, 2)["halluc_collapse"] == 1.0
    far = feature_diagnostics(real, labels, real, labels, same, same + 100, 2)
    assert far["halluc_collapse"] == 0.0                                           # clipped at 0
    assert far["halluc_mean_offset"] == pytest.approx(0) and far["halluc_spread_ratio"] == pytest.approx(1)


def classifier(kind, m):
    torch.manual_seed(0)
    return FewShotClassifier(model_config(ModelSpec(hallucinator=kind, M=m), image_size=16, channels=3,
                                          mean=[0.5] * 3, std=[0.25] * 3, precision="fp32")).eval()


@pytest.mark.parametrize("shots, m", [(1, 100), (5, 10)])
def test_mix_weight_is_read_off_any_generators_combine(shots, m):
    assert mix_weight(classifier("wang", m).hallucinator, shots, m) == pytest.approx(m / (shots + m))
    improved = classifier("improved", m).hallucinator
    with torch.no_grad():
        improved.mix_logit.fill_(0.7)
    assert mix_weight(improved, shots, m) == pytest.approx(torch.sigmoid(torch.tensor(0.7)).item())


@pytest.mark.parametrize("kind", sorted(HALLUCINATORS))
def test_episode_prototypes_are_the_ones_the_classifier_scores_with(kind):
    model = classifier(kind, 4)
    if kind == "calibrated":  # base-class statistics, as training gathers them: prototypes move
        for buffer, value in (("grand_mean", 0.5), ("within_var", 0.1), ("between_var", 0.1)):
            getattr(model.hallucinator, buffer).fill_(value)
    support, labels = torch.rand(2, 10, model.feature_dim), torch.arange(5).repeat_interleave(2).expand(2, -1)
    queries = torch.rand(2, 7, model.feature_dim)
    real, final, (fake, _) = episode_prototypes(model, support, labels, 5, keys=noise_keys(3, 2))
    expected = model.logits_from_features(support, labels, queries, 5, keys=noise_keys(3, 2))
    assert torch.allclose(logits(queries, final, model.config["distance"]), expected, rtol=1e-5, atol=1e-4)
    assert fake.shape == (2, 20, model.feature_dim) and not torch.allclose(real, final)


@pytest.mark.parametrize("kind", sorted(HALLUCINATORS))
def test_model_diagnostics_on_test_episodes_are_in_their_ranges(kind, tiny_dataset):
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import sample_episodes

    model = FewShotClassifier.for_data(tiny_dataset, hallucinator=kind, M=6).eval()
    store = tiny_dataset.split("test")
    episodes = sample_episodes(store, EpisodeShape(5, 2, 3), 10, seed=2, split="test")
    out = hallucination_diagnostics(model, store, episodes, noise_seed=2, batch=4)
    weightless = kind == "calibrated"  # a sampler with no weights cannot collapse: no such metric
    assert set(out) == set(METRICS) - ({"halluc_collapse"} if weightless else set())
    assert out["halluc_mean_offset"] >= 0 and out["halluc_spread_ratio"] >= 0
    assert weightless or 0 <= out["halluc_collapse"] <= 1
    assert 0 <= out["halluc_mix_weight"] <= 1
    assert out["halluc_support_offset"] > 0 and out["halluc_prototype_offset"] >= 0
    assert out == hallucination_diagnostics(model, store, episodes, noise_seed=2, batch=4)  # seeded: repeatable
    assert hallucination_diagnostics(FewShotClassifier.for_data(tiny_dataset), store, episodes) == {}
