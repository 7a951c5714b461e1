"""The PassUntil scaling law (Hu et al. 2023, "Unlock Predictable Scaling from Emergent Abilities",
arXiv 2310.03262): forecast tiny pass rates of generative tasks across scale.

PassUntil samples every item until it is solved K times, so even pass rates of 1e-5 get a
finite estimate with a relative error of about 1/sqrt(K), whatever the rate. The paper's task
law is

    PU(N) = exp(-c * N^-alpha)   <=>   log(-log PU) = log c - alpha * ln N,

a straight line in ln N (``forms.pass_until_power``; N = params by default, or tokens / flops),
and its per-item form PU(N) = mean_i exp(-c_i * N^-alpha_i).

Task law. Fitted by weighted least squares on log(-log PU) against ln N, in closed form: the law
is linear there (the paper's own procedure), a closed form has no starting points, local minima or
convergence failures (a bootstrap refit cannot fail except for lack of distinct sizes), and
``accelerated_emergence`` tests curvature in the same space, so its slope is the predictor's alpha.
The weights come from the delta method,

    var(log(-log p)) = var(p) / (p log p)^2 = rel_var / (log p)^2,   rel_var = var(p) / p^2,

so a point's weight is (log p)^2 / rel_var. For a task value rel_var is taken from the ladder
(``pass_until_lower``/``pass_until_upper`` rows: (ln(upper/lower))^2; else a ``stderr`` column:
(stderr/value)^2) and is otherwise constant (PassUntil's error is relative). This is what makes
the linearised fit robust where a naive one is not: a value near 1 has log(-log PU) -> -inf, but
(log p)^2 -> 0 gives it no pull (a value of exactly 1 is clipped to 1 - 1e-9 and has weight ~1e-18),
and to first order the fit is the same as least squares on log PU, the space in which PassUntil's
noise is homoscedastic (the space of ``pass_until_power`` for ``fit_form``).

Per-item form (``per_item=True``; needs per-item sample counts). Item i's law is fitted to its raw
counts by maximum likelihood: successes c_ij in n_ij draws at p_ij = exp(-exp(a_i - alpha_i z_j)) is a
binomial GLM with the complementary log-log link, and the likelihood is the same under PassUntil's
stopping rule (sample until K successes or the budget) as under fixed n. Fitting the counts rather
than log(-log) of each estimate matters: with K = 4 a per-point transform is biased by ~20% (Jensen),
while the likelihood's bias shrinks with all of the item's successes together, and an unsolved size
(c = 0) enters as what it is, n failures, not as a Jeffreys pseudo-value. Half a success and half a
failure per item (Jeffreys, spread over its sizes) keep never-solved and never-failed items finite.
Weighted least squares on log(-log) of the estimates (weights from the delta method with
rel_var = max(1 - p, 0.5/(n+1)) / (c + 1/2)) gives the starting point.

Many items are degenerate: never solved at most sizes, never failed, or solved at one size only. Their
slopes are pooled: the item slopes are treated as draws from N(alpha_pool, tau^2) (a random-effects
meta-analysis; DerSimonian & Laird 1986 moment estimate of tau^2 from the items' own maximum-likelihood
slopes and their variances), and every item is refitted with that prior on its slope, i.e. its slope
is a precision-weighted compromise between its own and the pool's. An item measured uncensored
(0 < n_correct < n_drawn) at fewer than two sizes has no slope of its own and takes alpha_pool; only
its level c_i is fitted. If no item has a slope of its own, alpha_pool is the task-level slope.
Well-measured items keep their own slope, noisy ones are shrunk toward the pool in proportion to
their noise, and tau = 0 (no spread beyond noise) gives one common slope with item levels.

Intervals: a seeded bootstrap over runs (and, with per-item data, over items, the same draw at
every size) refits the law on each resample, plus one resampled residual (in log(-log PU)) of the
ladder's task values around the fit, so the interval is for the measured value.

``accelerated_emergence`` tests the paper's "accelerated emergence": whether log(-log PU) bends
away from the straight line (a quadratic term in ln N).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.fitting import FitError, FitResult, residuals
from capscale.laws.forms import PASS_UNTIL_POWER, SCALE_INPUTS, normalise_inputs
from capscale.laws.base import Forecast, ItemResampler, RunColumns, bound, dof_warning, run_keys
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.predictors import TaskPredictor
from capscale.schema import require_inputs, target_scale
from capscale.scoring.estimators import pass_until_estimate

P_MAX = 1.0 - 1e-9  # log(-log 1) is -inf; its delta-method weight (log p)^2 is ~1e-18 at this clip
REL_VAR_FLOOR = 1e-8
ITEM_COLUMNS = ("checkpoint", "task", "item", "n_drawn", "n_correct", "until")


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


# --- per-item data and laws ------------------------------------------------------------


@dataclass
class ItemMatrices:
    """Per-item counts behind the fitted points: rows = items, columns = the points' checkpoints."""

    items: np.ndarray  # item ids
    n: np.ndarray  # draws (0 where the item was not sampled at that checkpoint)
    c: np.ndarray  # successes
    p: np.ndarray  # pass_until_estimate (NaN where missing)
    g: np.ndarray  # log(-log p) of p clipped below 1 - 0.5/(n+1) (0 where missing): WLS start only
    w: np.ndarray  # its delta-method weights (0 where missing)
    uncensored: np.ndarray  # 0 < n_correct < n_drawn: a measurement, not a bound


