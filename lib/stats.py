"""Small statistics shared by the accuracy notebooks: Wilson intervals and the spread across seeds."""
from __future__ import annotations

import numpy as np


def wilson_interval(k, n, z: float = 1.96):
    """Wilson score interval for k successes out of n trials (nan, nan for n = 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def seed_spread(values) -> dict:
    """Mean, min, max and standard deviation of a per-seed quantity (n = number of seeds)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return dict(n=0, mean=float("nan"), min=float("nan"), max=float("nan"), std=float("nan"))
    return dict(n=int(v.size), mean=float(v.mean()), min=float(v.min()), max=float(v.max()),
                std=float(v.std(ddof=1)) if v.size > 1 else 0.0)


__all__ = ["seed_spread", "wilson_interval"]
