"""Shapes of a metric along compute, with statistical evidence: improving, flat, inverse, u_shaped,
inverted_u, emergent — and "hidden progress" of a continuous metric where accuracy shows none.

Why: users want to know which tasks get worse with scale (inverse scaling; McKenzie et al. 2023,
"Inverse Scaling: When Bigger Isn't Better"), which turn around later (U-shaped; Wei et al. 2022,
"Inverse scaling can become U-shaped"), which jump suddenly (emergent; Wei et al. 2022, "Emergent
Abilities of Large Language Models"; BIG-bench's breakthroughness, Srivastava et al. 2022), and whether
a smooth metric of the same items already moves before the jump (Schaeffer et al. 2023, "Are Emergent
Abilities of Large Language Models a Mirage?"; Hu et al. 2023, PassUntil).

Points. One value per model: each (family, model)'s final checkpoint, ordered by t = log10(compute),
compute = FLOPs, or parameters where a family's FLOPs are missing (the axis is reported). Families are
never pooled: a curve is one family's models. Values are turned into "goodness" g (the metric, negated
for lower-is-better metrics such as bpb, nll, brier), so that "improving" always means the metric gets
better.

Noise. A covariance Σ of the points: from per-item data (the item bootstrap: resampling the same items
for every model, whose covariance of task means is the plug-in item covariance / n_items, used in that
closed form — it keeps the pairing of items across models), else a ``stderr`` column (diagonal), else
``n_items`` for 0/1 metrics (binomial), else none: then a nominal noise (1% of the metric's scale) gives
shapes without confidence (no p-values). Scatter beyond Σ — a model that is off the curve for reasons
item sampling cannot see — is absorbed as an extra variance τ² (see step 5).

Fits, all weighted by w = 1 / diag(Σ + τ²I): constant; isotonic non-decreasing / non-increasing
(pool-adjacent-violators, via the min-max formula so that thousands of simulated curves are fitted at
once; Robertson, Wright & Dykstra 1988); unimodal ("peak": rises then falls) and anti-unimodal
("valley") as the best split into two isotonic pieces (Stout 2008); concave non-decreasing (a
diminishing-returns increase: non-negative least squares on hinge functions).

Decision rule (α = 0.05; every p-value is a parametric bootstrap: the null curve plus draws from
N(0, Σ + τ²I), ``n_sim`` of them, seeded per curve):
1. Trend. H0: constant. Statistics: RSS(const) − RSS(best monotone) and RSS(const) − RSS(best
   unimodal); the two are combined by their minimum p-value, itself calibrated on the same draws.
   p ≥ α → ``flat``.
2. Turning point. H0: the best monotone fit. Statistic RSS(best monotone) − RSS(best unimodal or
   anti-unimodal). p < α → ``inverted_u`` (peak) or ``u_shaped`` (valley); the turning point is the
   extreme block of that fit, inside the ladder by construction.
3. Otherwise monotone: non-increasing → ``inverse``; non-decreasing → step 4.
4. Emergence. H0: concave non-decreasing (gradual, diminishing returns). Statistic RSS(concave) −
   RSS(isotonic). ``emergent`` when p < α *and* the isotonic fit has a floor then a jump: the first
   k ≥ 2 points rise by at most 20% of the total rise (after a noise allowance of 2 standard errors),
   the next step rises by at least 25% of it and by at least 3× the floor's rise, and, when the
   ``chance`` column is known, the floor lies in the lowest quarter between chance and the curve's top
   (near or below chance). Else ``improving``.
5. Excess scatter. The chosen fit's weighted residuals are compared with what Σ predicts (scaled
   chi-square on n − #blocks dof); if they are too large (p < 0.05), τ² is set so that they match
   (Paule–Mandel style) and steps 1–4 are redone; τ² only grows, at most 4 rounds.

``p_value`` reports the chosen class against its simpler alternative: flat → the trend test's p (large
= no evidence of any trend); improving / inverse → the trend test; u_shaped / inverted_u → the
turning-point test; emergent → the emergence test. Evidence reported with it: Kendall's τ and
Spearman's ρ against t (with their textbook p-values, which ignore Σ), a weighted quadratic's
curvature and vertex (inside the ladder or not), the turning point, the floor (models, level, near
chance), and BIG-bench's scores (Srivastava et al. 2022, appendix "linearity and breakthroughness";
on goodness g along t): I(g) = sign(argmax g − argmin g)·(max g − min g), linearity
L = I(g) / RMS(Δg), breakthroughness B = I(g) / root-median-square(Δg), Δg the consecutive differences.

Hidden progress (early warning). Where the metric is flat (all points), emergent (the floor points) or
has a leading run of ≥ 2 points near chance (within 0.05 of chance or below it), each continuous
metric of the same items that exists (p_correct, bpb_correct, nll_correct, pass_until) is tested on
those models for a significant improvement (H0 constant, statistic RSS(const) − RSS(isotonic
improving), the same bootstrap and excess-scatter guard); ``hidden_progress`` is True when one of them
has p < α / (number of metrics tested).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import nnls

from capscale.errors import CapscaleError

CLASSES = ("improving", "flat", "inverse", "u_shaped", "inverted_u", "emergent")
LOWER_IS_BETTER = frozenset({"bpb_correct", "nll_correct", "brier", "loss", "mean_loss", "ppl", "err", "bpb",
                             "nll", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_bytes", "greedy_acc", "exact_match", "em"})
BOUNDED_METRICS = BINARY_METRICS | {"p_correct", "pass_until", "pass_at_1", "exact_p", "brier"}
CONTINUOUS_METRICS = ("p_correct", "bpb_correct", "nll_correct", "pass_until")

FLOOR_SHARE = 0.20     # the floor may rise by at most this share of the total rise
JUMP_SHARE = 0.25      # the step after the floor carries at least this share of the total rise
JUMP_RATIO = 3.0       # ... and at least this multiple of the floor's own rise
CHANCE_QUARTER = 0.25  # near chance: the floor is in this lowest share between chance and the top
NEAR_CHANCE = 0.05     # a point counts as near chance within this (absolute) margin above chance
NOMINAL_NOISE = 0.01   # without a noise source: 1% of the metric's scale


class TrendError(CapscaleError):
    """A trend analysis cannot run on the given input; the message says what to fix."""


# --- fits (pure, vectorised over rows: Y has shape (S, n), w shape (n,)) ----------------------

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


# --- descriptive evidence ------------------------------------------------------------------

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


# --- the decision procedure ----------------------------------------------------------------

@dataclass
class ShapeFit:
    """The class of one curve (in goodness orientation) and the evidence behind it."""

    label: str
    p_value: float | None
    p_trend: float | None
    p_turn: float | None
    p_emergence: float | None
    fitted: list[float]
    tau: float
    turning_index: int | None = None
    floor: dict | None = None
    rounds: int = 1


def _pvalue(sim: np.ndarray, observed: float) -> float:
    tol = 1e-9 * max(1.0, abs(observed))
    return float((1 + np.sum(sim >= observed - tol)) / (len(sim) + 1))


def _rank_p(sim: np.ndarray) -> np.ndarray:
    """Each draw's own p-value among the draws (for the min-p combination)."""
    order = np.sort(sim)
    return (1 + len(sim) - np.searchsorted(order, sim, side="left")) / (len(sim) + 1)