def item_estimates(items: pd.DataFrame) -> pd.DataFrame:
    """``items`` with the per-item PassUntil estimate ``p`` and its relative variance ``rel_var``."""
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise CapscaleError(f"per-item PassUntil data needs columns {list(ITEM_COLUMNS)}; missing {missing}")
    out = items.copy()
    n = out["n_drawn"].to_numpy(float)
    c = out["n_correct"].to_numpy(float)
    until = out["until"].to_numpy(float)
    until = np.where(np.isfinite(until), until, np.inf)  # no stopping rule = fixed-n sampling
    sampled = n > 0
    p = np.full(len(out), np.nan)
    if sampled.any():
        try:
            p[sampled] = pass_until_estimate(n[sampled], c[sampled], until[sampled])
        except ValueError as e:
            raise CapscaleError(f"per-item PassUntil counts are inconsistent: {e}") from e
    with np.errstate(divide="ignore", invalid="ignore"):
        out["p"] = p
        out["rel_var"] = np.maximum(1.0 - p, 0.5 / (n + 1.0)) / (c + 0.5)
        out["p_clipped"] = np.minimum(p, 1.0 - 0.5 / (n + 1.0))
    out["uncensored"] = sampled & (c > 0) & (c < n)
    return out


def item_matrices(items: pd.DataFrame, task: str, checkpoints: list[str]) -> ItemMatrices:
    rows = items[(items["task"] == task) & items["checkpoint"].astype(str).isin(checkpoints)]
    if rows.empty:
        raise CapscaleError(f"task {task!r}: no per-item sample counts for the fitted checkpoints")
    if rows.duplicated(["checkpoint", "item"]).any():
        first = rows[rows.duplicated(["checkpoint", "item"], keep=False)].iloc[0]
        raise CapscaleError(f"task {task!r}: several per-item rows for checkpoint {first['checkpoint']!r}, "
                            f"item {first['item']!r}")
    est = item_estimates(rows)
    est = est[np.isfinite(est["p"].to_numpy(float))]
    codes, names = pd.factorize(est["item"], sort=True)
    cols = pd.Index(checkpoints).get_indexer(est["checkpoint"].astype(str))
    shape = (len(names), len(checkpoints))
    n, c, g, w = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    p, unc = np.full(shape, np.nan), np.zeros(shape, dtype=bool)
    pc = est["p_clipped"].to_numpy(float)
    n[codes, cols] = est["n_drawn"].to_numpy(float)
    c[codes, cols] = est["n_correct"].to_numpy(float)
    p[codes, cols] = est["p"].to_numpy(float)
    g[codes, cols] = loglog(pc)
    w[codes, cols] = delta_weights(pc, est["rel_var"].to_numpy(float))
    unc[codes, cols] = est["uncensored"].to_numpy(bool)
    return ItemMatrices(np.asarray(names), n, c, p, g, w, unc)


