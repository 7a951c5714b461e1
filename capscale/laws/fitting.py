"""Robust, deterministic fitting of a Form: Huber loss, multi-start L-BFGS-B with bounds.

Huber on log residuals with delta = 1e-3 is the objective of Hoffmann et al. 2022 and of
the OLMo ladder paper; it keeps one odd run from dragging the curve. Every start of the
grid is tried in a fixed order and the best objective wins, so the same data always gives
the same parameters. A fit raises FitError instead of returning a curve nobody should trust:
too few points, or no start that converged.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from capscale.errors import CapscaleError
from capscale.laws.forms import Form, get_form, normalise_inputs
from capscale.laws.solver import batch_objective, solve_batch

DEFAULT_DELTA = {"log": 1e-3, "linear": 1e-2}


class FitError(CapscaleError):
    """A fit that cannot be trusted: too few points or no converged start."""


@dataclass
class FitResult:
    form: Form
    params: dict[str, float]
    reference: dict  # normalisation constants of the inputs (see forms.normalise_inputs)
    objective: float
    n_points: int
    n_starts: int
    n_converged: int
    residuals: np.ndarray = field(repr=False, default=None)
    fixed: dict = field(default_factory=dict)

    def predict(self, **raw) -> np.ndarray:
        z, _ = normalise_inputs(self.form, raw, self.reference)
        return np.asarray(self.form(self.params, z), dtype=float)

    @property
    def n_free(self) -> int:
        return len([p for p in self.form.param_names if p not in self.fixed])

    def to_dict(self) -> dict:
        """What a forecast needs (JSON-ready): the form by name, parameters, input normalisation."""
        return {"form": self.form.name, "params": self.params,
                "reference": {k: list(v) for k, v in self.reference.items()}, "n_points": self.n_points}

    @classmethod
    def from_dict(cls, d: dict) -> "FitResult":
        return cls(form=get_form(d["form"]), params=d["params"], reference={k: tuple(v) for k, v in d["reference"].items()},
                   objective=float("nan"), n_points=d["n_points"], n_starts=0, n_converged=0)


_BLAS_LIMIT_DEPTH = [0]
_CONTROLLER: list = []  # one ThreadpoolController per process: finding the BLAS libraries costs ~10 ms a time


def blas_controller():
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


class one_blas_thread:
    """L-BFGS-B calls BLAS on tiny matrices; a multi-threaded BLAS makes each call cost
    milliseconds (15x slower fits on a busy 2-core machine). Re-entrant: only the outermost use
    sets the limit, and the thread pools are inspected once per process (a fresh inspection on
    every fit cost the choice-mass bootstrap a third of its time)."""

    def __enter__(self):
        _BLAS_LIMIT_DEPTH[0] += 1
        self.limit = blas_controller().limit(limits=1, user_api="blas") if _BLAS_LIMIT_DEPTH[0] == 1 else None
        return self

    def __exit__(self, *exc):
        _BLAS_LIMIT_DEPTH[0] -= 1
        if self.limit is not None:
            self.limit.restore_original_limits()


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def huber_slope(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


COMPLEX_STEP = 1e-20


def value_and_jacobian(form: Form, x: np.ndarray, free: list[str], fixed: dict, z: dict, exact_only: bool = False):
    """Prediction [n_points] and d prediction / d free params [n_free, n_points]: the form's
    closed-form gradient when it has one, else the complex-step method (one vectorised
    evaluation of the formula, whose real part is the prediction; exact to rounding)."""
    if form.gradient is not None and not exact_only:
        params = {**fixed, **dict(zip(free, x))}
        partials = form.gradient(params, z)
        return form(params, z), np.array([partials[p] for p in free])
    n = len(free)
    perturbed = np.tile(x.astype(complex), (n, 1)) + 1j * COMPLEX_STEP * np.eye(n)  # row i moves parameter i
    params = {**fixed, **{p: perturbed[:, i:i + 1] for i, p in enumerate(free)}}
    out = form(params, z)
    return out.real[0], out.imag / COMPLEX_STEP


def residuals(form: Form, params: dict, z: dict, y: np.ndarray) -> np.ndarray:
    pred = form(params, z)
    if form.space == "log":
        return np.log(np.clip(pred, 1e-12, None)) - np.log(y)
    return pred - y


def start_points(form: Form, free: list[str], y: np.ndarray) -> list[dict]:
    """The form's grid, with data-relative entries scaled by statistics of y."""
    stats = {"min_y": float(np.min(y)), "range_y": float(np.ptp(y)) or 1.0}
    axes = []
    for name in free:
        scale = stats[form.grid_scale[name]] if name in form.grid_scale else 1.0
        lo, hi = form.bounds[name]
        axes.append([float(np.clip(v * scale, lo, hi)) for v in form.start_grid[name]])
    return [dict(zip(free, combo)) for combo in itertools.product(*axes)]


def best_starts(grid: list[dict], free: list[str], objective, n_best: int) -> list[dict]:
    """The ``n_best`` grid points with the lowest objective (ties keep grid order): running
    L-BFGS-B from every point of a 100-point grid costs 10x more and finds the same optimum.
    ``objective`` maps an array of points [G, P] to their objectives [G]."""
    values = objective(np.array([[g[p] for p in free] for g in grid], dtype=float))
    order = np.argsort(values, kind="stable")[:n_best]
    return [grid[i] for i in order]