def noise_factor(cov) -> np.ndarray:
    """A matrix L with L L^T = cov, for drawing correlated noise; tolerant of singular covariances
    (two models scored identically on every item)."""
    cov = np.asarray(cov, dtype=float)
    try:
        return np.linalg.cholesky(cov + np.eye(len(cov)) * 1e-12 * np.max(np.diag(cov)))
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        return vecs * np.sqrt(np.clip(vals, 0.0, None))


def _decide(t, g, cov, chance_g, alpha, Z, sd_measured) -> ShapeFit:
    n = len(g)
    w = 1.0 / np.diag(cov)
    chol = noise_factor(cov)
    noise = Z @ chol.T
    obs = shape_rss(g, w)
    const_fit = np.full(n, (g * w).sum() / w.sum())
    inc_fit, dec_fit = isotonic(g, w, True)[0], isotonic(g, w, False)[0]

    # 1. any trend: min-p of the monotone and the unimodal statistics, calibrated on the same draws
    sims = shape_rss(const_fit + noise, w)
    t_mono = sims["const"] - np.minimum(sims["inc"], sims["dec"])
    t_uni = sims["const"] - np.minimum(sims["peak"], sims["valley"])
    o_mono = float(obs["const"][0] - min(obs["inc"][0], obs["dec"][0]))
    o_uni = float(obs["const"][0] - min(obs["peak"][0], obs["valley"][0]))
    p_min = min(_pvalue(t_mono, o_mono), _pvalue(t_uni, o_uni))
    p_trend = _pvalue(-np.minimum(_rank_p(t_mono), _rank_p(t_uni)), -p_min)
    if n < 2 or p_trend >= alpha:
        return ShapeFit("flat", p_trend, p_trend, None, None, const_fit.tolist(), 0.0)

    # 2. a turning point beyond the best monotone curve
    increasing = obs["inc"][0] <= obs["dec"][0]
    mono_fit = inc_fit if increasing else dec_fit
    p_turn = None
    if n >= 3:
        sims = shape_rss(mono_fit + noise, w)
        t_turn = np.minimum(sims["inc"], sims["dec"]) - np.minimum(sims["peak"], sims["valley"])
        o_turn = float(min(obs["inc"][0], obs["dec"][0]) - min(obs["peak"][0], obs["valley"][0]))
        p_turn = _pvalue(t_turn, o_turn) if o_turn > 0 else 1.0
        if p_turn < alpha:
            peak = obs["peak"][0] <= obs["valley"][0]
            split = int(obs["peak_split" if peak else "valley_split"][0])
            fit = unimodal_fit(g, w, peak, split)
            block = blocks_of(fit)
            extreme = max(block, key=lambda b: fit[b[0]] if peak else -fit[b[0]])
            turn = extreme[int(np.argmax(g[extreme] if peak else -g[extreme]))]
            return ShapeFit("inverted_u" if peak else "u_shaped", p_turn, p_trend, p_turn, None, fit.tolist(),
                            0.0, turning_index=int(turn))
    if not increasing:
        return ShapeFit("inverse", p_trend, p_trend, p_turn, None, dec_fit.tolist(), 0.0)

    # 4. emergence: does the rise beat every gradual (concave) rise, with a floor then a jump?
    p_emergence = None
    if n >= 3:
        concave = concave_increasing(g, t, w)[0]
        o_emerge = float(rss(g, concave, w)[0] - rss(g, inc_fit, w)[0])
        sims_y = concave + noise
        t_emerge = rss(sims_y, concave_increasing(sims_y, t, w), w) - rss(sims_y, isotonic(sims_y, w, True), w)
        p_emergence = _pvalue(t_emerge, o_emerge) if o_emerge > 1e-12 else 1.0
        floor = find_floor(inc_fit, sd_measured, chance_g)
        if p_emergence < alpha and floor is not None and floor["near_chance"] is not False:
            return ShapeFit("emergent", p_emergence, p_trend, p_turn, p_emergence, inc_fit.tolist(), 0.0,
                            floor=floor)
    return ShapeFit("improving", p_trend, p_trend, p_turn, p_emergence, inc_fit.tolist(), 0.0)