@dataclass
class ItemLaw:
    """Per-item laws PU_i(x) = exp(-exp(a_i - alpha_i z)), z = ln x - centre; the task forecast is their
    mean over items, each counted ``weights_i`` times (1, or its multiplicity in a bootstrap draw)."""

    x: str
    centre: float
    a: np.ndarray
    alpha: np.ndarray
    weights: np.ndarray
    alpha_pool: float = float("nan")
    tau: float = float("nan")  # spread (sd) of the item slopes around alpha_pool
    alpha_own: np.ndarray | None = field(default=None, repr=False)  # own (unpooled) slope, NaN without one

    def item_values(self, values) -> np.ndarray:
        z = np.log(np.asarray(values, dtype=float)) - self.centre
        with np.errstate(over="ignore"):
            return np.exp(-np.exp(self.a[:, None] - self.alpha[:, None] * z[None, :]))

    def predict(self, **raw) -> np.ndarray:
        per_item = self.item_values(np.atleast_1d(raw[self.x]))
        return self.weights @ per_item / self.weights.sum()

    @property
    def log_c(self) -> np.ndarray:
        return self.a + self.alpha * self.centre

    def to_dict(self) -> dict:
        return {"x": self.x, "centre": self.centre, "a": self.a.tolist(), "alpha": self.alpha.tolist(),
                "weights": self.weights.tolist(), "alpha_pool": self.alpha_pool, "tau": self.tau}

    @classmethod
    def from_dict(cls, d: dict) -> "ItemLaw":
        return cls(d["x"], float(d["centre"]), np.asarray(d["a"], float), np.asarray(d["alpha"], float),
                   np.asarray(d["weights"], float), float(d["alpha_pool"]), float(d["tau"]))


ETA_RANGE = (-30.0, 6.5)  # log(-log p): p from 1 - 1e-13 down to ~1e-290


def _cloglog_loglik(a, b, z, s, r, prec, mu):
    """Per-item log-likelihood of s successes and r failures at p = exp(-exp(a + b z)) (the same
    likelihood under PassUntil's stopping rule as under fixed n), minus the slope prior's penalty."""
    eta = np.clip(a[:, None] + b[:, None] * z[None, :], *ETA_RANGE)
    u = np.exp(eta)
    ll = -s * u + r * np.log(-np.expm1(-u))
    return ll.sum(1) - 0.5 * prec * (b - mu) ** 2


def fit_item_glm(z, s, r, a, b, *, free_slope, prec=0.0, mu=0.0, max_iter: int = 50, tol: float = 1e-7):
    """Maximum likelihood of every item's (a, b), log(-log p) = a + b z: a binomial GLM with the
    complementary log-log link on the failures, by vectorised Fisher scoring with step halving (the
    log-likelihood is concave in (a, b)). Items without ``free_slope`` keep b (only a is fitted); a
    slope prior N(mu, 1/prec) shrinks the free ones. Returns (a, b, var_b), var_b from the information."""
    a, b = np.array(a, float), np.array(b, float)
    prec = np.broadcast_to(np.asarray(prec, float), a.shape)
    free = np.asarray(free_slope, bool)
    ll = _cloglog_loglik(a, b, z, s, r, prec, mu)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            eta = np.clip(a[:, None] + b[:, None] * z[None, :], *ETA_RANGE)
            u = np.exp(eta)
            em1 = np.expm1(u)
            score = u * (r / em1 - s)
            info = (s + r) * u**2 / em1
            ga, gb = score.sum(1), score @ z - prec * (b - mu)
            haa, hab, hbb = info.sum(1), info @ z, info @ z**2 + prec
            det = haa * hbb - hab**2
            ok = free & (det > 1e-12 * np.maximum(haa * hbb, 1e-300))
            da = np.where(ok, (hbb * ga - hab * gb) / np.where(ok, det, 1.0), ga / np.maximum(haa, 1e-300))
            db = np.where(ok, (haa * gb - hab * ga) / np.where(ok, det, 1.0), 0.0)
            step = np.ones_like(a)
            for _ in range(30):
                cand = _cloglog_loglik(a + step * da, b + step * db, z, s, r, prec, mu)
                worse = ~(cand >= ll - 1e-12 * np.abs(ll))
                if not worse.any():
                    break
                step = np.where(worse, step / 2, step)
            step = np.where(worse, 0.0, step)
            a, b = a + step * da, b + step * db
            ll = np.where(worse, ll, cand)
            if np.max(np.abs(step * da)) < tol and np.max(np.abs(step * db)) < tol:
                break
        var_b = np.where(ok, haa / np.where(ok, det, 1.0), np.inf)
    return a, b, var_b


