"""Interval calibration from a ladder's own rolling-origin backtests (split-conformal style).

A bootstrap over ladder runs measures how much the fitted curve moves when the runs are redrawn;
it cannot see that the functional form itself is wrong, which is what usually breaks a forecast
far beyond the ladder. The ladder's rolling-origin backtests (``capscale.laws.rolling``) show how
wrong the method actually was on the ladder's own largest runs: their errors are the
misspecification the bootstrap misses. The calibrated interval adds it to the bootstrap's:

    half-width = sqrt(bootstrap half-width^2 + q^2),

q being the conformal quantile at the interval's level (Vovk et al. 2005; Lei et al. 2018 for the
split form: the ceil((n + 1) L)-th smallest, the largest when there are too few) of the held-out
errors, each scaled to the target's extrapolation distance as (D / d)^growth: an error made d
e-folds of compute beyond its fitting runs grows to the target's D e-folds (a forecast 100x beyond
the ladder's compute cannot be as sure as one 3x beyond). Errors and the bootstrap spread are
treated as independent, so their variances add.

The default growth (0.5: errors grow as the square root of the extrapolation distance) was chosen
on the table over every public ladder in results/backtests/SUMMARY.md, where it brings the 90%
interval's coverage closest to 90% with the narrowest intervals of the candidates tried (0, 0.5, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from capscale.laws.rolling import OriginPoint, mean_error

MIN_DISTANCE = 0.5  # e-folds: an interpolation in compute is still a step beyond the fitted curve's data
DEFAULT_GROWTH = 0.5


def conformal_quantile(scores, level: float) -> float:
    """The ceil((n + 1) L)-th smallest score; with too few scores for that, the largest; 0 with none."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if len(scores) == 0:
        return 0.0
    k = math.ceil((len(scores) + 1) * level)
    return float(scores[min(k, len(scores)) - 1])


@dataclass
class Calibration:
    """The held-out errors of a ladder's rolling origins and how they scale to a target."""
    residuals: list = field(default_factory=list)  # actual - predicted of each held-out run
    distances: list = field(default_factory=list)  # its extrapolation distance (e-folds of compute)
    growth: float = DEFAULT_GROWTH
    error: float | None = None  # mean |error| of the held-out points (each origin weighted equally)

    @property
    def n_points(self) -> int:
        return len(self.residuals)

    def extra(self, level: float, distance: float) -> float:
        """q: the misspecification half-width to add at ``level`` for a target ``distance`` e-folds out."""
        target = max(distance, MIN_DISTANCE)
        scaled = [abs(r) * max((target / max(d, MIN_DISTANCE)) ** self.growth, 1.0)
                  for r, d in zip(self.residuals, self.distances)]
        return conformal_quantile(scaled, level)

    def widen(self, level: float, distance: float, lo: float, hi: float) -> tuple[float, float]:
        """The bootstrap deviations (lo <= 0 <= hi) with the misspecification half-width added."""
        q = self.extra(level, distance)
        return -math.hypot(lo, q), math.hypot(hi, q)

    def to_dict(self) -> dict:
        return {"residuals": list(map(float, self.residuals)), "distances": list(map(float, self.distances)),
                "growth": self.growth, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration | None":
        if d is None:
            return None
        return cls(list(d["residuals"]), list(d["distances"]), float(d["growth"]), d.get("error"))


def calibrate(points: list[OriginPoint], growth: float = DEFAULT_GROWTH, link=None) -> Calibration:
    """The calibration learnt from a configuration's held-out points (none: nothing is added);
    ``link`` (forward, inverse): residuals measured in that space (PassUntil's log(-log p))."""
    forward = link[0] if link is not None else (lambda v: v)
    usable = [p for p in points if np.isfinite(p.actual) and np.isfinite(p.predicted)]
    with np.errstate(divide="ignore", invalid="ignore"):
        residuals = [float(forward(np.array(p.actual)) - forward(np.array(p.predicted))) for p in usable]
    kept = [(r, p) for r, p in zip(residuals, usable) if np.isfinite(r)]
    return Calibration([r for r, _ in kept], [p.distance for _, p in kept], growth,
                       mean_error(usable) if usable else None)
