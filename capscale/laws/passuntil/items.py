"""Per-item PassUntil data and laws: count matrices per item and checkpoint, the per-item cloglog GLM with a
pooled slope prior, and the item bootstrap draw."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.estimators import pass_until_estimate
from capscale.laws.fitting import FitError
from capscale.laws.passuntil.law import delta_weights, loglog

ITEM_COLUMNS = ("checkpoint", "task", "item", "n_drawn", "n_correct", "until")


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