def fit_item_laws(z: np.ndarray, m: ItemMatrices, x: str, centre: float, *, column_counts=None, item_counts=None,
                  fallback_alpha: float = float("nan")) -> ItemLaw:
    """Every item's law, its slope pooled toward the items' random-effects mean (module docstring).
    ``column_counts`` / ``item_counts``: multiplicities of a bootstrap draw (sizes / items)."""
    n_items, n_cols = m.n.shape
    cc = np.ones(n_cols) if column_counts is None else np.asarray(column_counts, float)
    f = np.ones(n_items) if item_counts is None else np.asarray(item_counts, float)
    present = (m.n > 0) & (cc[None, :] > 0)
    has_data = present.any(1)
    if not np.any(f * has_data > 0):
        raise FitError("per-item PassUntil law: no item has data in this resample")
    f = np.where(has_data, f, 0.0)
    # counts, each size counted as often as it was drawn, plus half a success and half a failure per
    # item spread over its sizes (Jeffreys): an item never solved (or never failed) stays finite
    pseudo = np.where(present, 0.5 / np.maximum(present.sum(1, keepdims=True), 1), 0.0)
    s = np.where(present, m.c * cc[None, :] + pseudo, 0.0)
    r = np.where(present, (m.n - m.c) * cc[None, :] + pseudo, 0.0)
    measured = m.uncensored & present
    span = np.where(measured, z, -np.inf).max(1) - np.where(measured, z, np.inf).min(1)
    own = has_data & (span > 1e-12)

    # start: weighted least squares on log(-log p), item by item (pooled slope where it has none)
    W = np.where(present, m.w * cc[None, :], 0.0)
    s0 = np.maximum(W.sum(1), 1e-300)
    zbar, gbar = W @ z / s0, (W * m.g).sum(1) / s0
    dz = z[None, :] - zbar[:, None]
    sxx, sxg = (W * dz**2).sum(1), (W * dz * (m.g - gbar[:, None])).sum(1)
    b0 = np.where(own, sxg / np.where(own & (sxx > 0), sxx, 1.0), 0.0)
    fo = np.where(own, f, 0.0)
    if fo.sum() > 0:
        b0 = np.where(own, b0, np.sum(fo * b0) / fo.sum())
        a1, b1, var1 = fit_item_glm(z, s, r, gbar - b0 * zbar, b0, free_slope=own)
        v = np.where(own, var1, np.inf)
        wf = np.where(own, fo / v, 0.0)
        mu_fe = np.sum(wf * np.where(own, b1, 0.0)) / wf.sum()
        q = np.sum(wf * np.where(own, b1 - mu_fe, 0.0) ** 2)
        k = fo.sum()
        cdl = wf.sum() - np.sum(np.where(own, fo / v**2, 0.0)) / wf.sum()
        tau2 = max(0.0, (q - (k - 1)) / cdl) if cdl > 0 else 0.0
        prec_re = np.where(own, fo / (v + tau2), 0.0)
        mu = float(np.sum(prec_re * np.where(own, b1, 0.0)) / prec_re.sum())
        slope_own = np.where(own, b1, np.nan)
    else:
        if not np.isfinite(fallback_alpha):
            raise FitError("per-item PassUntil law: no item has a slope of its own and there is no task-level slope")
        mu, tau2, slope_own = -float(fallback_alpha), 0.0, np.full(n_items, np.nan)
        a1, b1 = gbar - mu * zbar, np.full(n_items, mu)
    shrink = own & (tau2 > 0)
    b_start = np.where(shrink, b1, mu)
    a, b, _ = fit_item_glm(z, s, r, a1 + (b1 - b_start) * zbar, b_start, free_slope=shrink,
                           prec=1.0 / tau2 if tau2 > 0 else 0.0, mu=mu)
    return ItemLaw(x, centre, a, -b, f, alpha_pool=-mu, tau=float(np.sqrt(tau2)), alpha_own=-slope_own)


