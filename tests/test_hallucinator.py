import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from fsl.components import HALLUCINATORS
from fsl.config import ModelSpec
from fsl.models.classifier import FewShotClassifier, model_config
from fsl.models.distances import logits, prototypes
from fsl.models.hallucinator import CalibratedHallucinator, WangHallucinator, hallucinate
from tests.conftest import TINY, all_runs, noise_keys


def classifier(hallucinator="wang", m=4, size=16):
    torch.manual_seed(0)
    return FewShotClassifier(model_config(ModelSpec(hallucinator=hallucinator, M=m), image_size=size, channels=3,
                                          mean=[0.5] * 3, std=[0.25] * 3, precision="fp32"))


@pytest.mark.parametrize("kind", sorted(HALLUCINATORS))
@pytest.mark.parametrize("d", [64, 256, 1600])
def test_generators_map_features_and_noise_to_features_of_the_same_size(kind, d):
    gen = HALLUCINATORS[kind](d)
    x = torch.rand(3, 7, d)
    assert gen(x, torch.randn(3, 7, d), x).shape == (3, 7, d)


def test_wang_generator_is_3200_2400_2400_1600_at_d_1600():
    linears = [m for m in WangHallucinator(1600).modules() if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(3200, 2400), (2400, 2400), (2400, 1600)]


def test_the_augmented_support_is_n_times_k_plus_m_rows():
    model = classifier(m=6)
    ways, shots, d = 5, 3, model.feature_dim
    support = torch.rand(2, ways * shots, d)
    labels = torch.arange(ways).repeat_interleave(shots).expand(2, -1)
    fake, fake_labels = model.hallucinate_support(support, labels, ways, keys=noise_keys(0, 2))
    augmented = torch.cat([support, fake], dim=1)
    assert augmented.shape == (2, ways * (shots + 6), d)
    assert torch.equal(torch.bincount(torch.cat([labels, fake_labels], 1)[0]), torch.full((ways,), shots + 6))


def test_wang_prototypes_are_the_mean_of_real_and_hallucinated_features():
    model = classifier(m=4).eval()
    support, labels = torch.rand(1, 10, model.feature_dim), torch.arange(5).repeat_interleave(2)[None]
    queries = torch.rand(1, 3, model.feature_dim)
    fake, fake_labels = model.hallucinate_support(support, labels, 5, keys=noise_keys(1, 1))
    expected = prototypes(torch.cat([support, fake], 1), torch.cat([labels, fake_labels], 1), 5)
    got = model.logits_from_features(support, labels, queries, 5, keys=noise_keys(1, 1))
    assert torch.allclose(got, logits(queries, expected, model.config["distance"]), rtol=1e-4, atol=1e-3)


def test_the_improved_prototype_mixes_real_and_hallucinated_means_by_a_learned_weight():
    model = classifier("improved", m=50).eval()
    gen = model.hallucinator
    real, fake = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert torch.allclose(gen.combine(real, fake, torch.tensor([[1, 1]]), 50), torch.full((1, 2, 3), 0.1))
    # M does not change the weight of the real shots, unlike Wang's mean (50/51 at K=1)
    assert torch.allclose(gen.combine(real, fake, torch.tensor([[1, 1]]), 500), torch.full((1, 2, 3), 0.1))
    assert gen.mix_logit.requires_grad


