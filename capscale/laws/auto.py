"""``--method auto``: per task, the method that forecasts the ladder's own largest runs best.

Every candidate the data allow (two-step with a sigmoid and with an exponential step 2 where the
task has a loss, direct, carry-forward, choice-mass where per-choice rows are given, the PassUntil
laws for pass_until) is run through the ladder's rolling-origin backtests (``capscale.laws.rolling``)
as point forecasts; the one with the lowest internal error (compared on the origins every
candidate could fit) is refitted on the whole ladder with its bootstrap and calibrated intervals.
A ladder too short for any origin (two sizes) falls back to an order fixed in advance (the first
candidate in CANDIDATE_ORDER that can fit), chosen from the public backtests in README.

Given the target's ``family`` and a table of several families, the per-family candidates see that
family's runs only and ``observational`` (capscale.laws.observational) joins them, fitted on every
family and scored on the same rolling origins of the target family (its k largest held out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.laws.base import Forecast
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.predictors import CarryForwardPredictor, DirectPredictor, TaskPredictor, TwoStepPredictor
from capscale.laws.rolling import choose, internal_backtest, task_finals
from capscale.schema import target_scale

CANDIDATE_ORDER = ("two-step", "two-step (exponential)", "choice-mass", "pass-until-items", "pass-until", "direct",
                   "carry-forward", "observational")
PER_CHOICE_COLUMNS = {"choice", "logprob", "gold"}
SAMPLE_COLUMNS = {"n_drawn", "n_correct"}


def has_series(ladder: pd.DataFrame, task: str, metric: str) -> bool:
    return bool(((ladder["task"] == task) & (ladder["metric"] == metric)).any())


def items_kind(items: pd.DataFrame | None) -> str | None:
    if items is None:
        return None
    if PER_CHOICE_COLUMNS <= set(items.columns):
        return "choices"
    if SAMPLE_COLUMNS <= set(items.columns):
        return "samples"
    return "item_metrics"


class AutoPredictor(TaskPredictor):
    """Chooses, per task, among the candidate methods by the ladder's own rolling-origin backtests.

    Fitted attributes: ``chosen_`` (the fitted winner), ``method_used_``, ``internal_errors_``
    (candidate -> mean |error| on the ladder's held-out runs), plus the winner's ``data_``, ``extent_``.
    ``ceiling``, ``anchor_weight``: passed to the two-step candidates. ``family``: the target's
    family; with several families in the table, observational is a candidate too."""

    method_name = "auto"

    def __init__(self, ceiling: str = "auto", anchor_weight: float = 1.0, level=0.9, n_boot=1000, seed=0,
                 calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100, family: str | None = None):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.ceiling = ceiling
        self.anchor_weight = anchor_weight
        self.family = family

    def candidates(self, ladder, task, metric, loss, loss_task, items) -> dict[str, TaskPredictor]:
        common = dict(level=self.level, n_boot=self.n_boot, seed=self.seed, calibrate=self.calibrate,
                      n_origins=self.n_origins, growth=self.growth, n_boot_origin=self.n_boot_origin)
        kind = items_kind(items)
        out: dict[str, TaskPredictor] = {}
        if metric == "pass_until":
            from capscale.laws.passuntil import PassUntilPredictor

            if kind == "samples":
                out["pass-until-items"] = PassUntilPredictor(per_item=True, **common)
            out["pass-until"] = PassUntilPredictor(**common)
        elif loss is not None and has_series(ladder, loss_task or task, loss):
            two = dict(ceiling=self.ceiling, anchor_weight=self.anchor_weight, **common)
            out["two-step"] = TwoStepPredictor(step2="sigmoid_loss", **two)
            out["two-step (exponential)"] = TwoStepPredictor(step2="exponential_loss", **two)
        if kind == "choices" and metric in ("acc", "acc_norm", "acc_bytes", "p_correct", "brier"):
            from capscale.laws.choicemass import ChoiceMassPredictor

            out["choice-mass"] = ChoiceMassPredictor(**common)
        out["direct"] = DirectPredictor(**common)
        out["carry-forward"] = CarryForwardPredictor(**common)
        return {name: out[name] for name in CANDIDATE_ORDER if name in out}

    def pooled_split(self, ladder: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
        """(the target family's runs, whether observational pools the other families too)."""
        if self.family is None or ladder["family"].nunique() < 2:
            return ladder, False
        return ladder[ladder["family"] == self.family].reset_index(drop=True), True

    @staticmethod
    def items_for(name: str, items, kind: str | None):
        """Each candidate gets the per-item data it uses: per-choice rows for choice-mass, their item
        metrics for the task-level methods (item resampling), sample counts for PassUntil."""
        if kind == "choices" and name != "choice-mass":
            from capscale.metrics import item_metrics

            return item_metrics(items)
        if kind == "samples" and not name.startswith("pass-until"):
            return None
        return items

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss: str | None = "bpb_correct",
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "AutoPredictor":
        self.task_, self.metric_, self.loss_metric_ = task, metric, loss
        kind = items_kind(items)
        whole = ladder
        ladder, pooled = self.pooled_split(whole)
        candidates = self.candidates(ladder, task, metric, loss, loss_task, items) if len(ladder) else {}
        if pooled:
            from capscale.laws.observational import ObservationalPredictor

            candidates["observational"] = ObservationalPredictor(
                family=self.family, level=self.level, n_boot=self.n_boot, seed=self.seed, calibrate=self.calibrate,
                n_origins=self.n_origins, growth=self.growth, n_boot_origin=self.n_boot_origin)
        per_item = {}
        scored = {}
        for name, candidate in candidates.items():
            if name == "observational":
                try:
                    scored[name] = candidate.clone().own_points(whole, task, metric)
                except CapscaleError:
                    scored[name] = []
                continue
            if name not in per_item:
                per_item[name] = self.items_for(name, items, kind) if items is not None else None
            scored[name] = internal_backtest(candidate.clone(n_boot=0), ladder, task, metric, loss, loss_task,
                                             per_item[name], self.n_origins)
        winner, self.internal_errors_ = choose(scored)
        order = list(candidates) if winner is None else [winner] + [n for n in candidates if n != winner]
        errors = []
        for name in order:
            try:
                self.chosen_ = candidates[name].fit(whole if name == "observational" else ladder, task, metric, loss,
                                                    loss_task=loss_task, items=per_item.get(name))
            except CapscaleError as e:
                errors.append(f"{name}: {e}")
                continue
            self.method_used_ = name
            break
        else:
            raise CapscaleError(f"task {task!r}: no method could fit ({'; '.join(errors)})")
        self.fit_warnings_ = [f"auto: {e}" for e in errors]
        if winner is None:
            self.fit_warnings_.append(f"auto: the ladder is too short for an internal backtest; {self.method_used_} "
                                      "by the fixed order")
        chosen = self.chosen_
        for attribute in ("data_", "extent_", "chance_", "n_runs_", "calibration_"):
            setattr(self, attribute, getattr(chosen, attribute, None))
        if getattr(chosen, "n_runs_", None) is None:
            self.n_runs_ = len(task_finals(ladder, task, metric))
        return self

    def predictive_draws(self, params=None, tokens=None, flops=None):
        return self.chosen_.predictive_draws(params=params, tokens=tokens, flops=flops)

    def predict(self, params=None, tokens=None, flops=None, level: float | None = None) -> Forecast:
        forecast = self.chosen_.predict(params=params, tokens=tokens, flops=flops, level=level)
        forecast.method_used = f"auto -> {self.method_used_}"
        forecast.internal_error = self.internal_errors_.get(self.method_used_, forecast.internal_error)
        forecast.warnings = list(self.fit_warnings_) + forecast.warnings
        return forecast

    @property
    def boot_fits_(self):
        return getattr(self.chosen_, "boot_fits_", [])

    @property
    def n_boot_failed_(self):
        return getattr(self.chosen_, "n_boot_failed_", 0)


__all__ = ["AutoPredictor", "CANDIDATE_ORDER", "target_scale", "np"]
