"""Direct forecasts (scale -> metric in one fit) and the carry-forward fallback.

- DirectPredictor: a sigmoid in log compute; a 2-parameter sigmoid or a straight line when the ladder is
  short; chosen by the ladder's own backtests with ``form="auto"``.
- CarryForwardPredictor: the family's largest run, with an interval from the family's observed steps:
  the honest fallback for two runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.base import ItemResampler, RunColumns, chance_level, dof_warning, ladder_extent, run_keys
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.fitting import FitResult, fit_form, refit_many
from capscale.laws.forms import LINEAR_SCALE, SIGMOID_SCALE, get_form
from capscale.progress import report_refits
from capscale.laws.rolling import choose, internal_backtest
from capscale.laws.predictors import TaskPredictor, resolve_x
from capscale.schema import from_goodness, metric_kind, require_inputs, target_scale, to_goodness


DIRECT_FORMS = ("auto", "sigmoid", "sigmoid_2p", "linear", "sigmoid_compute")


class DirectPredictor(TaskPredictor):
    """scale -> metric on each run's final checkpoint.

    ``form``: "sigmoid" (a sigmoid in log x: floor b = chance when known, height a, slope, centre),
    "sigmoid_2p" (floor = chance, ceiling = 1: only slope and centre are fitted — fitted to a few
    points near the floor its exponential tail overshoots when extrapolated, so it is one candidate
    among others, never forced), "linear" (a straight line in log x with a t-based prediction
    interval), or "auto": the candidates the number of runs allows, chosen by the ladder's own
    rolling-origin backtests. ``x``: the scale input (auto: compute where known, else params)."""

    method_name = "direct"

    def __init__(self, form: str = "auto", x: str = "auto", level=0.9, n_boot=1000, seed=0, calibrate=True,
                 n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.form = form
        self.x = x

    def _spec(self, name: str, chance: float | None) -> tuple[str, dict]:
        """(form name, fixed parameters) of a named direct form in this fit's scale input."""
        if name in ("sigmoid", "sigmoid_compute"):
            return SIGMOID_SCALE[self.x_].name, ({"b": chance} if chance is not None else {})
        if name == "sigmoid_2p":
            return SIGMOID_SCALE[self.x_].name, {"a": 1.0, "b": chance if chance is not None else 0.0}
        if name == "linear":
            return LINEAR_SCALE[self.x_].name, {}
        raise CapscaleError(f"direct form must be one of {', '.join(DIRECT_FORMS)}, got {name!r}")

    @staticmethod
    def candidates(n_runs: int, chance: float | None) -> list[str]:
        """Forms the ladder can determine with one point to spare, most flexible first."""
        free = {"sigmoid": 4 if chance is None else 3, "sigmoid_2p": 2, "linear": 2}
        out = [name for name in ("sigmoid", "sigmoid_2p", "linear")
               if not (name == "sigmoid_2p" and chance is None)  # a floor is what makes two parameters enough
               and n_runs >= free[name] + 1]
        return out or ["linear"]

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss: str | None = None,
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "DirectPredictor":
        """``loss`` and ``loss_task`` are accepted for a common signature and ignored: no intermediate
        loss. ``items`` (capscale.metrics.item_metrics of the ladder's store) adds item resampling."""
        if self.form not in DIRECT_FORMS:
            raise CapscaleError(f"direct form must be one of {', '.join(DIRECT_FORMS)}, got {self.form!r}")
        self.task_, self.metric_, self.loss_metric_ = task, metric, None
        points = final_checkpoints(metric_series(ladder, task, metric))
        self.x_ = resolve_x(self.x, points)
        self.data_ = points
        self.n_runs_ = len(points)
        self.extent_ = ladder_extent(points)
        self.chance_ = chance_level(points) if metric_kind(metric).has_chance else None
        chance_g = None if self.chance_ is None else float(to_goodness(metric, self.chance_))
        name = self.form
        if name == "auto":
            options = self.candidates(len(points), chance_g)
            if len(options) > 1:
                scored = {o: internal_backtest(self.clone(form=o, n_boot=0, x=self.x_), ladder, task, metric,
                                               n_origins=self.n_origins) for o in options}
                best, self.form_errors_ = choose(scored)
                name = best or options[0]
            else:
                name = options[0]
        self.form_name_ = name
        form_name, fixed = self._spec(name, chance_g)
        form = get_form(form_name)
        self.form_used_ = f"{form_name}" + (" (a=1, b=chance)" if name == "sigmoid_2p" else "")
        runs = run_keys(points)
        columns = RunColumns(points, runs)
        base = {self.x_: points[self.x_].to_numpy(float), "value": to_goodness(metric, points["value"].to_numpy(float))}
        resampler = ItemResampler.from_items(items, points.get("checkpoint", pd.Series([np.nan])),
                                             {"value": (task, metric)})
        self.items_resampled_ = resampler is not None

        self.fit_ = fit_form(form, {self.x_: base[self.x_]}, base["value"], fixed=fixed)
        self.noise_ = base["value"] - self.fit_.predict(**{self.x_: base[self.x_]})
        self.fit_warnings_ = dof_warning(self.fit_, "the fit")
        if name == "linear":  # t-based prediction interval: no bootstrap needed
            self.boot_fits_, self.n_boot_failed_ = [], 0
        else:
            least = len(form.param_names) - len(fixed)
            counts, redrawn = self._resamples(len(runs), resampler, least)
            keep = (counts > 0).sum(1) >= least
            if not keep.any():
                counts, keep, resampler = counts[:0], keep[:0], None
            y = base["value"] if resampler is None else np.stack(
                [to_goodness(metric, r["value"]) for r, k in zip(redrawn, keep) if k])
            refits = refit_many(self.fit_, {self.x_: base[self.x_]}, y, counts[keep][:, columns.row_runs()])
            self.boot_fits_ = [f for f in refits if f is not None]
            self.n_boot_failed_ = self.n_boot - len(self.boot_fits_)
            report_refits(self.n_boot)
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def curve(self, values, fit: FitResult | None = None) -> np.ndarray:
        """The fitted metric at scale ``values`` (in the fit's input ``x_``)."""
        return from_goodness(self.metric_, self._good_curve(values, fit))

    def _good_curve(self, values, fit: FitResult | None = None) -> np.ndarray:
        fit = fit or self.fit_
        return fit.predict(**{self.x_: np.asarray(values, dtype=float)})

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        target = target_scale(params, tokens, flops)
        require_inputs(target, (self.x_,), f"the direct fit in {self.x_}")
        x = np.array([target[self.x_]])
        centre = float(self._good_curve(x)[0])
        if self.form_name_ == "linear":
            draws = self._linear_draws(float(x[0]), centre)
        else:
            boot = np.array([self._good_curve(x, f)[0] for f in self.boot_fits_])
            draws = boot + self._residual_draws(np.asarray(self.noise_, float), len(boot))
        return float(from_goodness(self.metric_, centre)), from_goodness(self.metric_, draws)

    def _linear_draws(self, x: float, centre: float) -> np.ndarray:
        """The t prediction distribution of ordinary least squares (n >= 3), or for two runs the span
        between carrying the last run forward and following the line."""
        z = np.log(self.data_[self.x_].to_numpy(float))
        y = to_goodness(self.metric_, self.data_["value"].to_numpy(float))
        n = len(z)
        rng = np.random.default_rng(self.seed)
        if n < 3:
            last = y[np.argmax(z)]
            return rng.uniform(min(last, centre), max(last, centre), max(self.n_boot, 1))
        zt = np.log(x)
        s = np.sqrt(np.sum(self.noise_ ** 2) / (n - 2))
        spread = s * np.sqrt(1.0 + 1.0 / n + (zt - z.mean()) ** 2 / np.sum((z - z.mean()) ** 2))
        return centre + spread * rng.standard_t(n - 2, max(self.n_boot, 1))


