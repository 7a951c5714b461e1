"""Partial pooling of step 2's shape across the tasks of a ladder (random effects, empirical Bayes).

A noisy task fitted alone can get any slope of accuracy against its loss; the other tasks of the
same ladder say what slopes are usual. Each task's shape parameter (the sigmoid's or exponential's
slope, in raw loss units so tasks with different loss scales compare; the sigmoid's height where
the ceiling is fitted) is estimated with its Gauss-Newton standard error; the between-task spread
tau^2 comes from DerSimonian & Laird (1986); the target task's value is shrunk toward the pooled
mean by the precision weights, mu + (theta - mu) tau^2 / (tau^2 + v) (the same random-effects
logic as the choice-mass predictor uses across items). Step 2 is then refitted with the shape
pinned at that value.
"""

from __future__ import annotations

import numpy as np

from capscale.laws.fitting import FitResult
from capscale.laws.forms import normalise_inputs

SHAPE_PARAMETERS = {"sigmoid_loss": ("k", "a"), "exponential_loss": ("gamma",), "exponential_loss_pinned": ("gamma",)}
RAW_SLOPE = {"k", "gamma"}  # per standard deviation of the loss in the fit: divided by it to compare tasks


def shape_estimates(fit: FitResult, loss: np.ndarray, y: np.ndarray, pooled: tuple) -> dict[str, tuple[float, float]]:
    """{parameter: (estimate, variance)} of a step-2 fit, slopes in raw loss units; variance from
    sigma^2 (J'J)^-1 at the optimum (inf where the parameter is pinned or not identified)."""
    form = fit.form
    free = [p for p in form.param_names if p not in fit.fixed]
    z, _ = normalise_inputs(form, {"loss": loss}, fit.reference)
    scale = fit.reference["loss"][1]
    out = {}
    if form.gradient is None or len(y) <= len(free):
        return {p: (fit.params[p] / (scale if p in RAW_SLOPE else 1.0), np.inf) for p in pooled if p in fit.params}
    partials = form.gradient(fit.params, z)
    J = np.array([np.broadcast_to(partials[p], z["loss"].shape) for p in free])
    r = y - form(fit.params, z)
    sigma2 = float(r @ r) / max(len(y) - len(free), 1)
    try:
        cov = sigma2 * np.linalg.pinv(J @ J.T)
    except np.linalg.LinAlgError:
        cov = np.full((len(free), len(free)), np.inf)
    for p in pooled:
        if p not in fit.params:
            continue
        unit = scale if p in RAW_SLOPE else 1.0
        variance = float(cov[free.index(p), free.index(p)]) / unit ** 2 if p in free else np.inf
        out[p] = (fit.params[p] / unit, variance if np.isfinite(variance) and variance > 0 else np.inf)
    return out


def shrink(target: tuple[float, float], others: list[tuple[float, float]]) -> float:
    """The target's estimate shrunk toward the random-effects mean of all tasks (target included)."""
    values = np.array([target[0]] + [o[0] for o in others], dtype=float)
    variances = np.array([target[1]] + [o[1] for o in others], dtype=float)
    ok = np.isfinite(values) & np.isfinite(variances) & (variances > 0)
    if ok.sum() < 3 or not np.isfinite(target[1]):
        return float(target[0]) if ok.sum() < 3 else float(np.median(values[ok]))
    v, x = variances[ok], values[ok]
    w = 1.0 / v
    mu_fixed = float(w @ x / w.sum())
    q = float(w @ (x - mu_fixed) ** 2)
    tau2 = max(0.0, (q - (len(x) - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    w_star = 1.0 / (v + tau2)
    mu = float(w_star @ x / w_star.sum())
    if tau2 == 0.0:
        return mu
    return float(mu + (target[0] - mu) * tau2 / (tau2 + target[1]))
