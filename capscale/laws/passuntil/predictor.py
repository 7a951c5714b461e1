"""PassUntilPredictor: the PassUntil law (task-level, or per item) as a TaskPredictor."""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.base import ItemResampler, RunColumns, bound, dof_warning, run_keys
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.forms import PASS_UNTIL_POWER, SCALE_INPUTS
from capscale.laws.passuntil.items import ITEM_COLUMNS, ItemDraw, fit_item_laws, item_estimates, item_matrices
from capscale.laws.passuntil.law import P_MAX, fit_law, law_parameters, loglog
from capscale.laws.predictors import TaskPredictor
from capscale.schema import require_inputs, target_scale


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