class CarryForwardPredictor(TaskPredictor):
    """The family's largest run carried forward, with an interval from the family's observed steps.

    Between consecutive runs (by the scale input x) the metric moved by s_i per e-fold of x; a
    target d e-folds beyond the largest run could move by any s_i * d, or not at all. The draws
    are those moves (and zero) with the measurement noise of the last run (its stderr, twice: it
    and the target are both measured) — the honest forecast when two or three runs are all there is."""

    method_name = "carry-forward"

    def __init__(self, x: str = "auto", level=0.9, n_boot=1000, seed=0, calibrate=True, n_origins=3,
                 growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.x = x

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss=None, loss_task=None,
            items=None) -> "CarryForwardPredictor":
        self.task_, self.metric_, self.loss_metric_ = task, metric, None
        points = final_checkpoints(metric_series(ladder, task, metric))
        self.x_ = resolve_x(self.x, points)
        points = points.sort_values(self.x_, kind="stable").reset_index(drop=True)
        if len(points) < 2:
            raise CapscaleError(f"task {task!r}: carry-forward needs 2 runs (an observed step), got {len(points)}")
        self.data_, self.n_runs_ = points, len(points)
        self.extent_ = ladder_extent(points)
        self.chance_ = chance_level(points) if metric_kind(metric).has_chance else None
        z, y = np.log(points[self.x_].to_numpy(float)), points["value"].to_numpy(float)
        gaps = np.diff(z)
        self.slopes_ = np.diff(y)[gaps > 0] / gaps[gaps > 0]
        self.last_ = float(y[-1])
        stderr = points["stderr"].iloc[-1] if "stderr" in points else np.nan
        self.noise_sd_ = float(np.sqrt(2.0) * stderr) if np.isfinite(stderr) else 0.0
        self.form_used_ = "carry-forward"
        self.fit_warnings_ = []
        self.n_boot_failed_ = 0
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        target = target_scale(params, tokens, flops)
        require_inputs(target, (self.x_,), f"carry-forward in {self.x_}")
        d = max(float(np.log(target[self.x_]) - np.log(self.data_[self.x_].iloc[-1])), 0.0)
        rng = np.random.default_rng(self.seed)
        n = max(self.n_boot, 1)
        moves = np.append(self.slopes_ * d, 0.0)
        draws = self.last_ + rng.choice(moves, n) + rng.normal(0.0, self.noise_sd_, n)
        return self.last_, draws