def decide_shape(t, g, cov, *, chance_g=None, alpha: float = 0.05, n_sim: int = 999, seed: int = 0,
                 max_rounds: int = 4) -> ShapeFit:
    """Classify one curve (goodness g along t, noise covariance cov); see the module docstring."""
    t, g = np.asarray(t, dtype=float), np.asarray(g, dtype=float)
    cov = np.asarray(cov, dtype=float)
    Z = np.random.default_rng(seed).standard_normal((n_sim, len(g)))
    tau2, result = 0.0, None
    for round_ in range(1, max_rounds + 1):
        result = _decide(t, g, cov + tau2 * np.eye(len(g)), chance_g, alpha, Z, np.sqrt(np.diag(cov)))
        result.tau, result.rounds = float(np.sqrt(tau2)), round_
        extra, _ = excess_scatter(g, cov + tau2 * np.eye(len(g)), blocks_of(np.asarray(result.fitted)))
        if extra <= 1e-12 * max(1.0, float(np.max(np.diag(cov)))):
            break
        tau2 += extra
    return result


def progress_test(t, g, cov, *, n_sim: int = 999, seed: int = 0) -> dict:
    """Does g improve along t beyond noise? One-sided isotonic test against a constant, with the same
    excess-scatter guard as the classifier."""
    g = np.asarray(g, dtype=float)
    n = len(g)
    cov = np.asarray(cov, dtype=float)
    Z = np.random.default_rng(seed).standard_normal((n_sim, n))
    tau2 = 0.0
    for _ in range(4):
        c = cov + tau2 * np.eye(n)
        w = 1.0 / np.diag(c)
        chol = noise_factor(c)
        const = np.full(n, (g * w).sum() / w.sum())
        fit = isotonic(g, w, True)[0]
        observed = float(rss(g, const, w)[0] - rss(g, fit, w)[0])
        sims = const + Z @ chol.T
        stat = rss(sims, (sims * w).sum(-1, keepdims=True) / w.sum(), w) - rss(sims, isotonic(sims, w, True), w)
        p = _pvalue(stat, observed) if observed > 1e-12 else 1.0
        used = tau2
        extra, _ = excess_scatter(g, c, blocks_of(fit))
        if extra <= 0:
            break
        tau2 += extra
    return {"p_value": p, "change": float(fit[-1] - fit[0]), "tau": float(np.sqrt(used))}


