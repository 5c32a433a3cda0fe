import os

import torch

from fsl.data import synthetic


def test_the_built_in_set_has_100_rgb_classes_of_60_images_at_32px_by_default(tiny_dataset):
    data = synthetic.load()
    assert data.image_size == 32 and data.channels == 3
    total = sum(data.split(s).n_classes for s in ("train", "val", "test"))
    assert total == 100
    for split in ("train", "val", "test"):
        assert int(data.split(split).images_per_class().min()) >= 60


def test_the_size_is_a_parameter_and_84_gives_mini_imagenet_shape():
    data = synthetic.generate(image_size=84, images_per_class=2)
    assert tuple(data.split("train").images.shape[1:]) == (3, 84, 84)


def test_generation_repeats_from_the_seed_and_changes_with_it():
    a = synthetic.generate(image_size=16, images_per_class=3, seed=0)
    b = synthetic.generate(image_size=16, images_per_class=3, seed=0)
    c = synthetic.generate(image_size=16, images_per_class=3, seed=1)
    assert torch.equal(a.split("test").images, b.split("test").images)
    assert not torch.equal(a.split("test").images, c.split("test").images)


def test_instances_of_a_class_vary_but_resemble_each_other_more_than_other_classes():
    data = synthetic.generate(image_size=32, images_per_class=20)
    x = data.split("train").images.float().flatten(1)
    y = data.split("train").labels
    assert x.std(0).mean() > 10  # not constant images
    d = torch.cdist(x, x)
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    assert d[same].mean() < d[y[:, None] != y[None, :]].mean()
    assert d[same].min() > 0  # no two instances are identical


def test_the_cache_lives_under_fsl_cache_dir_and_is_reused(fsl_cache):
    first = synthetic.load(image_size=16)
    folders = [p for p in (fsl_cache / "datasets").iterdir() if p.name.startswith("synthetic-")]
    assert folders and all(not p.name.startswith(".") for p in folders)  # no temp folder left behind
    meta = next(p for p in folders if p.name == f"synthetic-{first.fingerprint}") / "meta.json"
    stamp = os.stat(meta).st_mtime_ns
    second = synthetic.load(image_size=16)
    assert os.stat(meta).st_mtime_ns == stamp  # read, not regenerated
    assert torch.equal(first.split("val").images, second.split("val").images)
