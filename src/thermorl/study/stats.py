"""The statistics of a study, pure functions over numbers: t-intervals, the paired t-test, the smallest
detectable difference, binomial noise, bootstrap intervals (``scipy.stats`` where it has the estimator)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def sd(values: list[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t confidence interval: t_{(1+level)/2, n-1} * s / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, stats.t.ppf((1 + level) / 2, n - 1) * sd(values) / math.sqrt(n)


def paired_test(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test of a - b over matched seeds: d_i = a_i - b_i, t = mean(d) / (s_d / sqrt(n))."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, half = mean_ci(diffs)
    result = stats.ttest_rel(a, b)
    return {"mean_difference": mean, "ci95": half, "t": float(result.statistic), "p_value": float(result.pvalue),
            "n": len(diffs)}


def min_detectable_difference(diffs_sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true paired difference detected with the given power by a two-sided paired t-test:
    MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * s_d / sqrt(n)."""
    if n < 2:
        return float("nan")
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * diffs_sd / math.sqrt(n)


def binomial_se(accuracy: float, problems: int) -> float:
    """Standard error of one accuracy measured on ``problems`` independent problems: sqrt(p (1 - p) / n)."""
    return math.sqrt(accuracy * (1 - accuracy) / problems)


def moving_mean(values: list[float], window: int) -> list[float]:
    """Trailing moving mean: entry i averages values[max(0, i - window + 1) : i + 1]."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile-bootstrap interval of the mean of ``values`` (problems resampled with replacement),
    ``scipy.stats.bootstrap``; [x, x] when every value is x, [nan, nan] for no values."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return [math.nan, math.nan]
    if np.all(data == data[0]):  # every resample has the same mean (scipy warns and returns nan here)
        return [float(data[0]), float(data[0])]
    result = stats.bootstrap(
        (data,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def seeds_for_resolution(diffs_sd: float, target: float, alpha: float = 0.05, power: float = 0.8,
                         most: int = 10_000) -> int | None:
    """The fewest paired seeds n with min_detectable_difference(s_d, n) <= ``target`` (None: more than ``most``)."""
    if not diffs_sd > 0:
        return 2
    for n in range(2, most + 1):
        if min_detectable_difference(diffs_sd, n, alpha, power) <= target:
            return n
    return None


def paired_gain(before: list[float], after: list[float], level: float = 0.95) -> dict[str, float]:
    """The mean gain of ``after`` over ``before`` scored on the same problems, with its t interval over the
    per-problem differences d_i = after_i - before_i: mean(d) +- t_{(1+level)/2, n-1} s_d / sqrt(n). Pairing
    removes the problems' own difficulty from the noise, so it is tighter than comparing two accuracies."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean, half = mean_ci(diffs, level)
    return {"gain": mean, "low": mean - half, "high": mean + half, "n": len(diffs),
            "improved": sum(d > 0 for d in diffs), "worsened": sum(d < 0 for d in diffs)}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    result = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(result.low), float(result.high)