def test_m_zero_gives_exactly_the_plain_protonet_prototypes_and_logits():
    model = classifier(m=0)
    plain = FewShotClassifier({**model.config, "hallucinator": None})
    plain.encoder.load_state_dict(model.encoder.state_dict())
    model.eval(), plain.eval()
    s = torch.randint(0, 255, (10, 3, 16, 16), dtype=torch.uint8)
    q = torch.randint(0, 255, (15, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(5).repeat_interleave(2)
    assert torch.equal(model.episode_logits(s, labels, q, 5), plain.episode_logits(s, labels, q, 5))
    assert model.hallucinate_support(torch.rand(1, 10, model.feature_dim), labels[None], 5, M=0) is None


def test_seeded_hallucination_repeats_and_another_seed_differs():
    gen = WangHallucinator(32).eval()
    features, labels = torch.rand(10, 32), torch.arange(5).repeat_interleave(2)
    a = hallucinate(gen, features, labels, 5, 8, noise_keys(3, 1)[0])[0]
    b = hallucinate(gen, features, labels, 5, 8, noise_keys(3, 1)[0])[0]
    c = hallucinate(gen, features, labels, 5, 8, noise_keys(4, 1)[0])[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", sorted(k for k in HALLUCINATORS if k != "calibrated"))  # calibrated has no weights
def test_one_training_step_sends_gradient_to_encoder_and_generator(kind):
    import torch.nn.functional as F

    model = classifier(kind, m=5)
    s = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    q = torch.randint(0, 255, (10, 3, 16, 16), dtype=torch.uint8)
    logits = model.episode_logits(s, torch.arange(5), q, 5, keys=noise_keys(0, 1))
    F.cross_entropy(logits, torch.arange(5).repeat_interleave(2)).backward()
    for part in (model.encoder, model.hallucinator):
        grads = [p.grad.abs().sum() for p in part.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, type(part).__name__


@pytest.mark.parametrize("kind", ["improved", "calibrated"])
def test_hallucinate_command_logs_tsne_and_both_test_results(tracking, kind):
    result = CliRunner().invoke(cli, ["hallucinate", *TINY, "-M", "3", "--hallucinator", kind],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    run = all_runs(client)[0]
    assert run.data.params["M"] == "3" and run.data.params["hallucinator"] == kind
    for suffix in ("", "_no_hallucination"):
        assert {f"test_acc{suffix}", f"test_ci95{suffix}"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, f"test_episode_acc{suffix}")) == 5
    assert "tsne.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the hallucination diagnostics (fsl.diagnostics), in their defined ranges
    metrics = run.data.metrics
    assert metrics["halluc_mean_offset"] >= 0 and metrics["halluc_spread_ratio"] >= 0
    assert ("halluc_collapse" in metrics) == (kind != "calibrated")  # no chart where there is nothing to collapse
    assert 0 <= metrics.get("halluc_collapse", 0) <= 1
    assert 0 < metrics["halluc_mix_weight"] < 1  # improved: sigmoid(mix_logit), started at 0.1


def test_sweep_m_makes_one_parent_with_a_child_per_m(tracking):
    result = CliRunner().invoke(cli, ["sweep-m", *TINY, "--values", "0,2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = all_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    # M = 0 is a plain ProtoNet (no generator params), M = 2 a hallucination run
    # the names say the method and the point, the parent's the method and the grid
    assert parents[0].info.run_name == "sweep-hallucinate-calibrated-M0,2"
    assert {c.info.run_name: c.data.tags["fsl.method"] for c in children} == {
        "protonet-M=0": "protonet", "hallucinate-calibrated-M=2": "hallucinate"}
    assert [c.data.params.get("M") for c in children if c.info.run_name.endswith("M=2")] == ["2"]
    assert {"sweep.csv", "sweep.png"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_cpu_dropout_keeps_a_fraction_one_minus_p_and_rescales_like_nn_dropout():
    from fsl.models.hallucinator import Dropout

    drop = Dropout(0.5).train()
    out = drop(torch.ones(200, 500))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert torch.all(out[kept] == 2.0)
    assert torch.equal(drop.eval()(torch.ones(3, 4)), torch.ones(3, 4))


def test_init_from_a_trained_protonet_starts_hallucination_from_its_encoder(tracking, trained_checkpoint,
                                                                            monkeypatch):
    import fsl.commands.cmd_train as training
    from fsl.models.classifier import load_checkpoint

    started, real_train = {}, training.train

    def recording(model, *args, **kwargs):  # the encoder as episodic training receives it
        started.update({k: v.detach().clone() for k, v in model.encoder.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(training, "train", recording)
    result = CliRunner().invoke(cli, ["hallucinate", *TINY, "-M", "2", "--init", str(trained_checkpoint)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    source = load_checkpoint(trained_checkpoint).encoder.state_dict()
    assert started.keys() == source.keys()
    assert all(torch.equal(started[k].cpu(), source[k]) for k in source)
    assert all_runs(MlflowClient())[0].data.params["init"] == str(trained_checkpoint)


@pytest.mark.parametrize("kind, needle", [("text", "not an fsl checkpoint"), ("size", "incompatible model")])
def test_init_with_something_that_is_not_a_compatible_model_fails_before_training(tracking, tmp_path,
                                                                                  trained_checkpoint, kind, needle):
    target = tmp_path / "notes.pt"
    target.write_text("hello")
    args = [*TINY, "--init", str(target if kind == "text" else trained_checkpoint)]
    if kind == "size":
        args[args.index("--image-size") + 1] = "32"  # the checkpoint makes 64-d features from 16 px, not 256-d
    result = CliRunner().invoke(cli, ["hallucinate", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert "training episodes" not in result.output
    client = MlflowClient()
    assert all_runs(client) == []


def test_init_copies_between_encoders_that_differ_only_in_a_setting_that_shapes_no_weight(tmp_path):
    """A drop rate shapes no weight: --init from a ResNet-12 trained without DropBlock into one with
    it goes ahead; another width does not."""
    from fsl.commands.training_setup import _initialise_from
    from fsl.config import TrainConfig
    from fsl.data import load_dataset
    from fsl.errors import UsageError
    from fsl.models.classifier import build_model, load_checkpoint

    data = load_dataset("synthetic", image_size=16)

    def model(**args):
        cfg = TrainConfig(image_size=16, encoder="resnet12", encoder_args={"width": 0.0625} | args, precision="fp32")
        return build_model(cfg, data, torch.device("cpu"), "fp32")

    torch.save(model().checkpoint(), tmp_path / "plain.pt")
    dropped = model(drop_rate=0.1)
    _initialise_from(dropped, str(tmp_path / "plain.pt"))
    source = load_checkpoint(tmp_path / "plain.pt").encoder.state_dict()
    assert all(torch.equal(dropped.encoder.state_dict()[k], v) for k, v in source.items())
    with pytest.raises(UsageError, match="incompatible model"):
        _initialise_from(model(width=0.125), str(tmp_path / "plain.pt"))


def gaussian_classes(g, between_std, within_std, classes=400, per_class=16, seed=0):
    """Features [1, classes * per_class, D] of classes whose centres are N(g, between^2) and
    whose members are N(centre, within^2); labels [1, classes * per_class]."""
    torch.manual_seed(seed)
    centres = g + between_std * torch.randn(classes, g.shape[0])
    features = centres.repeat_interleave(per_class, 0) + within_std * torch.randn(classes * per_class, g.shape[0])
    return features[None], torch.arange(classes).repeat_interleave(per_class)[None]


def test_calibrated_observe_recovers_the_grand_mean_and_the_within_and_between_class_variances():
    d, ways = 8, 5
    g = torch.linspace(5, 12, d)
    features, labels = gaussian_classes(g, between_std=2.0, within_std=1.0, classes=2000)
    gen = CalibratedHallucinator(d, momentum=0.0)  # momentum 0: a plain running average
    for e in range(0, 2000, ways):  # 400 episodes of 5 classes x 16 images
        rows = (labels[0] >= e) & (labels[0] < e + ways)
        gen.observe(features[:, rows], labels[:, rows] - e, ways)
    assert int(gen.observed) == 400
    assert torch.allclose(gen.grand_mean, g, atol=0.2)
    assert torch.allclose(gen.within_var, torch.ones(d), atol=0.05)
    assert torch.allclose(gen.between_var, torch.full((d,), 4.0), rtol=0.15)


def test_calibrated_hallucinations_centre_on_the_shrunk_mean_with_the_base_spread():
    d, k = 4, 1
    gen = CalibratedHallucinator(d)
    gen.grand_mean.fill_(10.0), gen.within_var.fill_(4.0), gen.between_var.fill_(4.0)  # a = (4/1) / (4/1 + 4) = 0.5
    x = torch.full((2, 3, d), 20.0)                                                     # [E, N, D]: the shot mean
    torch.manual_seed(0)
    shape = (2, 3, 1000, d)
    fake = gen(x[..., None, :].expand(shape), torch.randn(shape), x[..., None, :].expand(shape),
               torch.full(shape[:-1], k))
    assert fake.shape == shape and (fake >= 0).all()
    # antithetic noise: the mean of an even M is exactly the posterior centre (1 - a) x + a g = 15
    assert torch.allclose(fake.mean(-2), torch.full((2, 3, d), 15.0), atol=1e-4)
    # spread: S + a T = 4 + 2 = 6
    assert abs(float(fake.var(-2).mean()) - 6.0) < 0.3
    # 5 shots are trusted more: a = (4/5) / (4/5 + 4) = 1/6
    five = gen(x[..., None, :].expand(shape), torch.randn(shape), x[..., None, :].expand(shape),
               torch.full(shape[:-1], 5))
    assert torch.allclose(five.mean(-2), torch.full((2, 3, d), 20 - 10 / 6), atol=1e-4)


def test_calibrated_acts_at_test_time_only_and_is_a_protonet_before_it_has_statistics():
    model = classifier("calibrated", m=10)
    support, labels = torch.rand(2, 10, model.feature_dim) + 1, torch.arange(5).repeat_interleave(2).expand(2, -1)
    queries = torch.rand(2, 7, model.feature_dim)
    plain = logits(queries, prototypes(support, labels, 5), model.config["distance"])
    model.eval()
    # nothing observed: the prototypes are the plain ones
    assert torch.allclose(model.logits_from_features(support, labels, queries, 5, keys=noise_keys(0, 2)), plain)
    gen = model.hallucinator
    gen.grand_mean.fill_(0.5), gen.within_var.fill_(0.1), gen.between_var.fill_(0.1)
    calibrated = model.logits_from_features(support, labels, queries, 5, keys=noise_keys(0, 2))
    assert not torch.allclose(calibrated, plain)
    model.train()  # training mode: no hallucination, the encoder trains as a plain ProtoNet
    assert model.hallucinate_support(support, labels, 5) is None
    assert torch.allclose(model.logits_from_features(support, labels, queries, 5), plain)


def test_calibrated_statistics_are_gathered_by_the_training_loop_and_saved_in_checkpoints():
    from fsl.models.classifier import FewShotClassifier
    from fsl.train import EpisodeLoss

    model = classifier("calibrated", m=10)
    loss = EpisodeLoss(model, 5, None)
    s = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    q = torch.randint(0, 255, (10, 3, 16, 16), dtype=torch.uint8)
    loss(s, q, torch.arange(5)[None], torch.arange(5).repeat_interleave(2), torch.Generator().manual_seed(0),
         noise_keys(0, 1))
    gen = model.hallucinator
    assert int(gen.observed) == 1 and gen.within_var.sum() > 0 and gen.grand_mean.sum() > 0
    restored = FewShotClassifier.from_checkpoint(model.checkpoint())
    for name in ("grand_mean", "within_var", "between_var", "observed"):
        assert torch.equal(getattr(restored.hallucinator, name), getattr(gen, name))


def test_calibrate_sets_the_base_statistics_from_all_classes_at_once():
    from fsl.models.hallucinator import CalibratedHallucinator

    h = CalibratedHallucinator(2)
    h.observe(torch.randn(1, 8, 2), torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]), 2)  # earlier statistics are replaced
    # class 0 at (0, 0) +- 1 on the first axis, class 1 at (4, 2) +- 1 on the first axis; 2 images each
    features = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [3.0, 2.0], [5.0, 2.0]])
    h.calibrate(features, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(h.grand_mean, torch.tensor([2.0, 1.0]))
    assert torch.allclose(h.within_var, torch.tensor([2.0, 0.0]))  # (4 x 1) / (4 - 2)
    # spread of the class means (8, 2) over ways - 1, less within / n_harmonic (2)
    assert torch.allclose(h.between_var, torch.tensor([8.0 - 1.0, 2.0]))
    assert int(h.observed) == 1


@pytest.mark.slow
def test_a_pre_trained_calibrated_model_has_base_statistics_without_episodes(tracking):
    from click.testing import CliRunner

    from fsl.cli import cli
    from fsl.commands.inputs import load_model
    from tests.conftest import TINY

    args = [a for a in TINY if a not in ("--epochs", "1")]
    result = CliRunner().invoke(cli, ["hallucinate", *args, "--epochs", "0", "--pretrain-epochs", "1", "-M", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    [run] = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    model = load_model(f"runs:/{run.info.run_id}")
    assert int(model.hallucinator.observed) == 1 and model.hallucinator.within_var.sum() > 0
    assert "test_acc_no_hallucination" in run.data.metrics
    # the statistics act: hallucination moves the prototypes of real features
    model.eval()
    support, queries = torch.rand(1, 5, model.feature_dim), torch.rand(1, 3, model.feature_dim)
    on = model.logits_from_features(support, torch.arange(5)[None], queries, 5, keys=noise_keys(0, 1))
    assert not torch.allclose(on, model.logits_from_features(support, torch.arange(5)[None], queries, 5, M=0))
