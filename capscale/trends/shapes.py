"""Shape fits of curves (pure, vectorised over rows: Y has shape (S, n), w shape (n,)): constant, isotonic,
unimodal, concave non-decreasing, and the excess-scatter check of a fit's blocks."""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.optimize import nnls


def _rows(Y) -> np.ndarray:
    return np.atleast_2d(np.asarray(Y, dtype=float))


def rss(Y, fit, w) -> np.ndarray:
    return (((_rows(Y) - fit) ** 2) * w).sum(axis=-1)


def isotonic(Y, w, increasing: bool = True) -> np.ndarray:
    """Weighted isotonic regression of every row, by the min-max formula
    mu_i = max_{j<=i} min_{k>=i} mean_w(y_j..y_k), so thousands of rows are fitted without a Python loop."""
    Y = _rows(Y) if increasing else -_rows(Y)
    n = Y.shape[-1]
    cy = np.concatenate([np.zeros((Y.shape[0], 1)), np.cumsum(Y * w, axis=-1)], axis=-1)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    upper = np.triu(np.ones((n, n), dtype=bool))                     # [j, k] with k >= j
    den = np.where(upper, cw[None, 1:] - cw[:-1, None], 1.0)
    means = np.where(upper, (cy[:, None, 1:] - cy[:, :-1, None]) / den, np.inf)
    suffix_min = np.minimum.accumulate(means[..., ::-1], axis=-1)[..., ::-1]  # [j, i] = min_{k>=i} A[j, k]
    fit = np.where(upper, suffix_min, -np.inf).max(axis=-2)                   # max over j <= i
    return fit if increasing else -fit


def prefix_rss(Y, w, increasing: bool) -> np.ndarray:
    """(S, n): RSS of the isotonic fit of every prefix y_0..y_m."""
    Y = _rows(Y)
    return np.stack([rss(Y[:, :m + 1], isotonic(Y[:, :m + 1], w[:m + 1], increasing), w[:m + 1])
                     for m in range(Y.shape[1])], axis=1)


def shape_rss(Y, w) -> dict[str, np.ndarray]:
    """RSS of the constant, monotone and (anti-)unimodal fits of every row, with the best split points.

    A unimodal sequence is a non-decreasing prefix followed by a non-increasing suffix, so its best fit is
    the best split into two isotonic pieces; the empty prefix or suffix makes it include the monotone fits."""
    Y = _rows(Y)
    S, n = Y.shape
    const = rss(Y, (Y * w).sum(-1, keepdims=True) / w.sum(), w)
    inc_p, dec_p = prefix_rss(Y, w, True), prefix_rss(Y, w, False)
    # a non-increasing fit of the last L points is a non-decreasing fit of the first L of the reversed row
    rev_inc, rev_dec = prefix_rss(Y[:, ::-1], w[::-1], True), prefix_rss(Y[:, ::-1], w[::-1], False)
    zero = np.zeros((S, 1))
    # column s = a prefix of s points (0..n) followed by a suffix of n - s points
    pre_inc, pre_dec = np.hstack([zero, inc_p]), np.hstack([zero, dec_p])
    suf_dec, suf_inc = np.hstack([zero, rev_inc])[:, ::-1], np.hstack([zero, rev_dec])[:, ::-1]
    peak, valley = pre_inc + suf_dec, pre_dec + suf_inc
    return {"const": const, "inc": inc_p[:, -1], "dec": dec_p[:, -1],
            "peak": peak.min(axis=1), "valley": valley.min(axis=1),
            "peak_split": peak.argmin(axis=1), "valley_split": valley.argmin(axis=1)}


def unimodal_fit(y, w, peak: bool, split: int) -> np.ndarray:
    """The fit of one row split after ``split`` points: rising then falling (peak) or the reverse."""
    parts = []
    if split > 0:
        parts.append(isotonic(y[:split], w[:split], increasing=peak)[0])
    if split < len(y):
        parts.append(isotonic(y[split:], w[split:], increasing=not peak)[0])
    return np.concatenate(parts)


def concave_basis(t) -> np.ndarray:
    """Columns whose non-negative combinations (plus a free constant) are exactly the concave
    non-decreasing sequences on t: t - t_last and min(t - t_j, 0) at the interior points."""
    t = np.asarray(t, dtype=float)
    cols = [np.ones_like(t), -np.ones_like(t), t - t[-1]] + [np.minimum(t - tj, 0.0) for tj in t[1:-1]]
    return np.column_stack(cols)


def concave_increasing(Y, t, w) -> np.ndarray:
    """Weighted least squares fit of every row by a concave non-decreasing curve in t (NNLS)."""
    Y = _rows(Y)
    basis = concave_basis(t)
    sw = np.sqrt(w)
    design = basis * sw[:, None]
    fits = np.empty_like(Y)
    for s, y in enumerate(Y):
        coef, _ = nnls(design, y * sw, maxiter=50 * design.shape[1])
        fits[s] = basis @ coef
    return fits


def blocks_of(fit, tol: float = 1e-9) -> list[list[int]]:
    """Runs of equal fitted values: the level sets a piecewise-constant fit projects onto."""
    scale = tol * max(1.0, float(np.max(np.abs(fit))))
    out = [[0]]
    for i in range(1, len(fit)):
        if abs(fit[i] - fit[i - 1]) <= scale:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def block_projection(blocks, w) -> np.ndarray:
    n = sum(len(b) for b in blocks)
    H = np.zeros((n, n))
    for b in blocks:
        H[np.ix_(b, b)] = w[b] / w[b].sum()
    return H


def excess_scatter(g, cov, blocks, alpha: float = 0.05) -> tuple[float, float]:
    """(tau^2, p): extra variance making the fit's weighted residuals match their expectation, when they
    exceed it significantly (scaled chi-square on n - #blocks dof), else 0."""
    n = len(g)
    df = n - len(blocks)
    if df < 1:
        return 0.0, float("nan")
    eye = np.eye(n)

    def gap(tau2):
        c = cov + tau2 * eye
        w = 1.0 / np.diag(c)
        R = eye - block_projection(blocks, w)
        r = R @ g
        return float(w @ r**2), float(np.trace((w[:, None] * R) @ c @ R.T))

    observed, expected = gap(0.0)
    p = float(stats.chi2.sf(observed / expected * df, df)) if expected > 0 else 0.0
    if p >= alpha:
        return 0.0, p
    lo, hi = 0.0, max(float(np.var(g)), float(np.max(np.diag(cov)))) * 100 + 1e-300
    for _ in range(200):
        o, e = gap(hi)
        if o <= e:
            break
        hi *= 4
    for _ in range(80):
        mid = 0.5 * (lo + hi) if lo == 0 else np.sqrt(lo * hi)
        o, e = gap(mid)
        lo, hi = (mid, hi) if o > e else (lo, mid)
        if hi - lo <= 1e-6 * hi:
            break
    return hi, p