# --- noise for a curve -----------------------------------------------------------------------

def binomial_variance(p, n) -> np.ndarray:
    """p(1-p)/n with p shrunk by half an observation, so 0% and 100% keep a positive variance."""
    p, n = np.asarray(p, dtype=float), np.asarray(n, dtype=float)
    shrunk = (p * n + 0.5) / (n + 1.0)
    return shrunk * (1 - shrunk) / n


def item_covariance(matrix: np.ndarray, binary: bool) -> np.ndarray:
    """Covariance of the task means of several models (rows) over the same items (columns) under the item
    bootstrap: the plug-in covariance of the items / n_items (the bootstrap's exact value)."""
    m = matrix.shape[1]
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    cov = centred @ centred.T / m / m
    if binary:
        floor = binomial_variance(matrix.mean(axis=1), m)
        cov[np.diag_indices_from(cov)] = np.maximum(np.diag(cov), floor)
    return cov


@dataclass
class Noise:
    source: str                 # items | stderr | n_items | none
    cov: np.ndarray
    note: str = ""


def curve_noise(points: pd.DataFrame, metric: str, items: pd.DataFrame | None, task: str) -> Noise:
    """The best available noise for one curve: items > stderr > n_items (0/1 metrics) > none; every
    variance is kept above a tiny floor (1e-6 of the values' scale) so weights stay finite."""
    noise = _curve_noise(points, metric, items, task)
    values = points["value"].to_numpy(dtype=float)
    floor = (1e-6 * max(float(np.max(np.abs(values))), 1e-9)) ** 2
    idx = np.diag_indices_from(noise.cov)
    noise.cov[idx] = np.maximum(noise.cov[idx], floor)
    return noise


def _curve_noise(points: pd.DataFrame, metric: str, items: pd.DataFrame | None, task: str) -> Noise:
    values = points["value"].to_numpy(dtype=float)
    n = len(values)
    binary = metric in BINARY_METRICS
    note = ""
    if items is not None and metric in items.columns:
        rows = items[items["task"] == task]
        wanted = points["checkpoint"].astype(str).tolist()
        if len(rows) and set(wanted) <= set(rows["checkpoint"].astype(str)):
            table = rows.pivot_table(index="checkpoint", columns="item", values=metric, aggfunc="first")
            table.index = table.index.astype(str)
            matrix = table.loc[wanted].to_numpy(dtype=float)
            matrix = matrix[:, np.all(np.isfinite(matrix), axis=0)]
            if matrix.shape[1] >= 2:
                if not np.allclose(matrix.mean(axis=1), values, atol=1e-4, rtol=1e-4):
                    note = "per-item means differ from the ladder's values (items from another run?)"
                return Noise("items", item_covariance(matrix, binary), note)
        elif len(rows):
            note = "the per-item data lack some of this curve's checkpoints"
    if "stderr" in points.columns and points["stderr"].notna().all() and (points["stderr"] >= 0).all():
        var = points["stderr"].to_numpy(dtype=float) ** 2
        if binary and "n_items" in points.columns and points["n_items"].notna().all():
            var = np.maximum(var, binomial_variance(values, points["n_items"].to_numpy(dtype=float)))
        return Noise("stderr", np.diag(var), note)
    if binary and "n_items" in points.columns and points["n_items"].notna().all() and (points["n_items"] > 0).all():
        return Noise("n_items", np.diag(binomial_variance(values, points["n_items"].to_numpy(dtype=float))), note)
    scale = 1.0 if metric in BOUNDED_METRICS else max(float(np.mean(np.abs(values))), 1e-12)
    return Noise("none", np.eye(n) * (NOMINAL_NOISE * scale) ** 2, note)


