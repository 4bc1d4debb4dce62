"""Intervals and paired comparisons (scipy), shared by sweeps, confirmation, the CLI and analysis.

A figure titk shows carries its interval or says it has none: `Interval.text()` writes "0.41 ± 0.03
(95 % CI, 5 seeds)" or "0.41 (1 seed, no interval)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # NaN when there is no interval (fewer than two values)
    high: float
    n: int
    sd: float = math.nan
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and self.low == self.low

    def text(self, unit: str = "seed", digits: int = 3) -> str:
        plural = unit if self.n == 1 else f"{unit}s"
        if not self.has_interval:
            return f"{self.mean:.{digits}f} ({self.n} {plural}, no interval)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} ({self.level:.0%} CI, {self.n} {plural})"


def mean_interval(values, level: float = 0.95) -> Interval:
    """Mean and Student-t interval of finite values (NaN ones are left out)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, level)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan, level)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, level)


def t_p_value(values, alternative: str = "two-sided") -> float:
    """One-sample t-test of mean 0; NaN with fewer than two values, and 0 or 1 when they do not vary."""
    from scipy import stats

    x = np.asarray([v for v in values if math.isfinite(float(v))], float)
    if len(x) < 2:
        return math.nan
    if float(x.std(ddof=1)) == 0.0:
        mean = float(x.mean())
        if mean == 0.0:
            return 1.0
        return 0.0 if alternative == "two-sided" or (mean > 0) == (alternative == "greater") else 1.0
    return float(stats.ttest_1samp(x, 0.0, alternative=alternative).pvalue)


def share_interval(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of a share `count`/`n` (a label's share among n images): Wilson's score
    interval (scipy's binomtest). A bootstrap of the images would give 0 to 0 for a label no image shows,
    and too narrow an interval for the few images a trial generates; Wilson's holds its level near n = 10.
    NaN, NaN when there are no images."""
    from scipy import stats

    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(count), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def shift_interval(count: int, n: int, base_count: int, base_n: int, level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of a difference of two shares, count/n − base_count/base_n, from independent
    images (a TI's samples against its untrained start's): Newcombe's hybrid score interval, built on each
    share's Wilson interval, so it keeps its level at a few dozen images where a normal interval does not.
    NaN, NaN when either side has no images."""
    if n <= 0 or base_n <= 0:
        return math.nan, math.nan
    p, q = count / n, base_count / base_n
    p_low, p_high = share_interval(count, n, level)
    q_low, q_high = share_interval(base_count, base_n, level)
    d = p - q
    return d - math.hypot(p - p_low, q_high - q), d + math.hypot(p_high - p, q - q_low)
