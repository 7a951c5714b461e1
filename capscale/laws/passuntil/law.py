"""The task-level PassUntil law PU = exp(-c x^-alpha), fitted as a line in log(-log PU) with delta-method weights."""

from __future__ import annotations

import numpy as np

from capscale.laws.fitting import FitError, FitResult, residuals
from capscale.laws.forms import PASS_UNTIL_POWER, normalise_inputs

P_MAX = 1.0 - 1e-9  # log(-log 1) is -inf; its delta-method weight (log p)^2 is ~1e-18 at this clip
REL_VAR_FLOOR = 1e-8


def loglog(p) -> np.ndarray:
    """log(-log p), the space in which the PassUntil law is a straight line in ln N."""
    return np.log(-np.log(np.asarray(p, dtype=float)))


def delta_weights(p, rel_var) -> np.ndarray:
    """1 / var(log(-log p)) = (log p)^2 / rel_var by the delta method (rel_var = var(p) / p^2)."""
    p = np.asarray(p, dtype=float)
    return np.log(p) ** 2 / np.maximum(np.asarray(rel_var, dtype=float), REL_VAR_FLOOR)


def fit_law(values, pu, *, x: str = "params", rel_var=None, reference: dict | None = None) -> FitResult:
    """Weighted least squares of log(-log PU) on ln x (see the module docstring) as a FitResult of
    ``forms.pass_until_power`` (parameters a, alpha in the normalised input z = ln x - centre), so it
    predicts, saves and loads like every other fit. ``reference`` reuses a fit's centring."""
    form = PASS_UNTIL_POWER[x]
    pu = np.asarray(pu, dtype=float)
    if pu.size == 0 or not np.all(np.isfinite(pu)) or np.any(pu <= 0) or np.any(pu > 1):
        raise FitError(f"{form.name}: PassUntil values must lie in (0, 1] (got {pu.min() if pu.size else 'none'}"
                       f"..{pu.max() if pu.size else ''})")
    try:
        z, reference = normalise_inputs(form, {x: values}, reference)
    except ValueError as e:
        raise FitError(f"{form.name}: {e}") from e
    zx = z[x]
    p = np.minimum(pu, P_MAX)
    w = delta_weights(p, 1.0 if rel_var is None else rel_var)
    w = np.where(np.isfinite(w), w, 0.0)
    sw = float(w.sum())
    distinct = len(np.unique(zx[w > 0]))
    if distinct < 2 or not sw > 0:
        raise FitError(f"{form.name}: {distinct} distinct {x} value(s) cannot determine a slope and a level")
    g = loglog(p)
    zbar, gbar = w @ zx / sw, w @ g / sw
    sxx = float(w @ (zx - zbar) ** 2)
    slope = float(w @ ((zx - zbar) * (g - gbar))) / sxx
    params = {"a": float(gbar - slope * zbar), "alpha": -slope}
    objective = float(w @ (g - params["a"] - slope * zx) ** 2)
    return FitResult(form=form, params=params, reference=reference, objective=objective, n_points=len(pu),
                     n_starts=1, n_converged=1, residuals=residuals(form, params, z, pu))


def law_parameters(fit: FitResult) -> dict:
    """The law in raw units: PU(x) = exp(-c * x^-alpha); returns alpha, log_c (natural log) and c."""
    centre = next(iter(fit.reference.values()))[0]
    log_c = fit.params["a"] + fit.params["alpha"] * centre
    return {"alpha": fit.params["alpha"], "log_c": log_c, "c": float(np.exp(log_c)) if log_c < 700 else np.inf}
