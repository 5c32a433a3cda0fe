"""The real-data check (run on request: `python -m pytest -m omniglot`; skips without ../shared)."""

import pytest

from benchmarks.omniglot import OMNIGLOT, run

pytestmark = [pytest.mark.omniglot, pytest.mark.slow,
              pytest.mark.skipif(not OMNIGLOT.exists(), reason="../shared/data/omniglot is absent")]


def test_protonet_learns_unseen_omniglot_alphabets():
    # BENCHMARKS.md §6's recipe, shortened to 2,000 episodes: rotations and reflections as
    # classes, the omniglot jitter
    result = run(steps=2000, episodes=1000, augment=True, reflections=True)
    assert result["test_classes"] == 106  # Japanese (katakana) 47 + Sanskrit 42 + Tagalog 17
    assert result["test_5way_1shot"]["acc"] >= 95.0, result
    assert result["test_20way_1shot"]["acc"] >= 85.0, result
    # test-time augmentation (16 views of the training jitter) on the same weights: +1-2.5 points
    assert result["test_20way_1shot_views16"]["acc"] >= result["test_20way_1shot"]["acc"] + 0.5, result
