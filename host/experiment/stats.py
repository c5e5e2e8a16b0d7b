"""Statistics over seeds for experiment tables: a 95% bootstrap confidence interval of a mean,
and an exact paired permutation test between two methods run on the same seeds.

Few seeds make weak evidence, and these say how weak: with n seeds the paired test's smallest
possible two-sided p-value is 2 / 2**n (0.5 for two seeds, 0.0625 for five), which every
`PairedTest` carries beside its p-value, so a table never reads as significant what cannot be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0  # resampling is seeded: the same results give the same intervals


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def mean_ci95(values: Sequence[float]) -> Interval | None:
    """The percentile-bootstrap 95% confidence interval of the mean; None below two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or not np.isfinite(x).all():
        return None
    if np.ptp(x) == 0.0:
        return Interval(float(x[0]), float(x[0]))
    result = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


@dataclass(frozen=True)
class PairedTest:
    """Method A against method B on one metric, over the seeds both have: the mean of A - B, and
    the exact two-sided p-value of a sign-flip permutation test of that mean (no normality
    assumed). `min_p`: the smallest p-value n pairs can give."""

    metric: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    n: int
    mean_difference: float
    p_value: float
    min_p: float

    def text(self, scale: float = 1.0) -> str:
        return (
            f"{self.mean_difference * scale:+.4g} (p = {self.p_value:.3g}, n = {self.n}, "
            f"smallest possible p {self.min_p:.3g})"
        )


def paired_test(
    metric: str, a: tuple[str, ...], b: tuple[str, ...], pairs: Sequence[tuple[float, float]]
) -> PairedTest | None:
    """The paired test of `pairs` (A's value, B's value per seed); None below two pairs."""
    x = np.asarray([p[0] for p in pairs], dtype=float)
    y = np.asarray([p[1] for p in pairs], dtype=float)
    n = len(x)
    if n < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    difference = x - y
    if not difference.any():
        p = 1.0
    else:
        result = stats.permutation_test(
            (difference,),
            np.mean,
            permutation_type="samples",
            n_resamples=math.inf,  # exact: 2**n sign patterns
            alternative="two-sided",
        )
        p = float(min(1.0, result.pvalue))
    return PairedTest(metric, a, b, n, float(difference.mean()), p, min(1.0, 2.0 / 2**n))