# --- per-item data ---------------------------------------------------------------------------

def load_items(path: str | Path) -> pd.DataFrame:
    """Per-item metrics (checkpoint, task, item, metric columns) from a results store, a per-choice rows
    file (CSV / CSV.gz / Parquet), a per-sample rows file (n_drawn, n_correct, until) or a per-item table."""
    from capscale.ladder import is_results_store, read_table
    from capscale.metrics import item_metrics, sample_item_metrics, store_item_metrics

    path = Path(path)
    if path.is_dir():
        if not is_results_store(path):
            raise TrendError(f"{path}: --items must be a results store (choices/ or samples/ + checkpoints.csv) "
                             "or a per-choice / per-sample / per-item rows file")
        from capscale.store import ResultsStore

        return store_item_metrics(*ResultsStore(path).read_rows())
    if not path.exists():
        raise TrendError(f"{path}: no such items file or store")
    raw = read_table(path, "an items file (per-choice, per-sample or per-item rows)")
    cols = set(raw.columns)
    missing = {"checkpoint", "task", "item"} - cols
    if missing:
        raise TrendError(f"{path}: items need columns checkpoint, task, item; missing {sorted(missing)}")
    if {"choice", "gold", "logprob"} <= cols:
        for c in ("n_chars", "n_bytes", "n_tokens"):
            if c not in raw.columns:
                raw[c] = -1
        raw["gold"] = raw["gold"].astype(bool)
        out = item_metrics(raw)
        if (raw["n_bytes"] <= 0).all():
            out = out.drop(columns=["bpb_correct", "acc_bytes", "acc_norm"])  # byte/char counts unknown
        return out
    if {"n_drawn", "n_correct", "until"} <= cols:
        for c in ("greedy_correct", "exact_p"):
            if c not in raw.columns:
                raw[c] = np.nan
        return sample_item_metrics(raw)
    return raw


# --- a whole ladder ----------------------------------------------------------------------------

@dataclass
class TrendResult:
    """One family x task curve: its class, p-values and evidence, plus the points it came from."""

    family: str
    task: str
    metric: str
    axis: str
    direction: str
    noise_source: str
    label: str
    p_value: float | None
    p_trend: float | None
    p_turn: float | None
    p_emergence: float | None
    models: list[str]
    checkpoints: list[str]
    x: list[float]
    values: list[float]
    stderr: list[float]
    fitted: list[float]
    chance: float | None
    excess_scatter: float
    turning_point: dict | None
    floor: dict | None
    kendall_tau: float | None
    kendall_p: float | None
    spearman_rho: float | None
    spearman_p: float | None
    linearity: float | None
    breakthroughness: float | None
    curvature: dict = field(default_factory=dict)
    hidden_progress: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def confident(self) -> bool:
        return self.noise_source != "none"

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def metric_direction(metric: str, direction: str = "auto") -> str:
    if direction in ("higher", "lower"):
        return direction
    base = metric.split(":")[-1].lower()
    return "lower" if base in LOWER_IS_BETTER or base.startswith(("loss", "bpb", "nll", "ppl", "perplexity")) else "higher"


def curve_seed(seed: int, *keys: str) -> int:
    """A per-curve seed: the same curve gets the same draws whatever else is analysed."""
    return int(zlib.crc32("\x1f".join(map(str, keys)).encode()) ^ (seed * 2654435761 % 2**32))


def family_points(ladder: pd.DataFrame, family: str, task: str, metric: str) -> tuple[pd.DataFrame, str]:
    """The final checkpoint of each model of one family, ordered by compute; the axis used."""
    from capscale.ladder import final_checkpoints

    rows = ladder[(ladder["family"] == family) & (ladder["task"] == task) & (ladder["metric"] == metric)]
    rows = final_checkpoints(rows)
    dup = rows.duplicated(["model"], keep=False)
    if dup.any():
        models = sorted(rows.loc[dup, "model"].unique())[:5]
        raise TrendError(f"family {family!r} task {task!r} metric {metric!r}: several final rows for models "
                         f"{models}; filter the ladder on the column that tells them apart")
    rows = rows.copy()
    if "checkpoint" not in rows.columns or rows["checkpoint"].isna().any():
        rows["checkpoint"] = rows["model"]
    flops_ok = rows["flops"].notna().all() and (rows["flops"] > 0).all()
    axis = "flops" if flops_ok else "params"
    if not flops_ok and not (rows["params"].notna().all() and (rows["params"] > 0).all()):
        raise TrendError(f"family {family!r} task {task!r}: neither flops nor params known for every model")
    rows = rows.sort_values([axis, "model"], kind="stable").reset_index(drop=True)
    return rows, axis


