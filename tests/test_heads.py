"""Heads as components: every registered head keeps the contract through the model (shape,
finite, classes permuted, any order of support and queries), hallucinated features feed it,
training and validation stay the prototype's, and `fsl evaluate --head a,b,c` encodes once."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from fsl.components import HEADS
from fsl.models.classifier import FewShotClassifier
from tests.conftest import TINY, all_runs

FAST = {"tim": {"iterations": 30}, "logistic": {"steps": 30}}


def model_with(head: str, data, **spec) -> FewShotClassifier:
    torch.manual_seed(0)
    return FewShotClassifier.for_data(data, head=head, head_args=FAST.get(head, {}), **spec).eval()


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_classifies_any_order_of_support_and_queries_alike(head, tiny_dataset):
    model = model_with(head, tiny_dataset, hallucinator="calibrated", M=4)
    for name, value in (("grand_mean", 0.3), ("within_var", 0.2), ("between_var", 0.05)):
        getattr(model.hallucinator, name).fill_(value)
    images = tiny_dataset.split("test").images
    support, queries = images[[0, 60, 120, 180, 240]], images[[5, 65, 125, 185, 245, 6, 66, 126]]
    labels = ["owl", "cat", "emu", "fox", "dog"]
    first = model.classify(support, labels, queries)
    assert first.probs.shape == (8, 5) and torch.isfinite(first.probs).all()
    order, reverse = torch.tensor([3, 0, 4, 1, 2]), torch.arange(7, -1, -1)
    second = model.classify(support[order], [labels[i] for i in order], queries[reverse])
    assert [second.labels[i] for i in reverse] == first.labels
    columns = [[labels[i] for i in order].index(c) for c in labels]
    assert torch.allclose(second.probs[reverse][:, columns], first.probs, atol=1e-4)


def test_training_and_validation_are_the_prototypes_whatever_the_head(tiny_dataset):
    model = model_with("logistic", tiny_dataset)
    s, q, labels = torch.rand(1, 5, 64), torch.rand(1, 6, 64), torch.arange(5)[None]
    proto = model_with("prototype", tiny_dataset).logits_from_features(s, labels, q, 5)
    assert not torch.allclose(model.logits_from_features(s, labels, q, 5), proto)
    with model.using_head("prototype"):
        assert torch.allclose(model.logits_from_features(s, labels, q, 5), proto)
    assert model.config["head"] == "logistic"  # put back
    model.train()
    assert torch.allclose(model.logits_from_features(s, labels, q, 5), proto)  # training: the prototype rule


def test_hallucinated_features_feed_the_head_with_their_weight(tiny_dataset):
    model = model_with("logistic", tiny_dataset, hallucinator="calibrated", M=6)
    for name, value in (("grand_mean", 0.3), ("within_var", 0.2), ("between_var", 0.05)):
        getattr(model.hallucinator, name).fill_(value)
    s, q, labels = torch.rand(1, 5, 64), torch.rand(1, 6, 64), torch.arange(5)[None]
    from tests.conftest import noise_keys

    keys = noise_keys(0, 1)
    with_fake = model.logits_from_features(s, labels, q, 5, keys=keys)
    assert not torch.allclose(with_fake, model.logits_from_features(s, labels, q, 5, M=0, keys=keys))
    model.set_head("logistic", steps=30, hallucinated_weight=0.0)  # weight 0: as if there were none
    assert torch.allclose(model.logits_from_features(s, labels, q, 5, keys=keys),
                          model.logits_from_features(s, labels, q, 5, M=0, keys=keys), atol=1e-5)


def test_evaluate_scores_every_head_on_one_encoder_pass_and_labels_the_transductive(tracking, trained_checkpoint,
                                                                                       monkeypatch):
    import fsl.evaluate

    calls = []
    real = fsl.evaluate.encode_rows
    monkeypatch.setattr(fsl.evaluate, "encode_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(trained_checkpoint), "--image-size", "16",
                                      "--test-episodes", "6", "--test-queries", "3", "--head", "prototype,logistic,tim",
                                      "--head-arg", "iterations=20"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # one encoder pass over the distinct images, for three heads
    [run] = all_runs(MlflowClient())
    metrics = run.data.metrics
    assert {"test_acc_prototype", "test_acc_logistic", "test_acc_tim"} <= set(metrics)
    assert metrics["test_acc"] == metrics["test_acc_prototype"] and run.data.params["head"] == "prototype,logistic,tim"
    assert "tim (transductive)" in run.data.tags["fsl.result"] and "tim (transductive)" in result.output


def test_a_training_run_with_a_head_logs_it_and_a_sweep_over_heads_trains_once(tracking):
    result = CliRunner().invoke(cli, ["sweep", *TINY, "--param", "head=prototype,logistic"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    children = [r for r in all_runs(MlflowClient()) if r.data.tags.get("mlflow.parentRunId")]
    by_head = {r.data.params.get("head", "prototype"): r for r in children}
    assert set(by_head) == {"prototype", "logistic"}
    assert by_head["logistic"].data.tags["fsl.trained_in"] == by_head["prototype"].info.run_id
    assert "head=logistic" in by_head["logistic"].info.run_name
    # the same trained weights, validated by the prototype rule: the same val accuracy
    assert by_head["logistic"].data.metrics["best_val_acc"] == by_head["prototype"].data.metrics["best_val_acc"]


@pytest.mark.parametrize("head", HEADS.names())
def test_episodes_in_cpu_chunks_get_the_answers_of_one_batch(head):
    """Chunking (`Head.cpu_chunk_bytes`) only splits the batch: a chunk of 2 episodes, and of 1,
    answers each episode as the whole batch does, hallucinated-row weights sliced alike."""
    g = torch.Generator().manual_seed(0)
    support, queries = torch.rand(5, 10, 8, generator=g), torch.rand(5, 6, 8, generator=g)
    labels = torch.arange(5).repeat(2).expand(5, -1).contiguous()
    weights = torch.rand(5, 10, generator=g)
    whole = HEADS.create(head, **FAST.get(head, {}))
    whole.cpu_chunk_bytes = None
    expected = whole(support, labels, queries, 5, weights)
    for episodes in (2, 1):
        chunked = HEADS.create(head, **FAST.get(head, {}))
        chunked.cpu_chunk_bytes = episodes * 16 * 8 * 4  # (S + Q) D fp32 bytes per episode
        assert torch.allclose(chunked(support, labels, queries, 5, weights), expected, atol=1e-5, rtol=1e-5)


def test_only_a_head_whose_reference_wants_other_features_warns():
    from fsl.components import HEADS
    from fsl.config import head_feature_warning

    assert [h for h in HEADS.names() if HEADS[h].wants_features] == ["laplacian"]
    assert head_feature_warning("laplacian", "cl2n") is None
    assert head_feature_warning("laplacian", "none").endswith("(use --feature-transform cl2n)")
    assert head_feature_warning("laplacian", "none", trained=True).endswith(
        "(use a model trained with --feature-transform cl2n)")
    assert all(head_feature_warning(h, "none") is None for h in HEADS.names() if h != "laplacian")
