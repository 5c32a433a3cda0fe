"""The settings issue 32 screens against another library's ProtoNet: a plain Euclidean distance,
a fixed or learned logit scale (TADAM), [0, 1] inputs and BatchNorm over support and query apart."""

from __future__ import annotations

import torch

from fsl.config import ModelSpec, TrainConfig
from fsl.models.classifier import FewShotClassifier, load_checkpoint
from fsl.models.distances import euclidean, l2


def test_the_euclidean_distance_is_the_root_of_the_squared_one_with_a_finite_gradient_at_zero():
    q, p = torch.rand(2, 6, 8), torch.rand(2, 3, 8)
    assert torch.allclose(euclidean(q, p), torch.cdist(q, p), atol=1e-5)
    same = p.clone().requires_grad_()
    euclidean(same, p).sum().backward()
    assert torch.isfinite(same.grad).all()
    assert torch.allclose(euclidean(q, p) ** 2, l2(q, p).clamp_min(1e-12), atol=1e-5)


def test_a_fixed_logit_scale_multiplies_the_logits_and_a_learned_one_trains_and_is_saved(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    plain = FewShotClassifier.for_data(tiny_dataset).eval()
    scaled = FewShotClassifier.for_data(tiny_dataset, logit_scale=0.1).eval()
    scaled.load_state_dict(plain.state_dict())
    s, q, labels = torch.rand(1, 5, 8), torch.rand(1, 6, 8), torch.arange(5)[None]
    logits = plain.logits_from_features(s, labels, q, 5)
    assert torch.allclose(scaled.logits_from_features(s, labels, q, 5), 0.1 * logits)
    learned = FewShotClassifier.for_data(tiny_dataset, logit_scale=0.5, learn_logit_scale=True)
    assert any(p is learned.log_logit_scale for p in learned.parameters())
    assert torch.isclose(learned.log_logit_scale.exp(), torch.tensor(0.5))  # starts at --logit-scale
    loss = -learned.logits_from_features(s, labels, q, 5).logsumexp(-1).sum()
    loss.backward()
    assert learned.log_logit_scale.grad is not None and learned.log_logit_scale.grad != 0
    torch.save(learned.checkpoint(), tmp_path / "m.pt")
    again = load_checkpoint(tmp_path / "m.pt")
    assert again.config["learn_logit_scale"] and torch.equal(again.log_logit_scale, learned.log_logit_scale.detach())


def test_unit_inputs_are_not_normalised_and_the_options_default_to_euclidean_otherwise_snells():
    from fsl.data import load_dataset

    data = load_dataset("synthetic", image_size=16)
    model = FewShotClassifier.for_data(data, ModelSpec(input_norm="unit"))
    assert model.mean.eq(0).all() and model.std.eq(1).all()
    cfg = TrainConfig()
    assert (cfg.distance, cfg.logit_scale, cfg.learn_logit_scale, cfg.input_norm, cfg.batch_norm) == \
        ("euclidean", 1.0, False, "data", "episode")  # euclidean: issue 32 (BENCHMARKS.md section 10)
    # pre-training alone trains no episode: it keeps the squared distance's name (and its runs' identity)
    assert TrainConfig(epochs=0, pretrain_epochs=2).resolved().distance == "l2"
    assert TrainConfig(epochs=0, distance="cosine").resolved().distance == "cosine"  # another rule: kept
    assert TrainConfig(pretrain_epochs=2).resolved().distance == "euclidean"  # then episodes: trained with it
    assert TrainConfig(epochs=0, pretrain_epochs=2, hallucinator="calibrated", M=5).resolved().distance == "l2"


def test_split_batch_norm_encodes_support_and_query_apart_in_training_only(tiny_dataset):
    torch.manual_seed(0)
    model = FewShotClassifier.for_data(tiny_dataset)
    images = tiny_dataset.split("train").images
    support, query = images[:5][None], images[5:20][None]
    model.train()
    joint = model.embed_episode(support, query)
    split = model.embed_episode(support, query, split=True)
    assert not torch.allclose(joint[0], split[0])  # other batch statistics in training
    model.eval()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.embed_episode(support, query),
                                                               model.embed_episode(support, query, split=True)))
