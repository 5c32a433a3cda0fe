import pytest
import torch

from fsl.config import TrainConfig
from fsl.data.store import DataSet, ImageStore
from fsl.evaluate import evaluate, sample_episodes
from fsl.models.classifier import SCHEMA_VERSION, FewShotClassifier, load_checkpoint
from fsl.train import NonFiniteLossError, train


def separable_dataset(per_class: int = 12, size: int = 16) -> DataSet:
    """Each class a flat colour of its own plus pixel noise: easy, and unseen at test time."""
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(30, 3, generator=gen) * 200 + 25
    splits, start = {}, 0
    for split, count in (("train", 20), ("val", 5), ("test", 5)):
        labels = torch.arange(count).repeat_interleave(per_class)
        base = colours[start + labels][:, :, None, None].expand(-1, -1, size, size)
        noise = torch.randn(len(labels), 3, size, size, generator=gen) * 12
        images = (base + noise).clamp(0, 255).to(torch.uint8)
        splits[split] = ImageStore(images, labels, [f"colour{start + k}" for k in range(count)])
        start += count
    return DataSet("separable", splits, "separable-test")


def new_model(data: DataSet, **kwargs) -> FewShotClassifier:
    torch.manual_seed(0)
    return FewShotClassifier.for_data(data, **kwargs)


def test_a_briefly_trained_protonet_separates_well_separated_classes(tmp_path):
    data = separable_dataset()
    cfg = TrainConfig(ways=5, shots=5, queries=5, test_shots=5, test_queries=5, epochs=2,
                      episodes_per_epoch=15, val_episodes=5)
    result = train(new_model(data), data, cfg, torch.device("cpu"), checkpoint_dir=tmp_path)
    test = data.split("test")
    episodes = sample_episodes(test, cfg.test_shape, 50, seed=3, split="test")
    accuracy = evaluate(result.model, test, episodes)
    assert accuracy.mean >= 90.0, accuracy
    assert len(result.history) == 2 and result.best_epoch in (1, 2)


def test_the_best_checkpoint_loads_safely_and_scores_the_best_val_accuracy(tmp_path):
    data = separable_dataset()
    cfg = TrainConfig(ways=5, shots=1, queries=4, test_queries=4, epochs=2, episodes_per_epoch=3, val_episodes=4)
    result = train(new_model(data), data, cfg, torch.device("cpu"), checkpoint_dir=tmp_path)
    raw = torch.load(result.best_checkpoint, weights_only=True)  # plain dicts and tensors only
    assert raw["schema_version"] == SCHEMA_VERSION and raw["config"]["distance"] == "euclidean"
    reloaded = load_checkpoint(result.best_checkpoint)
    val = data.split("val")
    episodes = sample_episodes(val, cfg.test_shape, cfg.val_episodes, cfg.val_seed, "val")
    assert evaluate(reloaded, val, episodes).mean == pytest.approx(result.best_val_acc, abs=1e-4)


def test_a_non_finite_loss_stops_training_naming_epoch_and_episode(tmp_path):
    data = separable_dataset()
    cfg = TrainConfig(ways=5, shots=1, queries=4, test_queries=4, epochs=3, episodes_per_epoch=4,
                      val_episodes=2, lr=1e30)  # so large that the weights overflow in epoch 1
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, episode \d+ of 4"):
        train(new_model(data, distance="dot"), data, cfg, torch.device("cpu"), checkpoint_dir=tmp_path)


def test_learning_rate_halves_every_lr_step_episodes(tmp_path):
    data = separable_dataset()
    seen = []
    cfg = TrainConfig(ways=5, shots=1, queries=2, test_queries=2, epochs=3, episodes_per_epoch=4,
                      val_episodes=2, lr=1e-3, lr_step=4)
    train(new_model(data), data, cfg, torch.device("cpu"), on_epoch=lambda s: seen.append(s.lr))
    assert seen == pytest.approx([5e-4, 2.5e-4, 1.25e-4])


def test_training_with_augmentation_runs_and_differs_from_without(tmp_path):
    data = separable_dataset()
    base = dict(ways=5, shots=1, queries=4, test_queries=4, epochs=1, episodes_per_epoch=3, val_episodes=2)
    plain = train(new_model(data), data, TrainConfig(**base), torch.device("cpu"))
    augmented = train(new_model(data), data, TrainConfig(**base, augment=True), torch.device("cpu"))
    assert plain.history[0].train_loss != augmented.history[0].train_loss
