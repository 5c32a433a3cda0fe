"""fsl.stats against hand computations."""

import math

import pytest

from fsl.stats import paired_difference, seed_ci, t_critical


def test_t_critical_matches_the_table_of_students_t():
    assert t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert t_critical(2) == pytest.approx(4.303, abs=1e-3)
    assert t_critical(4) == pytest.approx(2.776, abs=1e-3)
    assert t_critical(30) == pytest.approx(2.042, abs=1e-3)
    assert t_critical(10, confidence=0.99) == pytest.approx(3.169, abs=1e-3)


def test_seed_ci_is_the_mean_and_t_times_s_over_root_n():
    # 60, 62, 64: mean 62, s = sqrt((4 + 0 + 4) / 2) = 2, t_{0.975, 2} = 4.303
    interval = seed_ci([60.0, 62.0, 64.0])
    assert interval.mean == pytest.approx(62.0)
    assert interval.half == pytest.approx(4.303 * 2 / math.sqrt(3), abs=1e-3)  # 4.969
    assert interval.n == 3 and interval.low == pytest.approx(62 - interval.half)


def test_seed_ci_of_one_seed_has_no_width_and_of_none_is_an_error():
    one = seed_ci([55.5])
    assert one.mean == 55.5 and math.isnan(one.half) and not one.excludes_zero
    with pytest.raises(ValueError):
        seed_ci([])


def test_paired_difference_is_over_per_seed_differences_not_pooled():
    # per-seed differences: seed 0: 61 - 60 = 1, seed 1: 63 - 61 = 2, seed 2: 60 - 60 = 0
    # mean 1, s = 1, half = 4.303 / sqrt(3) = 2.484: the CI [-1.48, 3.48] includes 0
    a = {0: 61.0, 1: 63.0, 2: 60.0}
    b = {2: 60.0, 0: 60.0, 1: 61.0}
    diff = paired_difference(a, b)
    assert diff.seeds == (0, 1, 2) and diff.differences == (1.0, 2.0, 0.0)
    assert diff.mean == pytest.approx(1.0)
    assert diff.half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert not diff.excludes_zero


def test_a_consistent_gain_excludes_zero_even_when_the_accuracies_vary_a_lot():
    # accuracies spread over 10 points between seeds, but B is always 2.9 to 3.1 points lower:
    # differences 3.0, 2.9, 3.1: mean 3, s = 0.1, half = 4.303 * 0.1 / sqrt(3) = 0.248
    a = {0: 50.0, 1: 60.0, 2: 55.0}
    b = {0: 47.0, 1: 57.1, 2: 51.9}
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(3.0)
    assert diff.half == pytest.approx(4.303 * 0.1 / math.sqrt(3), abs=1e-3)
    assert diff.excludes_zero
    # unpaired, the two across-seed CIs overlap: pairing is what shows the gain
    assert seed_ci(list(a.values())).low < seed_ci(list(b.values())).high
    # and a consistent loss excludes 0 from below
    assert paired_difference(b, a).excludes_zero and paired_difference(b, a).mean == pytest.approx(-3.0)


def test_paired_difference_refuses_different_seeds():
    with pytest.raises(ValueError, match="paired seeds differ"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})