def _chance(points: pd.DataFrame, items: pd.DataFrame | None, task: str, metric: str) -> float | None:
    if "chance" in points.columns and points["chance"].notna().any():
        return float(points["chance"].median())
    if metric in BINARY_METRICS and items is not None and "n_choices" in items.columns:
        rows = items[(items["task"] == task) & items["checkpoint"].astype(str).isin(points["checkpoint"].astype(str))]
        if len(rows) and rows["n_choices"].notna().all():
            return float((1.0 / rows["n_choices"]).mean())
    return None


def analyse_curve(points: pd.DataFrame, axis: str, family: str, task: str, metric: str, *,
                  items: pd.DataFrame | None = None, direction: str = "auto", alpha: float = 0.05,
                  n_sim: int = 999, seed: int = 0) -> TrendResult:
    """Classify one family's curve (rows from :func:`family_points`)."""
    direction = metric_direction(metric, direction)
    sign = 1.0 if direction == "higher" else -1.0
    values = points["value"].to_numpy(dtype=float)
    t = np.log10(points[axis].to_numpy(dtype=float))
    noise = curve_noise(points, metric, items, task)
    chance = _chance(points, items, task, metric)
    g = sign * values
    chance_g = None if chance is None else sign * chance
    notes = [noise.note] if noise.note else []
    if noise.source == "none":
        notes.append("no noise source (no per-item data, stderr or n_items): shape only, without confidence")
    if len(np.unique(t)) < len(t):
        notes.append(f"some models share the same {axis}")
    base = dict(family=family, task=task, metric=metric, axis=axis, direction=direction, noise_source=noise.source,
                models=points["model"].astype(str).tolist(), checkpoints=points["checkpoint"].astype(str).tolist(), x=points[axis].astype(float).tolist(),
                values=values.tolist(), stderr=np.sqrt(np.diag(noise.cov)).tolist(), chance=chance, notes=notes)
    if len(g) < 2:
        return TrendResult(label="insufficient", p_value=None, p_trend=None, p_turn=None, p_emergence=None,
                           fitted=values.tolist(), excess_scatter=0.0, turning_point=None, floor=None,
                           kendall_tau=None, kendall_p=None, spearman_rho=None, spearman_p=None, linearity=None,
                           breakthroughness=None, **base)
    shape = decide_shape(t, g, noise.cov, chance_g=chance_g, alpha=alpha, n_sim=n_sim,
                         seed=curve_seed(seed, family, task, metric))
    confident = noise.source != "none"
    varied = len(g) >= 3 and np.ptp(g) > 0 and np.ptp(t) > 0
    kt = stats.kendalltau(t, g) if varied else None
    sr = stats.spearmanr(t, g) if varied else None
    lin, brk = bigbench_scores(g)
    turning = None
    if shape.turning_index is not None:
        i = shape.turning_index
        turning = {"model": base["models"][i], "x": base["x"][i], "value": float(values[i])}
    floor = None
    if shape.floor is not None:
        k = shape.floor["n_points"]
        floor = {"models": base["models"][:k], "n_points": k, "level": float(sign * shape.floor["level"]),
                 "jump_at": base["models"][k], "near_chance": shape.floor["near_chance"]}
    return TrendResult(
        label=shape.label, p_value=shape.p_value if confident else None,
        p_trend=shape.p_trend if confident else None, p_turn=shape.p_turn if confident else None,
        p_emergence=shape.p_emergence if confident else None, fitted=(sign * np.asarray(shape.fitted)).tolist(),
        excess_scatter=shape.tau, turning_point=turning, floor=floor,
        kendall_tau=None if kt is None else float(kt.statistic), kendall_p=None if kt is None else float(kt.pvalue),
        spearman_rho=None if sr is None else float(sr.statistic), spearman_p=None if sr is None else float(sr.pvalue),
        linearity=lin, breakthroughness=brk, curvature=quadratic_evidence(t, g, noise.cov), **base)


