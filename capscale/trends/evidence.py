"""Descriptive evidence reported next to a class: BIG-bench linearity and breakthroughness, a weighted
quadratic's curvature, the floor before a jump."""

from __future__ import annotations

import numpy as np

from capscale.trends.classes import CHANCE_QUARTER, FLOOR_SHARE, JUMP_RATIO, JUMP_SHARE


def bigbench_scores(g) -> tuple[float, float]:
    """(linearity, breakthroughness) of Srivastava et al. 2022 (BIG-bench, appendix on linearity and
    breakthroughness), on goodness values ordered by scale; NaN for fewer than 2 points or a constant curve."""
    g = np.asarray(g, dtype=float)
    if len(g) < 2:
        return float("nan"), float("nan")
    diffs = np.diff(g)
    signed = np.sign(np.argmax(g) - np.argmin(g)) * (g.max() - g.min())
    rms, rmeds = np.sqrt(np.mean(diffs**2)), np.sqrt(np.median(diffs**2))
    linearity = signed / rms if rms > 0 else float("nan")
    breakthrough = signed / rmeds if rmeds > 0 else (float("inf") * np.sign(signed) if signed else float("nan"))
    return float(linearity), float(breakthrough)


def quadratic_evidence(t, g, cov) -> dict:
    """Weighted quadratic in t: curvature (with its standard error under cov) and the vertex location."""
    t = np.asarray(t, dtype=float)
    if len(np.unique(t)) < 3:
        return {"curvature": None, "curvature_se": None, "vertex": None, "vertex_inside": None}
    centre = t.mean()
    X = np.column_stack([np.ones_like(t), t - centre, (t - centre) ** 2])
    w = 1.0 / np.diag(cov)
    XtW = X.T * w
    bread = np.linalg.pinv(XtW @ X)
    coef = bread @ XtW @ g
    var = bread @ XtW @ cov @ XtW.T @ bread
    vertex = centre - coef[1] / (2 * coef[2]) if coef[2] != 0 else None
    return {"curvature": float(coef[2]), "curvature_se": float(np.sqrt(max(var[2, 2], 0.0))),
            "vertex": None if vertex is None else float(vertex),
            "vertex_inside": None if vertex is None else bool(t.min() < vertex < t.max())}


def find_floor(mu, sd, chance_g=None) -> dict | None:
    """The floor-then-jump pattern in a non-decreasing fit ``mu`` (points with standard errors ``sd``), or None.

    For a break after k >= 2 points: the floor's rise, less a noise allowance of 2 mean standard errors
    of its points (an isotonic fit of a flat noisy run still rises), is at most FLOOR_SHARE of the total
    rise; the next step is at least JUMP_SHARE of the total rise and JUMP_RATIO times the floor's rise.
    The first qualifying break is taken: it is where the curve leaves its floor. ``sd`` is the measured
    noise, not the excess scatter: a zig-zag must not pass for a noisy floor."""
    mu, sd = np.asarray(mu, dtype=float), np.asarray(sd, dtype=float)
    n = len(mu)
    total = mu[-1] - mu[0]
    if n < 3 or total <= 0:
        return None
    best = None
    for k in range(2, n):
        rise = max(mu[k - 1] - mu[0] - 2.0 * float(np.mean(sd[:k])), 0.0)
        jump = mu[k] - mu[k - 1]
        if rise <= FLOOR_SHARE * total and jump >= JUMP_SHARE * total and jump >= JUMP_RATIO * rise:
            best = {"n_points": k, "rise": float(mu[k - 1] - mu[0]), "jump": float(jump)}
            break
    if best is None:
        return None
    level = float(np.mean(mu[:best["n_points"]]))
    best["level"] = level
    if chance_g is None:
        best["near_chance"] = None
    else:
        best["near_chance"] = bool(level <= chance_g + CHANCE_QUARTER * max(mu.max() - chance_g, 0.0))
    return best
