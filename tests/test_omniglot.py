"""The real-data check (run on request: `python -m pytest -m omniglot`; skips without ../shared)."""

import pytest

from benchmarks.omniglot import OMNIGLOT, run

pytestmark = [pytest.mark.omniglot, pytest.mark.slow,
              pytest.mark.skipif(not OMNIGLOT.exists(), reason="../shared/data/omniglot is absent")]


def test_protonet_learns_unseen_omniglot_alphabets(tmp_path):
    # the recipe of BENCHMARKS.md §6: rotations and reflections as classes, the omniglot jitter
    result = run(steps=2000, episodes=1000, workdir=tmp_path, augment=True, reflections=True)
    assert result["test_classes"] == 106  # Japanese (katakana) 47 + Sanskrit 42 + Tagalog 17
    assert result["test_5way_1shot"]["acc"] >= 95.0, result
    assert result["test_20way_1shot"]["acc"] >= 85.0, result