class ItemDraw:
    """Bootstrap redraw of the benchmark's items: multiplicities, the same at every size."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def draw(self, rng: np.random.Generator) -> dict:
        return {"item_counts": rng.multinomial(self.n_items, np.full(self.n_items, 1.0 / self.n_items)).astype(float)}


# --- predictor ---------------------------------------------------------------------------


def interval_rel_var(ladder: pd.DataFrame, points: pd.DataFrame, task: str, metric: str) -> np.ndarray | None:
    """Relative variances of the task values, from ``{metric}_lower/_upper`` rows (any level: only
    ratios between points matter to a weighted fit) or a ``stderr`` column; None when incomplete."""
    keys = ["family", "model", "step"]
    bounds = {}
    for side in ("lower", "upper"):
        name = f"{metric}_{side}"
        if not (ladder["metric"] == name).any():
            bounds = None
            break
        rows = ladder[(ladder["task"] == task) & (ladder["metric"] == name)]
        joined = points[keys].merge(rows[keys + ["value"]].drop_duplicates(keys), on=keys, how="left")
        bounds[side] = joined["value"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if bounds is not None and np.all(np.isfinite(bounds["upper"])) and np.all(np.isfinite(bounds["lower"])):
            rel = np.log(bounds["upper"] / bounds["lower"]) ** 2
            rel = np.where(np.isnan(rel), np.inf, rel)
            if np.any(np.isfinite(rel) & (rel > 0)):
                return rel
        if "stderr" in points and points["stderr"].notna().all():
            rel = (points["stderr"].to_numpy(float) / points["value"].to_numpy(float)) ** 2
            if np.all(np.isfinite(rel)) and np.any(rel > 0):
                return rel
    return None


def pu_link(p):
    return loglog(np.clip(p, 1e-300, P_MAX))


def pu_unlink(v):
    with np.errstate(over="ignore"):
        return np.exp(-np.exp(v))


class PassUntilPredictor(TaskPredictor):
    """PU(x) = exp(-c x^-alpha) on each run's final checkpoint (``per_item=False``), or its per-item form
    mean_i exp(-c_i x^-alpha_i) from per-item sample counts (``per_item=True``); x = params, tokens or flops.

    Fitted attributes: ``fit_`` (the task-level law, a FitResult of ``pass_until_power``), ``alpha_``,
    ``log_c_`` (task law in raw units), ``boot_fits_``, ``noise_`` (residuals in log(-log PU)), ``extent_``,
    ``items_resampled_``; per item also ``item_fit_`` (ItemLaw), ``boot_item_fits_``, ``items_table_``
    (item, log_c, alpha, alpha_own, own_slope), ``alpha_pool_``, ``alpha_spread_``, ``n_items_pooled_``.
    """

    method_name = "pass-until"
    link = (pu_link, pu_unlink)  # intervals are centred in log(-log PU), where the law is a line

    def __init__(self, per_item: bool = False, x: str = "params", level: float = 0.9, n_boot: int = 1000,
                 seed: int = 0, calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.per_item = per_item
        self.x = x

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "pass_until", loss: str | None = None,
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "PassUntilPredictor":
        """``loss``/``loss_task`` are accepted for the common signature and ignored. ``items``: per-item
        sample counts (columns checkpoint, task, item, n_drawn, n_correct, until); required with
        ``per_item=True``, otherwise they add item resampling to the bootstrap."""
        if self.x not in SCALE_INPUTS:
            raise CapscaleError(f"x must be one of {', '.join(SCALE_INPUTS)}, got {self.x!r}")
        self.task_, self.metric_, self.loss_metric_, self.chance_ = task, metric, None, None
        points = final_checkpoints(metric_series(ladder, task, metric))
        families = sorted(points["family"].unique())
        if len(families) > 1:
            raise CapscaleError(f"task {task!r}: the ladder has families {families}; fit one family at a time "
                                "(curves never mix families)")
        x_values = points[self.x].to_numpy(float)
        if not np.all(np.isfinite(x_values) & (x_values > 0)):
            raise CapscaleError(f"task {task!r}: every run needs a positive {self.x} for the PassUntil law")
        self.data_ = points
        self.extent_ = {self.x: float(x_values.max())}
        rel_var = interval_rel_var(ladder, points, task, metric)
        self.weighted_ = rel_var is not None
        base = {self.x: x_values, "value": points["value"].to_numpy(float)}
        if rel_var is not None:
            base["rel_var"] = rel_var
        runs = run_keys(points)
        columns = RunColumns(points, runs)
        checkpoints = points["checkpoint"] if "checkpoint" in points else pd.Series([np.nan])

        self.n_runs_ = len(points)
        self.form_used_ = PASS_UNTIL_POWER[self.x].name + (" per item" if self.per_item else "")
        if self.per_item:
            self._fit_items(items, task, points, checkpoints, base, runs, columns)
            self._calibrate(ladder, task, metric, loss, loss_task, items)
            return self

        resampler = None
        if items is not None and all(c in items.columns for c in ITEM_COLUMNS):
            per_item = item_estimates(items[items["task"] == task]).rename(columns={"p": "_pass_until"})
            resampler = ItemResampler.from_items(per_item, checkpoints.astype(object), {"value": (task, "_pass_until")})
        self.items_resampled_ = resampler is not None

        def fit_once(run_indices=None, redrawn=None):
            data = columns.take({**base, **(redrawn or {})}, run_indices)
            reference = None if run_indices is None else self.fit_.reference
            return fit_law(data[self.x], data["value"], x=self.x, rel_var=data.get("rel_var"), reference=reference)

        self.fit_ = fit_once()
        self._summarise_task_law()
        self.noise_ = self._noise(self.fit_.predict(**{self.x: base[self.x]}), base["value"])
        self.boot_fits_, self.n_boot_failed_ = self._bootstrap(fit_once, len(runs), 2, resampler)
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def _summarise_task_law(self):
        law = law_parameters(self.fit_)
        self.alpha_, self.log_c_ = law["alpha"], law["log_c"]
        self.fit_warnings_ = dof_warning(self.fit_, "the PassUntil law")
        if self.fit_.n_points == 2:
            self.fit_warnings_[-1] += " (it needs >= 3 runs)"

    def _fit_items(self, items, task, points, checkpoints, base, runs, columns):
        if items is None or not all(c in items.columns for c in ITEM_COLUMNS):
            raise CapscaleError(f"per-item PassUntil needs per-item sample counts (items= with columns "
                                f"{', '.join(ITEM_COLUMNS)})")
        if checkpoints.isna().any():
            raise CapscaleError("per-item PassUntil needs a checkpoint column in the ladder to join the items")
        names = checkpoints.astype(str).tolist()
        matrices = item_matrices(items, task, names)
        self.items_resampled_ = True
        full = fit_law(base[self.x], base["value"], x=self.x, rel_var=base.get("rel_var"))
        z = np.log(base[self.x]) - full.reference[self.x][0]
        centre = full.reference[self.x][0]
        n_cols = len(names)

        def item_means(counts):
            p = np.nan_to_num(matrices.p, nan=0.0)
            present = np.isfinite(matrices.p) * counts[:, None]
            return (counts @ p) / np.maximum(present.sum(0), 1e-300)

        def fit_once(run_indices=None, redrawn=None):
            counts = None if redrawn is None else redrawn["item_counts"]
            values = base if counts is None else {**base, "value": item_means(counts)}
            data = columns.take(values, run_indices)
            task_fit = fit_law(data[self.x], data["value"], x=self.x, rel_var=data.get("rel_var"),
                               reference=full.reference)
            cc = None
            if run_indices is not None:
                rows = np.concatenate([columns.by_run[i] for i in run_indices])
                cc = np.bincount(rows, minlength=n_cols).astype(float)
            law = fit_item_laws(z, matrices, self.x, centre, column_counts=cc, item_counts=counts,
                                fallback_alpha=task_fit.params["alpha"])
            return task_fit, law

        self.fit_, self.item_fit_ = fit_once()
        self._summarise_task_law()
        law = self.item_fit_
        own = np.isfinite(law.alpha_own)
        self.items_table_ = pd.DataFrame({"item": matrices.items, "log_c": law.log_c, "alpha": law.alpha,
                                          "alpha_own": law.alpha_own, "own_slope": own})
        self.alpha_pool_, self.alpha_spread_ = law.alpha_pool, law.tau
        self.n_items_pooled_ = int((~own).sum())
        if self.n_items_pooled_ > len(own) / 2:
            self.fit_warnings_.append(f"{self.n_items_pooled_} of {len(own)} items have no slope of their own "
                                      "(measured at < 2 sizes): they take the pooled slope")
        self.noise_ = self._noise(law.predict(**{self.x: base[self.x]}), base["value"])
        pairs, self.n_boot_failed_ = self._bootstrap(fit_once, len(runs), 2, ItemDraw(len(matrices.items)))
        self.boot_fits_ = [t for t, _ in pairs]
        self.boot_item_fits_ = [i for _, i in pairs]
        return self

    @staticmethod
    def _noise(fitted, measured) -> np.ndarray:
        """Residuals of the ladder's task values, fitted - measured, in log(-log PU): the space of the law,
        where a residual moved from a tiny-PU rung to a larger-PU target scales as it should (a
        relative error of a task mean shrinks as more items get solved)."""
        clip = (1e-300, P_MAX)
        return loglog(np.clip(fitted, *clip)) - loglog(np.clip(measured, *clip))

    def curve(self, values) -> tuple[np.ndarray, np.ndarray]:
        """The fitted task curve at x = ``values`` and each bootstrap refit's curve [n_boot, len(values)]."""
        values = np.atleast_1d(np.asarray(values, dtype=float))
        if self.per_item:
            centre = self.item_fit_.predict(**{self.x: values})
            boot = [b.predict(**{self.x: values}) for b in getattr(self, "boot_item_fits_", [])]
        else:
            centre = self.fit_.predict(**{self.x: values})
            boot = [b.predict(**{self.x: values}) for b in self.boot_fits_]
        return centre, np.array(boot).reshape(len(boot), len(values))

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        target = target_scale(params, tokens, flops)
        require_inputs(target, (self.x,), f"the PassUntil law in {self.x}")
        value, boot = self.curve([float(target[self.x])])
        # a measured value = curve moved by one ladder residual in log(-log PU) (noise_ = fitted - measured)
        shift = self._residual_draws(np.asarray(self.noise_, float), len(boot))
        with np.errstate(over="ignore", divide="ignore"):
            draws = np.exp(-np.exp(loglog(np.clip(boot[:, 0], 1e-300, P_MAX)) - shift))
        return float(value[0]), bound(self.metric_, draws)