def progress_region(result: TrendResult) -> tuple[list[int], str] | None:
    """Which models to test for hidden progress, and why (module docstring), or None."""
    n = len(result.values)
    if result.label == "flat" and n >= 2:
        return list(range(n)), "flat"
    if result.label == "emergent" and result.floor is not None:
        return list(range(result.floor["n_points"])), "floor before the jump"
    if result.chance is not None and result.metric in BINARY_METRICS | {"p_correct"}:
        sign = 1.0 if result.direction == "higher" else -1.0
        near = [sign * v <= sign * result.chance + NEAR_CHANCE for v in result.values]
        run = 0
        while run < n and near[run]:
            run += 1
        if run >= 2:
            return list(range(run)), "near chance"
    return None


def hidden_progress(result: TrendResult, ladder: pd.DataFrame, items: pd.DataFrame | None, *,
                    alpha: float = 0.05, n_sim: int = 999, seed: int = 0) -> dict | None:
    """Test the continuous metrics of the same task on the models where the metric shows no progress."""
    region = progress_region(result)
    if region is None:
        return None
    idx, why = region
    models = [result.models[i] for i in idx]
    tested = {}
    for metric in CONTINUOUS_METRICS:
        if metric == result.metric:
            continue
        try:
            points, axis = family_points(ladder, result.family, result.task, metric)
        except TrendError:
            points = None
        if points is not None and len(points):
            points = points[points["model"].astype(str).isin(models)]
            points = points[points[result.axis].notna()] if result.axis in points.columns else points
        from_items = (points is None or len(points) < len(models)) and items is not None and metric in items.columns
        if from_items:
            points = _points_from_items(items, result, idx, metric)
        if points is None or len(points) < 2 or len(points) < len(models):
            continue
        points = points.sort_values(result.axis, kind="stable").reset_index(drop=True)
        noise = curve_noise(points, metric, items, result.task)
        sign = 1.0 if metric_direction(metric) == "higher" else -1.0
        t = np.log10(points[result.axis].to_numpy(dtype=float))
        g = sign * points["value"].to_numpy(dtype=float)
        test = progress_test(t, g, noise.cov, n_sim=n_sim, seed=curve_seed(seed, result.family, result.task, metric, "hp"))
        tested[metric] = {"p_value": test["p_value"] if noise.source != "none" else None,
                          "change": sign * test["change"], "first": float(points["value"].iloc[0]),
                          "last": float(points["value"].iloc[-1]), "noise_source": noise.source,
                          "source": "items" if from_items else "ladder", "excess_scatter": test["tau"]}
    out = {"region": why, "models": models, "metrics": tested}
    pvals = [m["p_value"] for m in tested.values() if m["p_value"] is not None]
    if not tested:
        out["hidden_progress"] = None
        out["note"] = "no continuous metric (p_correct, bpb_correct, nll_correct, pass_until) for these models"
    elif not pvals:
        out["hidden_progress"] = None
        out["note"] = "no noise source for the continuous metrics: shape only"
    else:
        out["hidden_progress"] = bool(min(pvals) < alpha / len(pvals))
    return out


def _points_from_items(items: pd.DataFrame, result: TrendResult, idx: list[int], metric: str) -> pd.DataFrame | None:
    """Task means of a per-item metric for the region's checkpoints (when the ladder lacks that metric)."""
    rows = items[items["task"] == result.task]
    if not len(rows):
        return None
    means = rows.groupby(rows["checkpoint"].astype(str))[metric].mean()
    records = []
    for i in idx:
        ck = result.checkpoints[i]
        if ck not in means.index or not np.isfinite(means[ck]):
            return None
        records.append({"model": result.models[i], "checkpoint": ck, result.axis: result.x[i], "value": float(means[ck])})
    return pd.DataFrame.from_records(records)


@dataclass
class TrendReport:
    results: list[TrendResult]
    skipped: list[tuple[str, str, str]]
    notes: list[str]

    def table(self) -> pd.DataFrame:
        return summary_table(self.results)