def fit_form(
    form: Form,
    inputs: dict,
    y,
    *,
    fixed: dict | None = None,
    delta=None,
    starts: list[dict] | None = None,
    weights=None,
    reference: dict | None = None,
    n_best: int = 8,
    extra_starts: list[dict] | None = None,
) -> FitResult:
    """Fit ``form`` to (inputs, y). ``fixed`` pins parameters (e.g. b = chance); ``starts``
    replaces the grid and ``reference`` the input normalisation (a bootstrap refit warm-starts
    from the full-data optimum in the full-data coordinates). ``delta``: the Huber threshold, one
    number or one per point (``np.inf`` = a squared loss for that point, e.g. an anchor that a
    threshold sized for data residuals must not clip). ``weights``: one per point. ``extra_starts``
    join the grid's best (e.g. the optimum without an anchor point, a good start with it).

    The starts are refined together by the batched Levenberg-Marquardt of ``capscale.laws.solver``
    and the best is polished by L-BFGS-B, so the optimum is L-BFGS-B's from the best start."""
    fixed = dict(fixed or {})
    y = np.asarray(y, dtype=float)
    if not np.all(np.isfinite(y)):
        raise FitError(f"{form.name}: targets contain NaN/inf")
    if form.space == "log" and np.any(y <= 0):
        raise FitError(f"{form.name}: log-space fit needs positive targets")
    free = [p for p in form.param_names if p not in fixed]
    if len(y) < len(free):
        raise FitError(f"{form.name}: {len(y)} points cannot determine {len(free)} free parameters ({', '.join(free)})")
    z, reference = normalise_inputs(form, inputs, reference)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    d = delta if delta is not None else DEFAULT_DELTA[form.space]
    bounds = [form.bounds[p] for p in free]

    log_y = np.log(y) if form.space == "log" else None

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            pred, dr = value_and_jacobian(form, x, free, fixed, z)
            if form.space == "log":
                pred = np.maximum(pred, 1e-12)
                r = np.log(pred) - log_y
                dr = dr / pred
            else:
                r = pred - y
            value = float(w @ huber(r, d))
            grad = dr @ (w * huber_slope(r, d))
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return 1e30, np.zeros(len(free))
        return value, grad

    def solve(x0: np.ndarray) -> tuple[np.ndarray, float, bool]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds)
        return res.x, float(res.fun), bool(res.success)

    def grid_objective(points: np.ndarray) -> np.ndarray:
        return batch_objective(form, points, free, fixed, z, y, w, d)

    candidates = starts if starts is not None else best_starts(start_points(form, free, y), free, grid_objective, n_best)
    candidates = list(candidates) + [{p: s[p] for p in free} for s in (extra_starts or [])]
    with one_blas_thread():
        x0 = np.array([[start[p] for p in free] for start in candidates], dtype=float)
        xs, fs, ok = solve_batch(form, free, fixed, z, y, w, x0, d)
        n_converged = int(ok.sum())
        k = int(np.argmin(fs))  # the lowest objective reached, converged or still creeping
        polished, fun, success = solve(xs[k])
        best_x, best_fun = (xs[k], float(fs[k])) if ok[k] else (None, np.inf)
        if success and np.isfinite(fun) and fun < 1e30 and fun <= fs[k] * (1 + 1e-9) + 1e-300:
            best_x, best_fun = polished, fun
            n_converged = max(n_converged, 1)
    if best_x is None:
        raise FitError(f"{form.name}: no start of {len(candidates)} converged on {len(y)} points")
    params = {**fixed, **{p: float(v) for p, v in zip(free, best_x)}}
    return FitResult(
        form=form, params=params, reference=reference, objective=float(best_fun), fixed=fixed, n_points=len(y),
        n_starts=len(candidates), n_converged=n_converged, residuals=residuals(form, params, z, y),
    )


def refit_many(fit: FitResult, inputs: dict, y, weights, delta=None) -> list[FitResult | None]:
    """Refits of a fitted form on many weighted versions of its data at once (a bootstrap: the
    weights are how often each point was drawn; ``inputs`` and ``y`` may differ per resample,
    [B, n], when benchmark items are redrawn too), warm-started from ``fit``'s optimum in its
    coordinates. A refit that does not converge is None (counted as failed by the caller).
    An averaged fit (capscale.laws.averaged, which imports this module) refits each of its members."""
    if hasattr(fit, "members"):
        return fit.refit_many(inputs, y, weights, delta)
    form, fixed = fit.form, fit.fixed
    free = [p for p in form.param_names if p not in fixed]
    w = np.asarray(weights, dtype=float)
    B = w.shape[0]
    y = np.asarray(y, dtype=float)
    if B == 0:
        return []
    z, _ = normalise_inputs(form, inputs, fit.reference)
    d = delta if delta is not None else DEFAULT_DELTA[form.space]
    x0 = np.tile([fit.params[p] for p in free], (B, 1))
    with one_blas_thread():
        xs, fs, ok = solve_batch(form, free, fixed, z, y, w, x0, d)
    n = y.shape[-1]
    return [FitResult(form=form, params={**fixed, **{p: float(v) for p, v in zip(free, xs[b])}}, reference=fit.reference,
                      objective=float(fs[b]), fixed=fixed, n_points=n, n_starts=1, n_converged=1) if ok[b] else None
            for b in range(B)]
