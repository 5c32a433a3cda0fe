"""Backbones, pre-training, augmentation policies and test-time features (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from tests.conftest import TINY, all_runs

RESNET = ["--encoder", "resnet12", "--encoder-width", "0.25"]
PRETRAIN = ["--image-size", "16", "--epochs", "2", "--val-episodes", "3", "--test-episodes", "5",
            "--test-queries", "3", "--precision", "fp32", "--no-system-metrics"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def newest_run():
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1)[0]


# ----------------------------------------------------------------------------- the encoders
def test_resnet12_has_four_residual_stages_of_64_160_320_640_channels_and_pools_globally():
    from fsl.models.encoders import ResidualStage, ResNet12

    encoder = ResNet12(3, 84)
    stages = [m for m in encoder.modules() if isinstance(m, ResidualStage)]
    assert [s.body[0].out_channels for s in stages] == [64, 160, 320, 640]
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 12 and sum(c.kernel_size == (1, 1) for c in convs) == 4
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in encoder.modules()) == 8  # + one after each sum
    assert encoder.out_dim == 640
    for side in (16, 32, 84):  # global average pooling: the feature size does not follow the input
        assert ResNet12(3, side, width=0.25)(torch.randn(2, 3, side, side)).shape == (2, 160)


def test_a_width_multiplier_scales_every_stage_and_conv4():
    from fsl.models.encoders import Conv4, ResNet12

    narrow = ResNet12(1, 16, width=0.25)
    assert [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)][::4] == [16, 40, 80, 160]
    assert Conv4(3, 84, width=0.5).out_dim == 32 * 25


def test_the_encoder_registry_refuses_an_unknown_one_naming_the_choices():
    from fsl.models.encoders import build_encoder

    with pytest.raises(ValueError, match="conv4, resnet12"):
        build_encoder("vgg", 3, 32)
    with pytest.raises(ValueError, match="at least 16x16"):
        build_encoder("resnet12", 3, 8)


def test_dropblock_is_the_identity_in_eval_and_drops_about_its_rate_in_training():
    from fsl.models.encoders import DropBlock

    x = torch.ones(8, 16, 10, 10)
    block = DropBlock(0.2, block_size=3)
    assert torch.equal(block.eval()(x), x)
    torch.manual_seed(0)
    out = block.train()(x)
    dropped = (out == 0).float().mean().item()
    assert 0.1 < dropped < 0.3
    assert out.mean().item() == pytest.approx(1.0, rel=1e-4)  # rescaled: the expectation is kept


# -------------------------------------------------------------------------- augmentation
def test_standard_augmentation_repeats_from_a_seed_keeps_the_range_and_flips():
    from fsl.data.augment import colour_jitter, random_resized_crop_flip, standard_augment

    x = torch.rand(16, 3, 16, 16)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    z = (x - mean) / std
    a = standard_augment(z, torch.Generator().manual_seed(0), mean, std)
    assert torch.equal(a, standard_augment(z, torch.Generator().manual_seed(0), mean, std))
    assert not torch.allclose(a, standard_augment(z, torch.Generator().manual_seed(1), mean, std))
    pixels = a * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # a whole-image crop with a flip is the mirror image
    mirrored = random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = [torch.allclose(m, img.flip(-1), atol=1e-5) for m, img in zip(mirrored, x)]
    kept = [torch.allclose(m, img, atol=1e-5) for m, img in zip(mirrored, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    # no jitter range, no change
    assert torch.allclose(colour_jitter(x, None, 0.0, 0.0, 0.0), x, atol=1e-6)


def test_a_bare_augment_means_omniglot_and_no_augment_means_none(tracking):
    from fsl.config import TrainConfig

    invoke("protonet", *TINY, "--augment")
    assert newest_run().data.params["augment"] == "omniglot"
    invoke("protonet", *TINY, "--no-augment")
    assert newest_run().data.params["augment"] == "none"
    invoke("protonet", *TINY, "--augment", "standard")
    assert newest_run().data.params["augment"] == "standard"
    invoke("protonet", *TINY, "--augment", "omniglot", "--test-views", "2")
    assert newest_run().data.params["test_views"] == "2"
    assert TrainConfig(augment=True).augment == "omniglot" and TrainConfig(augment="false").augment == "none"


# ---------------------------------------------------------------------------- run identity
def test_params_at_their_pre_change_values_keep_the_config_hash_of_runs_made_before():
    """Golden hashes from commit 2572630 (before `encoder`, `encoder_width`, `feature_transform`,
    the pre-training options and the `augment` policies) for the same configurations."""
    from fsl.commands.run_identity import config_hash
    from fsl.config import TrainConfig

    extra = {"device_resolved": "cpu", "precision_resolved": "fp32", "image_size_resolved": 16, "feature_dim": 64,
             "world_size": 1}

    def hashed(**kw):  # runs of 2572630 trained with the squared distance, the default until issue 32
        return config_hash(TrainConfig(**{"distance": "l2"} | kw).resolved().to_params() | extra)

    assert hashed(image_size=16) == "01a3662f4cc59397"
    assert hashed(image_size=16, distance="euclidean") != "01a3662f4cc59397"
    assert hashed(image_size=16, augment="omniglot", hallucinator="calibrated", M=10) == "eea18367dbe0b224"
    # any other value is another configuration
    assert hashed(image_size=16, encoder="resnet12") != "01a3662f4cc59397"
    assert hashed(image_size=16, augment="standard") != "01a3662f4cc59397"
    assert hashed(image_size=16, feature_transform="cl2n") != "01a3662f4cc59397"
    assert hashed(image_size=16, pretrain_epochs=5) != "01a3662f4cc59397"
    assert hashed(image_size=16, augment="omniglot", hallucinator="calibrated", M=10, test_views=0) \
        == "eea18367dbe0b224"
    assert hashed(image_size=16, augment="omniglot", test_views=4) != hashed(image_size=16, augment="omniglot")


# ------------------------------------------------------------------ test-time augmentation
def test_test_views_average_each_image_with_fixed_views_in_eval_mode_only(tiny_dataset):
    from fsl.config import TrainConfig
    from fsl.data.augment import omniglot_augment
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import evaluate, sample_episodes
    from fsl.models.classifier import TEST_VIEW_SEED, build_model
    from fsl.runtime import make_generator

    model = build_model(TrainConfig(augment="omniglot", test_views=3), tiny_dataset).eval()
    assert model.config["test_views"] == 3 and model.config["augment"] == "omniglot"
    plain = build_model(TrainConfig(augment="omniglot"), tiny_dataset).eval()  # the same seed: the same weights
    images = tiny_dataset.split("test").images[:10]
    support, query = images[None, :4], images[None, 4:]
    with torch.no_grad():
        s, q = model.embed_episode(support, query)
        prepared = torch.cat([model.prepare(support[0]), model.prepare(query[0])])
        views = [omniglot_augment(prepared, make_generator(TEST_VIEW_SEED + k), model.mean, model.std, per_image=False)
                 for k in range(3)]
        by_hand = (model._encode(prepared) + sum(model._encode(v) for v in views)) / 4
        assert torch.allclose(torch.cat([s[0], q[0]]), by_hand, atol=1e-5)
        # an image's features do not depend on the other images it is embedded with
        alone = model.embed_episode(support[:, :1], query[:, :1])
        assert torch.allclose(alone[0][0, 0], s[0, 0], atol=1e-5) and torch.allclose(alone[1][0, 0], q[0, 0], atol=1e-5)
        s0, _ = plain.embed_episode(support, query)
        assert not torch.allclose(s, s0, atol=1e-3)                # the views change the features
        logits = model.episode_logits(support[0], torch.arange(4), query[0], 4)
        assert not torch.allclose(logits, plain.episode_logits(support[0], torch.arange(4), query[0], 4), atol=1e-3)
        model.train()
        assert torch.equal(model.embed_episode(support, query)[0], plain.train().embed_episode(support, query)[0])
    model.eval()
    store = tiny_dataset.split("test")
    episodes = sample_episodes(store, EpisodeShape(5, 1, 3), 6, seed=1, split="test")
    from fsl.evaluate import episode_correct
    assert torch.equal(episode_correct(model, store, episodes, batch=1), episode_correct(model, store, episodes))
    assert np.array_equal(evaluate(model, store, episodes).accs, evaluate(model, store, episodes).accs)


# ------------------------------------------------------------------ test-time features (CL2N)
def test_cl2n_centres_on_the_base_mean_and_normalises_at_test_time_only(tiny_dataset):
    from fsl.models.classifier import FewShotClassifier

    model = FewShotClassifier.for_data(tiny_dataset, feature_transform="cl2n", distance="l2")
    d = model.feature_dim
    model.set_base_mean(torch.full((d,), 2.0))
    support = torch.full((1, 2, d), 2.0)
    support[0, 0, 0], support[0, 1, 1] = 5.0, 3.0       # centred: 3 e0 and 1 e1 -> unit e0 and e1
    queries = torch.full((1, 1, d), 2.0)
    queries[0, 0, 0], queries[0, 0, 1] = 3.0, 2.9       # centred: (1, 0.9): nearer 3 e0 normalised, 1 e1 raw
    labels = torch.tensor([[0, 1]])
    assert model.eval().logits_from_features(support, labels, queries, 2).argmax(-1).item() == 0
    # in training the raw squared l2 distance decides: 4 + 0.81 to class 0, 1 + 0.01 to class 1
    raw = model.train().logits_from_features(support, labels, queries, 2)
    assert torch.allclose(raw[0, 0], -torch.tensor([4.81, 1.01]), atol=1e-3)


def test_a_cl2n_run_keeps_the_base_mean_of_its_final_encoder_in_the_checkpoint(tracking):
    from fsl.commands.inputs import load_model
    from fsl.models.classifier import FewShotClassifier
    from fsl.train import base_class_features

    invoke("protonet", *TINY, "--feature-transform", "cl2n")
    run = newest_run()
    model = load_model(f"runs:/{run.info.run_id}")
    assert model.config["feature_transform"] == "cl2n" and model.base_mean.abs().sum() > 0
    from fsl.data import load_dataset

    expected = base_class_features(model, load_dataset("synthetic", 16).split("train"))[0].mean(0)
    assert torch.allclose(model.base_mean, expected, atol=1e-5)
    assert not hasattr(FewShotClassifier.for_data(load_dataset("synthetic", 16)), "base_mean")


# --------------------------------------------------------------- ResNet-12 through the CLI
@pytest.mark.slow
def test_a_narrow_resnet12_trains_evaluates_and_registers_through_the_cli(tracking):
    invoke("protonet", *[a for a in TINY if a != "--no-register"], *RESNET)
    run = newest_run()
    assert run.data.params["encoder"] == "resnet12" and run.data.params["feature_dim"] == "160"
    assert run.info.run_name == "protonet-5w1s-euclidean-resnet12x0.25"
    out = invoke("evaluate", "--model", f"runs:/{run.info.run_id}", "--image-size", "16", "--test-episodes", "3")
    assert "test (5-way 1-shot 15-query)" in out.output
    import mlflow.pytorch

    model = mlflow.pytorch.load_model("models:/fsl-protonet@champion")
    assert type(model.encoder).__name__ == "ResNet12"
    from fsl.data import load_dataset

    images = load_dataset("synthetic", 16).split("test").images[:4]
    assert model.classify(images[:2], ["a", "b"], images).labels[:2] == ["a", "b"]


# ------------------------------------------------------------------ pre-train -> fine-tune
@pytest.mark.slow
def test_pretrain_then_fine_tune_then_register_then_load_and_classify(tracking):
    out = invoke("pretrain", *PRETRAIN, *RESNET, "--augment", "standard")
    assert "pre-training epoch 2/2" in out.output and "test (5-way 1-shot 3-query)" in out.output
    pre = newest_run()
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(pre.info.run_id, "pretrain_val_acc")] == [1, 2]
    assert pre.info.run_name == "pretrain-resnet12x0.25-e2" and pre.data.params["pretrain_epochs"] == "2"
    assert "ways" not in pre.data.params and "test_acc" in pre.data.metrics
    assert client.search_registered_models() == []  # pre-training registers nothing by default
    # the pre-trained encoder is what fine-tuning starts from
    from fsl.commands.inputs import load_model

    pretrained = load_model(f"runs:/{pre.info.run_id}")
    invoke("protonet", *[a for a in TINY if a != "--no-register"], *RESNET, "--epochs", "1",
           "--init", f"runs:/{pre.info.run_id}")
    tuned = newest_run()
    assert tuned.data.params["init"] == f"runs:/{pre.info.run_id}"
    import mlflow.pytorch

    model = mlflow.pytorch.load_model("models:/fsl-protonet@champion")
    assert model.config["encoder"] == "resnet12"
    stem = "encoder.stages.0.body.0.weight"
    assert not torch.equal(model.state_dict()[stem], pretrained.state_dict()[stem])  # fine-tuned from ...
    fresh = torch.nn.init.kaiming_normal_(torch.empty_like(pretrained.state_dict()[stem]))
    moved = (model.state_dict()[stem] - pretrained.state_dict()[stem]).norm()
    assert moved < (fresh - pretrained.state_dict()[stem]).norm()
    from fsl.data import load_dataset

    images = load_dataset("synthetic", 16).split("test").images[:4]
    prediction = model.classify(images[:2], ["a", "b"], images)
    assert prediction.probs.shape == (4, 2)


@pytest.mark.slow
def test_a_sweep_pre_trains_and_fine_tunes_per_seed_as_a_grid_axis(tracking):
    out = invoke("sweep", *TINY, "--param", "pretrain_epochs=0,1", "--seeds", "0,1", "--baseline",
                 "pretrain_epochs=0", "--no-system-metrics")
    assert "pretrain_epochs=1: " in out.output and "vs pretrain_epochs=0" in out.output
    client = MlflowClient()
    children = [r for r in all_runs(client)
                if "mlflow.parentRunId" in r.data.tags]
    pre = [r for r in children if r.data.params.get("pretrain_epochs") == "1"]
    assert len(children) == 4 and len(pre) == 2
    assert all("pretrain_best_val_acc" in r.data.metrics for r in pre)


def test_a_model_saved_before_the_new_config_keys_is_the_same_kind_of_model_as_a_new_one(tiny_dataset):
    """A sweep reuses a pre-change twin: the rebuilt config has the new keys at their defaults."""
    from fsl.models.classifier import FewShotClassifier

    new = FewShotClassifier.for_data(tiny_dataset, hallucinator="calibrated", M=5)
    old_config = {k: v for k, v in new.config.items() if k not in ("encoder_width", "feature_transform")}
    rebuilt = FewShotClassifier.from_checkpoint(FewShotClassifier(old_config).checkpoint())
    assert rebuilt.config == new.config
    from fsl.models.encoders import Conv4

    assert Conv4(3, 84, 32).out_dim == 32 * 25  # the third positional argument is still `hidden`


def test_calibrate_with_many_classes_needs_no_one_hot_matrix():
    from fsl.models.hallucinator import CalibratedHallucinator

    torch.manual_seed(0)
    features, labels = torch.randn(600, 4), torch.arange(200).repeat_interleave(3)
    fast, slow = CalibratedHallucinator(4), CalibratedHallucinator(4)
    fast.calibrate(features, labels, 200)
    slow.observe(features[None], labels[None], 200)  # the episode formula, with its [N, C] one-hot
    for name in ("grand_mean", "within_var", "between_var"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name), atol=1e-5), name


def test_base_class_features_keep_no_autograd_graph(tiny_dataset):
    """Called outside training too (benchmarks.omniglot): a graph kept alive by the base mean
    would hold the forward pass of every image it was computed from."""
    from fsl.models.classifier import FewShotClassifier
    from fsl.train import base_class_features

    model = FewShotClassifier.for_data(tiny_dataset, feature_transform="cl2n")
    features, _ = base_class_features(model, tiny_dataset.split("train"), per_class=2)
    assert not features.requires_grad
    model.set_base_mean(features.mean(0))
    assert model.base_mean.grad_fn is None
