"""Intervals over samples: percentile bootstrap of a mean, and of a paired mean difference.

Deterministic (a fixed seed per call), so regenerating a table gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float, float]:
    """Mean of ``values`` and the percentile-bootstrap interval of that mean.

    Parameters
    ----------
    values : sequence of float, length n
        One value per sample (NaNs are dropped).
    confidence : float
        Coverage of the interval (0.95 = 2.5th to 97.5th percentile of the resampled means).

    Returns
    -------
    (mean, low, high) : tuple of float
        NaNs when no value is left; ``low == high == mean`` for a single value.
    """
    data = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(data.mean())
    if data.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return mean, float(low), float(high)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired samples (same sample ids, same order) and its bootstrap interval.

    Resampling the pairs (not ``a`` and ``b`` apart) lets the between-sample spread cancel.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    return bootstrap_ci(diffs, confidence=confidence, resamples=resamples, seed=seed)


def separated(low: float, high: float, zero: float = 0.0) -> bool:
    """True when an interval excludes ``zero`` (the difference is resolved at this sample count)."""
    return bool(low > zero or high < zero)
