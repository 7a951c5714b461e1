"""The decision procedure: parametric-bootstrap tests of one curve under its noise (steps 1-5 of the
capscale.trends docstring), and the progress test of hidden progress."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capscale.trends.evidence import find_floor
from capscale.trends.shapes import blocks_of, concave_increasing, excess_scatter, isotonic, rss, shape_rss, unimodal_fit


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
