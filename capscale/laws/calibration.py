"""Interval calibration from a ladder's own rolling-origin backtests (split-conformal style).

A bootstrap over ladder runs measures how much the fitted curve moves when the runs are redrawn;
it cannot see that the functional form itself is wrong, which is what usually breaks a forecast
far beyond the ladder. The ladder's rolling-origin backtests (``capscale.laws.rolling``) show how
wrong the method actually was on the ladder's own largest runs. For each held-out point the
score is its error in units of its own interval half (the half on the side where the actual value
fell); the factor at level L is the conformal quantile of those scores (at least 1: calibration
only widens), so stretching every interval by it would have covered the held-out points at the
stated level (Vovk et al. 2005; Lei et al. 2018 for the split form).

Held-out points in a ladder sit a few e-folds of compute beyond their fitting runs, a real target
often many more. Where the target extrapolates further than the held-out points did, the factor
grows as (distance / reference distance) ** ``growth``: the bootstrap already widens with distance,
this covers misspecification that grows faster than it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from capscale.laws.rolling import ORIGIN_LEVELS, OriginPoint, mean_error

MAX_FACTOR = 25.0  # a held-out point with a near-zero interval must not make every interval infinite
MIN_DISTANCE = 0.5  # e-folds: an interpolation is still a step beyond the fitted curve's data
DEFAULT_GROWTH = 0.5


def side_score(point: OriginPoint, level: float) -> float:
    """|error| / the interval half on the error's side (inf when that half is zero and the error is not)."""
    lo, hi = point.deviations[level]
    residual = point.actual - point.predicted
    half = hi if residual > 0 else -lo
    if not np.isfinite(half):
        return np.inf
    if half <= 0:
        return 0.0 if residual == 0 else np.inf
    return abs(residual) / half


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n + 1) L)-th smallest score; with too few scores for that, the largest."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if len(scores) == 0:
        return 1.0
    k = math.ceil((len(scores) + 1) * level)
    return float(scores[min(k, len(scores)) - 1])


@dataclass
class Calibration:
    """Widening factors by level, learnt from the held-out points of a ladder's rolling origins."""
    factors: dict = field(default_factory=dict)  # level -> factor >= 1
    reference_distance: float = MIN_DISTANCE
    growth: float = DEFAULT_GROWTH
    error: float | None = None  # mean |error| of the held-out points (each origin weighted equally)
    n_points: int = 0

    def factor(self, level: float, distance: float) -> float:
        levels = sorted(self.factors)
        if not levels:
            base = 1.0
        else:
            base = float(np.interp(level, levels, [self.factors[lv] for lv in levels]))
        stretch = (max(distance, MIN_DISTANCE) / self.reference_distance) ** self.growth
        return float(min(base * max(stretch, 1.0), MAX_FACTOR * max(stretch, 1.0)))

    def to_dict(self) -> dict:
        return {"factors": {str(k): v for k, v in self.factors.items()}, "reference_distance": self.reference_distance,
                "growth": self.growth, "error": self.error, "n_points": self.n_points}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration | None":
        if d is None:
            return None
        return cls({float(k): float(v) for k, v in d["factors"].items()}, float(d["reference_distance"]),
                   float(d["growth"]), d.get("error"), int(d.get("n_points", 0)))


def calibrate(points: list[OriginPoint], growth: float = DEFAULT_GROWTH) -> Calibration:
    """Factors at ORIGIN_LEVELS from the held-out points (no points: factors of 1, growth only)."""
    usable = [p for p in points if p.deviations and all(np.isfinite(v) for d in p.deviations.values() for v in d)]
    factors = {}
    for level in ORIGIN_LEVELS:
        scores = np.array([side_score(p, level) for p in usable])
        factors[level] = min(max(1.0, conformal_quantile(scores, level)), MAX_FACTOR) if len(scores) else 1.0
    distances = [max(p.distance, MIN_DISTANCE) for p in usable]
    reference = float(np.median(distances)) if distances else MIN_DISTANCE
    return Calibration(factors, reference, growth, mean_error(points) if points else None, len(usable))
