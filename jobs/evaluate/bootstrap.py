"""Percentile bootstrap intervals (scipy.stats.bootstrap) of any statistic of resampled units.

The units are indices (rows, or users), so one resample can feed several arrays at once: a paired
comparison of two models draws the same indices for both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def bootstrap_intervals(statistic: Callable[[np.ndarray], np.ndarray | float], n_units: int, *,
                        resamples: int = 200, confidence: float = 0.95,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile intervals of `statistic(indices)` (a number or a vector of them) over
    `resamples` draws of `n_units` indices with replacement. NaN where the statistic is undefined
    in some draw (e.g. one class only), there is nothing to resample or `resamples` is 0."""
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    if n_units == 0 or resamples == 0:
        nan = np.full(np.shape(statistic(np.arange(n_units))), np.nan) if n_units else np.float64(np.nan)
        return nan, nan
    with warnings.catch_warnings():
        # An undefined draw makes the interval NaN ("n/a" in reports), which says all there is to say.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((np.arange(n_units),), statistic, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile", vectorized=False,
                                 rng=np.random.default_rng(seed))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_units: int, *, resamples: int = 200,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """`bootstrap_intervals` of a scalar statistic, as two floats."""
    low, high = bootstrap_intervals(statistic, n_units, resamples=resamples, confidence=confidence, seed=seed)
    return float(low), float(high)
