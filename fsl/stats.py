"""Statistics over training seeds: pure functions, no torch, no MLflow.

A study trains each configuration once per seed and tests every model on the same test
episodes. Two questions are asked of it:

- how accurate is a configuration: `seed_ci`, the mean over seeds of the per-seed test accuracy
  with a Student-t 95% confidence interval (n is small: 3 to 10 seeds);
- is configuration A better than B: `paired_difference`, the per-seed differences
  acc_A(seed) - acc_B(seed) (same seed, same test episodes), their mean and a Student-t 95% CI
  over those n differences. The CI is over seeds, not pooled over the test episodes: pooling
  would count the 600 episodes of one training run as 600 independent observations and hide
  the run-to-run variance, which is what decides whether a difference is reproducible.

Every accuracy is in percent; the functions work in any unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value of Student's t with `df` degrees of freedom: the q with
    P(|T| <= q) = confidence. df >= 1. From scipy, which scikit-learn (a dependency) requires."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    return float(t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Interval:
    """A mean and the half-width of its confidence interval: [mean - half, mean + half].

    n: the number of values (seeds); half is NaN for n < 2 (no spread to estimate)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False when it is undefined)."""
        return not math.isnan(self.half) and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.half:.2f} (n={self.n})"


def seed_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of n per-seed values [n] and the Student-t CI half-width t_{df=n-1} * s / sqrt(n),
    s the sample standard deviation (ddof=1). NaN half-width for n = 1; n = 0 is an error."""
    n = len(values)
    if n == 0:
        raise ValueError("seed_ci needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, float("nan"), 1)
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_critical(n - 1, confidence) * s / math.sqrt(n), n)


@dataclass(frozen=True)
class PairedDifference:
    """The mean over seeds of acc_A(seed) - acc_B(seed), its Student-t CI, and the differences.

    seeds: the seeds paired, sorted; differences: one per seed, in that order."""

    interval: Interval
    seeds: tuple[int, ...]
    differences: tuple[float, ...]

    @property
    def mean(self) -> float:
        return self.interval.mean

    @property
    def half(self) -> float:
        return self.interval.half

    @property
    def excludes_zero(self) -> bool:
        """True when the CI of the difference excludes 0: A differs from B beyond seed noise."""
        return self.interval.excludes_zero


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
    """A minus B, paired seed by seed.

    a, b: seed -> mean test accuracy of that seed's model (on the same test episodes for A and
    B). Both must hold the same seeds: a difference is only paired when both sides were
    trained with the seed. Returns the mean of the n per-seed differences and the Student-t CI
    over them (df = n - 1), i.e. `seed_ci` of the differences.
    """
    if set(a) != set(b):
        raise ValueError(f"paired seeds differ: {sorted(a)} against {sorted(b)}")
    seeds = tuple(sorted(a))
    differences = tuple(a[s] - b[s] for s in seeds)
    return PairedDifference(seed_ci(differences, confidence), seeds, differences)
