import pytest
import torch

from fsl.data.episodes import EpisodeError, EpisodeSampler, EpisodeShape
from fsl.data.store import ImageStore


def make_store(classes: int = 10, per_class: int = 8) -> ImageStore:
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    return ImageStore(images, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))],
                      [f"c{i}" for i in range(classes)])


def test_episode_indices_have_the_requested_shapes_and_labels_in_support_order():
    store = make_store()
    episodes = EpisodeSampler(store, EpisodeShape(5, 2, 3)).sample(torch.Generator().manual_seed(0), n=4)
    assert episodes.support.shape == (4, 10) and episodes.query.shape == (4, 15)
    assert episodes.classes.shape == (4, 5)
    assert episodes.support_labels().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert episodes.query_labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # Episode label k is the split class classes[k], for support and query alike.
    for e in range(4):
        assert torch.equal(store.labels[episodes.support[e]], episodes.classes[e].repeat_interleave(2))
        assert torch.equal(store.labels[episodes.query[e]], episodes.classes[e].repeat_interleave(3))


def test_no_query_image_is_also_in_the_support_set_and_classes_are_distinct():
    store = make_store(classes=6, per_class=5)
    episodes = EpisodeSampler(store, EpisodeShape(6, 2, 3)).sample(torch.Generator().manual_seed(1), n=50)
    for e in range(50):
        rows = torch.cat([episodes.support[e], episodes.query[e]])
        assert len(set(rows.tolist())) == len(rows)  # 5 images per class, all used, none twice
        assert len(set(episodes.classes[e].tolist())) == 6


def test_the_same_seed_gives_the_same_episodes_and_another_seed_others():
    sampler = EpisodeSampler(make_store(), EpisodeShape(5, 1, 2))
    a = sampler.sample(torch.Generator().manual_seed(7), n=3)
    b = sampler.sample(torch.Generator().manual_seed(7), n=3)
    c = sampler.sample(torch.Generator().manual_seed(8), n=3)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert not torch.equal(a.query, c.query)


@pytest.mark.parametrize("shape, message", [
    (EpisodeShape(11, 1, 1), r"--ways must be between 2 and 10 \(the split split has 10 classes\), got 11"),
    (EpisodeShape(5, 5, 4), r"--shots \+ --queries must be at most 8 .* got 9"),
    (EpisodeShape(5, 0, 4), r"--shots must be at least 1"),
])
def test_impossible_episodes_are_refused_with_the_option_and_its_range(shape, message):
    with pytest.raises(EpisodeError, match=message):
        EpisodeSampler(make_store(), shape)


def test_synthetic_splits_have_disjoint_classes_like_mini_imagenet(tiny_dataset):
    names = {split: set(tiny_dataset.split(split).class_names) for split in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
