"""Percentile bootstrap confidence intervals for any statistic of resampled units (rows or users)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n_units: int,
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile interval of `statistic(indices)` over `resamples` draws of `n_units`
    indices with replacement. Draws where the statistic is undefined (NaN, e.g. one class only) are
    skipped; (NaN, NaN) when none is defined, there is nothing to resample or `resamples` is 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    if n_units == 0 or resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_units, n_units)) for _ in range(resamples)], dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