# --- accelerated emergence ------------------------------------------------------------------


def accelerated_emergence(x, pu, se=None, *, significance: float = 0.05, known_se: bool = False,
                          weighting: str = "relative") -> dict:
    """Does log(-log PU) bend away from the straight line in ln N? (Hu et al. 2023, "accelerated emergence")

    Fits g = log(-log PU) against t = ln x - mean(ln x) with a line, g = b0 + b1 t (alpha = -b1, the
    law's exponent), and with a quadratic, g = q0 + q1 t + q2 t^2, and tests q2 = 0.

    Sign convention: ``curvature`` = q2. The local exponent is alpha(N) = -dg/d ln N = -q1 - 2 q2 t.
    q2 < 0 (log(-log PU) concave in ln N) means alpha grows with N: at the large end PU lies *above*
    the straight-line law fitted to the smaller models, i.e. improvement faster than the law:
    verdict "accelerated" (the paper's finding for some tasks). q2 > 0 is "decelerated" (slower than
    the law). Otherwise "linear"; fewer than 4 usable points (or 3 distinct sizes) is "insufficient".

    ``se``: per-point standard errors of PU; then the fits are weighted least squares with
    delta-method weights (PU log PU / se)^2. Without se, ``weighting="relative"`` (default) assumes
    PassUntil's constant relative error, weights (log PU)^2 (the predictor's default too), and
    ``"equal"`` gives ordinary least squares on log(-log PU), as in the paper's plots; under relative
    noise the latter over-trusts points near PU = 1 and has a higher false-positive rate. The test is
    an F-test with the residual scale estimated (robust to a common mis-scaling of se), or with
    ``known_se=True`` a likelihood-ratio (chi-square, 1 dof) test that trusts se as absolute.
    Two-sided p-value; the verdict takes its direction from the sign. Points with PU = 1 have no
    log(-log) and are left out (``n_excluded``).
    """
    if weighting not in ("relative", "equal"):
        raise ValueError(f"weighting must be 'relative' or 'equal', got {weighting!r}")
    if known_se and se is None:
        raise ValueError("known_se=True needs se")
    x = np.asarray(x, dtype=float).ravel()
    pu = np.asarray(pu, dtype=float).ravel()
    if x.shape != pu.shape:
        raise ValueError("x and pu must have the same length")
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError("x must be finite and positive")
    if not np.all(np.isfinite(pu) & (pu > 0) & (pu <= 1)):
        raise ValueError("pu must lie in (0, 1]")
    if se is not None:
        se = np.asarray(se, dtype=float).ravel()
        if se.shape != pu.shape or not np.all(np.isfinite(se) & (se > 0)):
            raise ValueError("se must be positive and finite, one per point")
    keep = pu < 1.0
    x, pu = x[keep], pu[keep]
    t_raw = np.log(x)
    n = int(keep.sum())
    out = {"n": n, "n_excluded": int((~keep).sum()), "weighting": "se" if se is not None else weighting,
           "test": "chi2" if known_se else "F", "significance": significance,
           "alpha": np.nan, "alpha_se": np.nan, "log_c": np.nan, "curvature": np.nan, "curvature_se": np.nan,
           "statistic": np.nan, "p_value": np.nan, "alpha_at_min": np.nan, "alpha_at_max": np.nan,
           "verdict": "insufficient"}
    if n == 0:
        return out
    centre = float(np.mean(t_raw))
    t = t_raw - centre
    g = loglog(pu)
    if se is not None:
        w = (pu * np.log(pu) / se[keep]) ** 2
    else:
        w = np.log(pu) ** 2 if weighting == "relative" else np.ones(n)
    distinct = len(np.unique(t))

    def wls(design):
        sw = np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(design * sw, g * sw[:, 0], rcond=None)
        rss = float(w @ (g - design @ coef) ** 2)
        cov = np.linalg.pinv(design.T @ (design * w[:, None]))
        return coef, rss, cov

    if distinct >= 2:
        lin, rss1, cov1 = wls(np.column_stack([np.ones(n), t]))
        scale1 = 1.0 if known_se else (rss1 / (n - 2) if n > 2 else np.nan)
        out.update(alpha=float(-lin[1]), alpha_se=float(np.sqrt(scale1 * cov1[1, 1])),
                   log_c=float(lin[0] - lin[1] * centre))
    if n < 4 or distinct < 3:
        return out
    quad, rss2, cov2 = wls(np.column_stack([np.ones(n), t, t**2]))
    scale2 = 1.0 if known_se else rss2 / (n - 3)
    gbar = w @ g / w.sum()
    tss = float(w @ (g - gbar) ** 2)
    tiny = 1e-20 * (tss + 1e-300)
    if rss1 - rss2 <= tiny:
        statistic, p = 0.0, 1.0  # the line already fits exactly as well
    elif rss2 <= tiny and not known_se:
        statistic, p = np.inf, 0.0  # noise-free quadratic
    elif known_se:
        statistic = rss1 - rss2
        p = float(stats.chi2.sf(statistic, 1))
    else:
        statistic = (rss1 - rss2) / (rss2 / (n - 3))
        p = float(stats.f.sf(statistic, 1, n - 3))
    q2 = float(quad[2])
    if p < significance:
        verdict = "accelerated" if q2 < 0 else "decelerated"
    else:
        verdict = "linear"
    out.update(curvature=q2, curvature_se=float(np.sqrt(scale2 * cov2[2, 2])), statistic=float(statistic),
               p_value=p, alpha_at_min=float(-quad[1] - 2 * q2 * t.min()),
               alpha_at_max=float(-quad[1] - 2 * q2 * t.max()), verdict=verdict)
    return out

