"""Two-step forecasts: (N, D) or C -> task loss -> metric, after Bhagia et al. 2024 (OLMo ladder).

Step 1 on each run's final checkpoint (form chosen by rolling-origin backtests inside the ladder,
``capscale.laws.step1``), step 2 on all checkpoints after skipping the first 10% of each run and smoothing
with a 5-point moving average, with the ceiling of accuracy anchored where the loss is the task's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import LadderError, metric_series
from capscale.laws.base import (RUN_KEYS, Forecast, ItemResampler, RunColumns, chance_level, dof_warning, ladder_extent,
                                run_keys)
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.fitting import FitError, FitResult, fit_form, refit_many
from capscale.laws.forms import get_form, normalise_inputs
from capscale.laws.pooling import RAW_SLOPE, SHAPE_PARAMETERS, shape_estimates, shrink
from capscale.progress import report_refits
from capscale.laws.rolling import OriginPoint, choose, origin_splits
from capscale.laws.predictors import TaskPredictor
from capscale.laws.averaged import AVERAGE
from capscale.laws.step1 import (STEP1_CHOICES, STEP1_FORMS, averaging_applies, fit_step1, memoised, n_free, old_step1_rule,
                                 predict_loss, step1_eligible, step1_key, step1_label, step1_options)
from capscale.schema import OWN_LOSSES, from_goodness, metric_kind, target_scale, to_goodness

STEP2_CHOICES = ("sigmoid_loss", "exponential_loss")
CEILINGS = ("auto", "fit", "anchor", "fixed")


@dataclass
class Step2Problem:
    """What step 2 of one task is fitted on, and with which form and constraints."""
    joined: pd.DataFrame  # every checkpoint with both the metric (value) and the loss
    final_rows: np.ndarray  # rows of ``joined`` at each run's last step (step 1's points)
    finals: pd.DataFrame
    step2_data: pd.DataFrame  # kept checkpoints, smoothed
    smoother: np.ndarray  # step2_data = smoother @ joined (linear, so item redraws smooth the same way)
    chance: float | None
    ceiling: float  # on the metric's good side
    mode: str  # fit | anchor | fixed
    reference: tuple  # the loss normalisation of step 2 (mean, sd of its points)
    form: object
    fixed: dict
    anchor: tuple | None  # (loss, value in the fit's space)
    space: str  # goodness | error


class TwoStepPredictor(TaskPredictor):
    """(N, D) or C -> task loss -> metric (Bhagia et al. 2024), uncertainty through both steps.

    ``step1``: a form of STEP1_FORMS, "auto" (every form the runs can determine, chosen by
    rolling-origin backtests of the loss inside the ladder), "average" (those forms' forecasts averaged
    with equal weights; on ladders of up to 3 sizes as "auto") or "rule" (capscale 0.1's fixed rule).
    ``step2``: sigmoid_loss or exponential_loss, fitted on the metric's good side (accuracy, or
    1 - error), so the chance floor and the ceiling mean the same for acc and err.
    ``ceiling``: where accuracy ends as the loss goes to 0 —
      "anchor": the OLMo ladder's extra point (L = 0, acc = ceiling) with weight ``anchor_weight``
      (in data points; a squared residual, so a robust loss sized for the data cannot clip it away);
      "fixed": sigmoid height pinned so its upper asymptote is the ceiling / exponential pinned
      to pass through it at L = 0; "fit": the ladder's checkpoints decide; "auto": anchor where the
      loss is the task's own correct-answer loss (bpb_correct / nll_correct of the same task), fit
      otherwise (a validation loss of 0 says nothing about accuracy).
    The ceiling is 1, or the task's ``ceiling`` column where the table has one (e.g. label noise).
    ``pool="tasks"``: step 2's slope (and height, where the ceiling is fitted) partially pooled with the
    ladder's other tasks (capscale.laws.pooling); off by default (see README for the backtests)."""

    method_name = "two-step"

    def __init__(self, step1: str = "auto", step2: str = "sigmoid_loss", ceiling: str = "auto",
                 anchor_weight: float = 1.0, intermediate: bool = True, skip_fraction: float = 0.1,
                 smooth: int = 5, step2_delta: float | None = None, pool: str = "none", level=0.9, n_boot=1000,
                 seed=0, calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.step1 = step1
        self.step2 = step2
        self.ceiling = ceiling
        self.anchor_weight = anchor_weight
        self.intermediate = intermediate
        self.skip_fraction = skip_fraction
        self.smooth = smooth
        self.step2_delta = step2_delta
        self.pool = pool

    # --- step 1 ---------------------------------------------------------------------------
    def choose_step1(self, finals: pd.DataFrame, loss: np.ndarray) -> str:
        """The step-1 form: as given, by capscale 0.1's rule, or by rolling origin (relative loss error
        on the ladder's own largest runs, compared on the origins every candidate could fit)."""
        if self.step1 == "rule":
            return old_step1_rule(finals)
        if self.step1 == AVERAGE and averaging_applies(finals):
            return AVERAGE
        if self.step1 in ("auto", AVERAGE):  # the same losses give the same choice: a shared loss is chosen once
            key = step1_key("choose", self.n_origins, *(finals[c] for c in ("params", "tokens", "flops")), loss,
                            finals["family"].astype(str).tolist(), finals["model"].astype(str).tolist())
            name, self.step1_errors_ = memoised(key, lambda: self._choose_step1(finals, loss))
            return name
        return self._choose_step1(finals, loss)[0]

    def _choose_step1(self, finals: pd.DataFrame, loss: np.ndarray) -> tuple[str, dict]:
        """(form, {form: internal relative loss error}) — errors empty when there was nothing to compare."""
        if self.step1 not in ("auto", AVERAGE):
            if self.step1 not in STEP1_FORMS:
                raise CapscaleError(f"step1 must be one of {', '.join(STEP1_CHOICES)}; got {self.step1!r}")
            if not step1_eligible(self.step1, finals, len(finals)):
                raise CapscaleError(f"step 1 {self.step1!r} cannot be determined from {len(finals)} runs"
                                    + (" (tokens per parameter must vary)" if "chinchilla" in self.step1 else ""))
            return self.step1, {}
        options = step1_options(finals)
        if not options:
            raise CapscaleError(f"step 1 needs at least 2 runs with a loss, got {len(finals)}")
        if len(options) == 1:
            return options[0], {}
        scored: dict[str, list] = {n: [] for n in options}
        keys = list(finals[RUN_KEYS].itertuples(index=False, name=None))
        for k, train, test in origin_splits(finals, self.n_origins):
            in_train = set(train)
            tr = np.array([key in in_train for key in keys])
            for name in options:
                if not step1_eligible(name, finals[tr], int(tr.sum())):
                    continue
                try:
                    fit = fit_step1(name, finals[tr].reset_index(drop=True), loss[tr])
                except FitError:
                    continue
                for i in np.flatnonzero(~tr):
                    row = finals.iloc[i]
                    predicted = predict_loss(target_scale(row["params"], row["tokens"], row["flops"]), fit)
                    scored[name].append(OriginPoint(k, str(row["model"]), 1.0, predicted / loss[i], 0.0))
        best, errors = choose({n: p for n, p in scored.items() if p})
        return best or max(options, key=lambda n: n_free(*STEP1_FORMS[n])), errors

    # --- step 2 ---------------------------------------------------------------------------
    def _ceiling_mode(self, own_loss: bool) -> str:
        if self.ceiling not in CEILINGS:
            raise CapscaleError(f"ceiling must be one of {', '.join(CEILINGS)}, got {self.ceiling!r}")
        mode = self.ceiling if self.ceiling != "auto" else ("anchor" if own_loss else "fit")
        needs_own = mode == "anchor" or (mode == "fixed" and self.step2 == "exponential_loss")
        if needs_own and not own_loss:
            raise CapscaleError(f"ceiling={mode!r} puts accuracy = ceiling at loss 0, which holds only for the task's "
                                f"own correct-answer loss ({' / '.join(OWN_LOSSES)} of the same task)")
        return mode

    def _step2_spec(self, mode: str, chance_g: float | None, ceiling_g: float, loss_reference: tuple):
        """(form, fixed parameters, anchor (loss, target) or None, space) for step 2. Space "goodness"
        fits the metric's good side, "error" its complement (the exponential form is an error law)."""
        if self.step2 == "sigmoid_loss":
            fixed = {"b": chance_g} if chance_g is not None else {}
            if mode == "fixed":
                if chance_g is None and ceiling_g < 1.0:
                    raise CapscaleError("a fixed ceiling below 1 needs a chance level (floor) as well")
                b = chance_g if chance_g is not None else 0.0
                fixed["a"] = 1.0 if ceiling_g >= 1.0 else (ceiling_g - b) / (1.0 - b)
            anchor = (0.0, ceiling_g) if mode == "anchor" else None
            return get_form("sigmoid_loss"), fixed, anchor, "goodness"
        if self.step2 == "exponential_loss":
            if mode == "fixed":
                zc = (0.0 - loss_reference[0]) / loss_reference[1]
                return get_form("exponential_loss_pinned"), {"e0": 1.0 - ceiling_g, "zc": zc}, None, "error"
            anchor = (0.0, 1.0 - ceiling_g) if mode == "anchor" else None
            return get_form("exponential_loss"), {}, anchor, "error"
        raise CapscaleError(f"step 2 must be one of {', '.join(STEP2_CHOICES)}, got {self.step2!r}")

    def _from_space(self, values):
        g = values if self.space_ == "goodness" else 1.0 - values
        return from_goodness(self.metric_, g)

    def step2_curve(self, loss, fit: FitResult | None = None) -> np.ndarray:
        """Step 2 (the fitted metric) at task loss ``loss``."""
        fit = fit or self.fit_[1]
        return self._from_space(fit.predict(loss=np.asarray(loss, dtype=float)))

    # --- fit ------------------------------------------------------------------------------
    def _problem(self, ladder: pd.DataFrame, task: str, metric: str, loss: str, loss_task: str | None) -> Step2Problem:
        """One task's points for both steps: checkpoints with the metric and the loss, final rows for
        step 1, the skip + moving-average operator for step 2, and step 2's form and constraints."""
        loss_points = metric_series(ladder, loss_task or task, loss)
        value_points = metric_series(ladder, task, metric)
        joined = value_points.merge(loss_points[RUN_KEYS + ["step", "value"]].rename(columns={"value": "loss"}),
                                    on=RUN_KEYS + ["step"], how="inner")
        if joined.empty:
            raise CapscaleError(f"task {task!r}: no checkpoint has both {metric!r} and {loss!r}")
        joined = joined.reset_index(drop=True)
        last_step = joined.groupby(RUN_KEYS, sort=False)["step"].transform("max")
        final_rows = np.flatnonzero((joined["step"].isna() | (joined["step"] == last_step)).to_numpy())
        finals = joined.iloc[final_rows].reset_index(drop=True)  # same rows as ladder.final_checkpoints
        if self.intermediate:
            step2_data, smoother = smoothing_operator(joined, self.skip_fraction, self.smooth)
        else:
            step2_data, smoother = finals, np.eye(len(joined))[final_rows]
        step2_data = step2_data.assign(loss=smoother @ joined["loss"].to_numpy(float),
                                       value=smoother @ joined["value"].to_numpy(float))
        chance = chance_level(joined) if metric_kind(metric).has_chance else None
        chance_g = None if chance is None else float(to_goodness(metric, chance))
        has_ceiling = "ceiling" in joined and joined["ceiling"].notna().any()
        ceiling_g = float(to_goodness(metric, float(joined["ceiling"].dropna().median()))) if has_ceiling else 1.0
        mode = self._ceiling_mode(loss in OWN_LOSSES and (loss_task is None or loss_task == task))
        reference = normalise_inputs(get_form("sigmoid_loss"), {"loss": step2_data["loss"].to_numpy(float)})[1]["loss"]
        form, fixed, anchor, space = self._step2_spec(mode, chance_g, ceiling_g, reference)
        return Step2Problem(joined, final_rows, finals, step2_data, smoother, chance, ceiling_g, mode, reference, form,
                            fixed, anchor, space)

    def _fit_step2(self, problem: Step2Problem, x, y, fixed: dict | None = None) -> FitResult:
        """Step 2 on (loss, value-in-its-space) points; with an anchor, the fit without it is a start."""
        fixed = problem.fixed if fixed is None else fixed
        reference = {"loss": problem.reference}
        free_fit = fit_form(problem.form, {"loss": x}, y, fixed=fixed, delta=self.step2_delta, reference=reference)
        if problem.anchor is None:
            return free_fit
        x, y = np.append(x, problem.anchor[0]), np.append(y, problem.anchor[1])
        weights = np.append(np.ones(len(x) - 1), self.anchor_weight)
        return fit_form(problem.form, {"loss": x}, y, fixed=fixed, weights=weights, delta=self._anchor_delta(len(x) - 1),
                        reference=reference, extra_starts=[free_fit.params])

    def _anchor_delta(self, n_points: int) -> np.ndarray:
        """Huber's threshold for the data, none (a squared residual) for the anchor."""
        return np.append(np.full(n_points, 1e-2 if self.step2_delta is None else self.step2_delta), np.inf)

    def _space_values(self, problem: Step2Problem, metric: str, values) -> np.ndarray:
        g = to_goodness(metric, np.asarray(values, dtype=float))
        return g if problem.space == "goodness" else 1.0 - g

    def _pooled_shape(self, ladder, task, metric, loss, loss_task, problem: Step2Problem) -> dict:
        """Step 2's free shape parameters, partially pooled with the ladder's other tasks
        (capscale.laws.pooling); {} when pooling is off or fewer than three tasks can be fitted."""
        if self.pool == "none":
            return {}
        if self.pool != "tasks":
            raise CapscaleError(f"pool must be none or tasks, got {self.pool!r}")
        wanted = [p for p in SHAPE_PARAMETERS.get(problem.form.name, ()) if p not in problem.fixed]
        estimates = {}
        tasks = [t for t in sorted(ladder.loc[ladder["metric"] == metric, "task"].unique())]
        for other in tasks:
            try:
                pr = problem if other == task else self._problem(ladder, other, metric, loss, loss_task)
                x = pr.step2_data["loss"].to_numpy(float)
                y = self._space_values(pr, metric, pr.step2_data["value"])
                estimates[other] = shape_estimates(self._fit_step2(pr, x, y), x, y, tuple(wanted))
            except (CapscaleError, FitError, LadderError):
                continue
        if task not in estimates or len(estimates) < 3:
            return {}
        out = {}
        for p in wanted:
            if p not in estimates[task]:
                continue
            others = [e[p] for t, e in estimates.items() if t != task and p in e]
            value = shrink(estimates[task][p], others)
            out[p] = value * (problem.reference[1] if p in RAW_SLOPE else 1.0)
        self.pooled_ = {"tasks": len(estimates), **out}
        return out

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss: str = "bpb_correct",
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "TwoStepPredictor":
        """``loss_task`` takes the loss from another task (e.g. a validation loss, as Gadre et al. 2024);
        ``items`` (capscale.metrics.item_metrics of the ladder's store) adds item resampling."""
        self.task_, self.metric_, self.loss_metric_ = task, metric, loss
        problem = self._problem(ladder, task, metric, loss, loss_task)
        finals, joined = problem.finals, problem.joined
        self.n_runs_ = len(finals)
        self.step1_form_ = self.choose_step1(finals, finals["loss"].to_numpy(float))
        self.data_, self.step2_data_ = finals, problem.step2_data
        self.extent_ = ladder_extent(finals)
        self.chance_ = problem.chance
        self.ceiling_mode_, self.ceiling_value_, self.space_ = problem.mode, problem.ceiling, problem.space
        problem.fixed = {**problem.fixed, **self._pooled_shape(ladder, task, metric, loss, loss_task, problem)}
        f1_name = self.step1_form_
        s1 = fit_step1(f1_name, finals, finals["loss"].to_numpy(float))
        self.form_used_ = f"{step1_label(f1_name, s1)} -> {problem.form.name}" + (
            f" (ceiling {problem.mode})" if problem.mode != "fit" else "") + (" (shape pooled)" if self.pool != "none" and
                                                                             hasattr(self, "pooled_") else "")
        s2 = self._fit_step2(problem, problem.step2_data["loss"].to_numpy(float),
                             self._space_values(problem, metric, problem.step2_data["value"]))
        self.fit_ = (s1, s2)
        # observation noise for the prediction interval: unsmoothed step-2 points around the fitted curve
        raw = smooth_runs(joined, self.skip_fraction, 1) if self.intermediate else finals
        self.noise_ = raw["value"].to_numpy(float) - self.step2_curve(raw["loss"].to_numpy(float))
        self.fit_warnings_ = dof_warning(s1, "step 1") + dof_warning(s2, "step 2")
        resampler = ItemResampler.from_items(items, joined.get("checkpoint", pd.Series([np.nan])),
                                             {"value": (task, metric), "loss": (loss_task or task, loss)})
        self.items_resampled_ = resampler is not None
        self.boot_fits_, self.n_boot_failed_ = self._refit_both(problem, resampler)
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def _refit_both(self, problem: Step2Problem, resampler):
        """Both steps refitted on every bootstrap resample at once (capscale.laws.fitting.refit_many):
        a resample is a weighting of the runs (how often each was drawn), plus redrawn items."""
        s1, s2 = self.fit_
        finals = problem.finals
        runs = run_keys(finals)
        least = s1.n_free
        counts, redrawn = self._resamples(len(runs), resampler, least)
        keep = (counts > 0).sum(1) >= least
        if not keep.any():
            return [], self.n_boot
        if resampler is None:
            y1 = finals["loss"].to_numpy(float)
            x2, v2 = problem.step2_data["loss"].to_numpy(float), problem.step2_data["value"].to_numpy(float)
        else:
            loss = np.stack([r["loss"] for r, k in zip(redrawn, keep) if k]).reshape(int(keep.sum()), -1)
            value = np.stack([r["value"] for r, k in zip(redrawn, keep) if k]).reshape(int(keep.sum()), -1)
            y1, x2, v2 = loss[:, problem.final_rows], loss @ problem.smoother.T, value @ problem.smoother.T
        w1 = counts[keep][:, RunColumns(finals, runs).row_runs()]
        w2 = counts[keep][:, RunColumns(problem.step2_data, runs).row_runs()]
        y2 = self._space_values(problem, self.metric_, v2)
        delta = self.step2_delta
        if problem.anchor is not None:
            b = w2.shape[0]
            x2 = np.concatenate([np.broadcast_to(x2, (b, w2.shape[1])), np.full((b, 1), problem.anchor[0])], axis=1)
            y2 = np.concatenate([np.broadcast_to(y2, (b, w2.shape[1])), np.full((b, 1), problem.anchor[1])], axis=1)
            w2 = np.concatenate([w2, np.full((b, 1), self.anchor_weight)], axis=1)
            delta = self._anchor_delta(x2.shape[1] - 1)
        step1 = refit_many(s1, {k: finals[k].to_numpy(float) for k in s1.form.inputs}, y1, w1)
        step2 = refit_many(s2, {"loss": x2}, y2, w2, delta=delta)
        fits = [(a, b) for a, b in zip(step1, step2) if a is not None and b is not None]
        report_refits(self.n_boot)
        return fits, self.n_boot - len(fits)

    # --- predict --------------------------------------------------------------------------
    def predict_loss(self, target: dict, fit: FitResult) -> float:
        return predict_loss(target, fit)

    def predictive_draws(self, params=None, tokens=None, flops=None, with_loss: bool = False):
        target = target_scale(params, tokens, flops)
        s1, s2 = self.fit_
        loss = predict_loss(target, s1)
        value = float(self.step2_curve([loss], s2)[0])
        boot_loss = np.array([predict_loss(target, b1) for b1, _ in self.boot_fits_])
        boot_value = np.array([float(self.step2_curve([l], b2)[0]) for (_, b2), l in zip(self.boot_fits_, boot_loss)])
        draws = boot_value + self._residual_draws(self.noise_, len(boot_value))
        return (value, draws, loss, boot_loss) if with_loss else (value, draws)

    def predict(self, params=None, tokens=None, flops=None, level: float | None = None) -> Forecast:
        target = target_scale(params, tokens, flops)
        value, draws, loss, boot_loss = self.predictive_draws(**target, with_loss=True)
        level_ = self.level if level is None else level
        loss_lower, loss_upper = self._loss_interval(loss, boot_loss, level_)
        return self._forecast(value, draws, target, level, loss=loss, loss_lower=loss_lower, loss_upper=loss_upper,
                              **self._forecast_fields(target, level))


def smoothing_operator(points: pd.DataFrame, skip_fraction: float, window: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Each run's first ``skip_fraction`` of steps dropped, then a centred moving average (pandas'
    ``rolling(window, center=True, min_periods=1)``), as a matrix S over ``points``' rows: the kept
    rows and S, so that smoothed values = S @ values. Being linear, it also smooths every bootstrap
    resample of the items without pandas in the loop."""
    kept, blocks = [], []
    left, right = window // 2, window - 1 - window // 2
    for _, run in points.groupby(RUN_KEYS, sort=False):
        run = run.sort_values("step")
        if run["step"].notna().all() and len(run) > 1:
            run = run[run["step"] >= skip_fraction * run["step"].max()]
        columns = points.index.get_indexer(run.index)
        n = len(columns)
        block = np.zeros((n, len(points)))
        for k in range(n):
            members = columns[max(0, k - left): k + right + 1] if window > 1 else columns[k:k + 1]
            block[k, members] = 1.0 / len(members)
        blocks.append(block)
        kept.append(run)
    return pd.concat(kept, ignore_index=True), np.vstack(blocks)


def smooth_runs(points: pd.DataFrame, skip_fraction: float, window: int) -> pd.DataFrame:
    """The kept rows with ``loss`` and ``value`` smoothed (see smoothing_operator)."""
    kept, S = smoothing_operator(points, skip_fraction, window)
    return kept.assign(loss=S @ points["loss"].to_numpy(float), value=S @ points["value"].to_numpy(float))