def analyse_ladder(ladder: pd.DataFrame, metric: str = "acc", *, items: pd.DataFrame | None = None,
                   tasks: list[str] | None = None, families: list[str] | None = None, direction: str = "auto",
                   alpha: float = 0.05, n_sim: int = 999, seed: int = 0, early_warning: bool = True,
                   progress: bool = False) -> TrendReport:
    """Classify every family x task curve of ``metric``; families are never pooled. ``progress``: a bar
    over curves (each costs n_sim parametric-bootstrap draws per test)."""
    rows = ladder[ladder["metric"] == metric]
    if tasks:
        rows = rows[rows["task"].isin(tasks)]
    if families:
        rows = rows[rows["family"].isin(families)]
    if rows.empty:
        metrics = sorted(ladder["metric"].unique())
        with_metric = ladder[ladder["metric"] == metric]
        hint = (f"; tasks with it: {sorted(with_metric['task'].unique())[:20]}, families: "
                f"{sorted(with_metric['family'].unique())}" if len(with_metric) else f"; metrics: {metrics[:20]}")
        raise TrendError(f"no rows for metric {metric!r}" + (f" and tasks {tasks}" if tasks else "")
                         + (f" and families {families}" if families else "") + hint)
    results, skipped = [], []
    from capscale.progress import task_bar

    curves = list(rows.groupby(["task", "family"], sort=True).groups)
    with task_bar(len(curves), "trends", enabled=progress, nested=False) as bar:
        for task, family in curves:
            analyse_one(ladder, task, family, metric, items, direction, alpha, n_sim, seed, early_warning,
                        results, skipped)
            bar.task_done()
    notes = []
    if results and all(r.noise_source == "none" for r in results):
        notes.append("no noise source: no --items, and the ladder has no stderr or n_items column; classes are "
                     "shapes only, reported without confidence (p-values)")
    return TrendReport(results, skipped, notes)


def analyse_one(ladder, task, family, metric, items, direction, alpha, n_sim, seed, early_warning, results,
                skipped) -> None:
    """One family x task curve, appended to ``results`` (or its reason to ``skipped``)."""
    try:
        points, axis = family_points(ladder, family, task, metric)
        result = analyse_curve(points, axis, family, task, metric, items=items, direction=direction,
                               alpha=alpha, n_sim=n_sim, seed=seed)
        if early_warning:
            result.hidden_progress = hidden_progress(result, ladder, items, alpha=alpha, n_sim=n_sim, seed=seed)
    except TrendError as exc:
        skipped.append((task, family, str(exc)))
        return
    results.append(result)


def strongest_metric(tested: dict) -> str:
    """The continuous metric with the smallest p-value; ties (p at its floor) go to the largest relative change."""
    def key(name):
        m = tested[name]
        rel = abs(m["change"]) / max(abs(m["first"]), 1e-12)
        return (2.0 if m["p_value"] is None else m["p_value"], -rel)
    return min(tested, key=key)


def summary_table(results: list[TrendResult]) -> pd.DataFrame:
    records = []
    for r in results:
        evidence = ""
        if r.turning_point:
            evidence = f"turn at {r.turning_point['model']}"
        elif r.floor:
            evidence = f"floor {r.floor['n_points']} models, jump at {r.floor['jump_at']}"
        hp = r.hidden_progress
        hidden = "" if hp is None else ("n/a" if hp["hidden_progress"] is None else ("yes" if hp["hidden_progress"] else "no"))
        if hp and hp["metrics"]:
            first = strongest_metric(hp["metrics"])
            parts = []
            for name in [first] + [m for m in hp["metrics"] if m != first]:
                m = hp["metrics"][name]
                p = "" if m["p_value"] is None else f" p={m['p_value']:.2g}"
                parts.append(f"{name} {m['first']:.3g}->{m['last']:.3g}{p}")
            hidden += " (" + "; ".join(parts) + ")"
        records.append({"task": r.task, "family": r.family, "metric": r.metric, "axis": r.axis, "n": len(r.values),
                        "class": r.label, "p_value": r.p_value, "evidence": evidence,
                        "first": r.values[0], "last": r.values[-1], "linearity": r.linearity,
                        "breakthroughness": r.breakthroughness, "kendall_tau": r.kendall_tau,
                        "excess_scatter": r.excess_scatter, "noise": r.noise_source, "hidden_progress": hidden})
    return pd.DataFrame.from_records(records)
