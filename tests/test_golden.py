"""Refactors change no number: a tiny deterministic schedule of ProtoNet and of each
hallucinator gives, to the last digit, what commit 2572630 gave on the same machine
(tests/fixtures/golden_2572630.json, one thread, fp32, --deterministic). On another CPU or torch
the kernels may round differently, so there the check is to 1e-4 relative."""

import json
from pathlib import Path

import pytest
import torch

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_2572630.json").read_text())


def this_cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


@pytest.mark.parametrize("kind", ["protonet", "wang", "improved", "calibrated"])
def test_a_tiny_deterministic_schedule_gives_the_golden_numbers(kind):
    from fsl.commands.training_setup import prepare_training
    from fsl.config import TrainConfig
    from fsl.evaluate import evaluate, sample_episodes
    from fsl.train import train

    cfg = TrainConfig(image_size=16, epochs=2, episodes_per_epoch=5, val_episodes=4, test_episodes=6, queries=3,
                      test_queries=3, precision="fp32", device="cpu", deterministic=True,
                      hallucinator=None if kind == "protonet" else kind, M=0 if kind == "protonet" else 4)
    setup = prepare_training(cfg)
    result = train(setup.model, setup.data, setup.cfg, setup.device)
    store = setup.data.split("test")
    episodes = sample_episodes(store, setup.cfg.test_shape, cfg.test_episodes, cfg.test_seed, "test")
    test = evaluate(setup.model, store, episodes, noise_seed=cfg.test_seed)
    weights = sum(float(v.double().sum()) for v in setup.model.state_dict().values() if v.is_floating_point())
    got = {"best_val_acc": result.best_val_acc, "test_acc": test.mean,
           "losses": [h.train_loss for h in result.history], "weights_sum": weights}
    expected = GOLDEN["numbers"][kind]
    if this_cpu() == GOLDEN["cpu"] and torch.__version__ == GOLDEN["torch"]:
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-4)


def test_fingerprints_and_source_ids_keep_their_formulas(tmp_path, monkeypatch):
    """The data fingerprint (the champion rule) and the episode-file source id of 2572630 for two
    trees of fixed names, sizes and mtimes: the split options made explicit since (None = the
    format's default) and the per-machine cache validity leave both unchanged."""
    import os

    from PIL import Image

    from fsl.data import load_dataset

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))

    def tree(base, layout):
        for rel in layout:
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (len(rel) * 7 % 256, 10, 20)).save(path)
            os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    tree(tmp_path / "cf", [f"alpha/c{i}/{j}.bmp" for i in range(10) for j in range(3)])
    tree(tmp_path / "sf", [f"{s}/{s}{i}/{j}.bmp" for s in ("train", "val", "test") for i in range(2) for j in range(3)])
    class_folders, split_folders = load_dataset(str(tmp_path / "cf")), load_dataset(str(tmp_path / "sf"))
    assert (class_folders.fingerprint, class_folders.source_id) == ("f3e33a60ba5751382766", "e7fed42e2c45defb8772")
    assert (split_folders.fingerprint, split_folders.source_id) == ("dd3ef1ca1f0a5ba52c83", "05e71e5e267f9dc3d98d")
    explicit = load_dataset(str(tmp_path / "cf"), split_ratio=(0.64, 0.16, 0.20))
    assert explicit.fingerprint == class_folders.fingerprint
