"""``--method auto``: the method that forecasts the ladder's own largest runs best.

Every candidate the data allow (two-step with a sigmoid and with an exponential step 2 where the
task has a loss, direct, carry-forward, choice-mass where per-choice rows are given, the PassUntil
laws for pass_until) is run through the ladder's rolling-origin backtests (``capscale.laws.rolling``)
as point forecasts. With ``select="ladder"`` (the default) the candidates are compared on *every task
of the ladder* (each task's errors relative to that task's mean over the candidates, so every task
counts alike): on the public ladders one task's 1-3 held-out points chose worse than the whole
ladder's (e.g. lm-eval 2023 BLOOM: 0.032 per task vs 0.016 pooled). Candidates are walked in a prior
order (CANDIDATE_ORDER) and a later one replaces the current choice only where it is better beyond
noise (one-sided 5% over the tasks; 10% with a single task): on OpenLM's 46 tasks the direct
sigmoid won the ladder's own backtests by 1.5% and then lost to two-step by 15% at 1.4B-6.9B.
``select="task"`` compares on the task alone.
The winner is refitted on the whole ladder with its bootstrap and calibrated intervals. A ladder
too short for any origin (two sizes) takes the first candidate of SHORT_LADDER_ORDER that fits,
chosen in advance from the public backtests.

Given the target's ``family`` and a table of several families, the per-family candidates see that
family's runs only and ``observational`` (capscale.laws.observational) joins them: fitted on every
family, scored on the same rolling origins of the target family (its k largest held out, the other
families whole). It is scored only where a per-family candidate is scored too, so a family too
short for an origin of its own takes SHORT_LADDER_ORDER (observational is the fallback where no
per-family method fits, e.g. a family with one model).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.laws.base import Forecast
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.direct import CarryForwardPredictor, DirectPredictor
from capscale.laws.predictors import TaskPredictor
from capscale.laws.twostep import TwoStepPredictor
from capscale.laws.rolling import OriginPoint, internal_backtest, mean_error, task_finals
from capscale.schema import metric_kind

CANDIDATE_ORDER = ("two-step", "two-step (exponential)", "choice-mass", "pass-until-items", "pass-until",
                   "carry-forward", "direct (linear)", "direct (sigmoid)", "direct (2p)", "observational")
"""The prior order: a later candidate replaces an earlier one only where the ladder's own backtests say it
is better beyond noise (``gated_choice``). The order follows the public backtests (results/backtests/
SUMMARY.md): the two-step law where the task has a loss, the per-item and PassUntil laws where their
data exist; then, without a loss, carry-forward first — on the public ladders a direct law fitted in
log compute beat carrying the largest run forward less often than the ladder's own backtests
suggested (mean MAE over the public backtests: this order 0.059; the best of them per ladder
without the gate 0.065; the line alone 0.060, carry-forward alone 0.061, the sigmoid alone 0.074).
Observational (several families only) comes last: it replaces the per-family choice only where the
family's own origins show it better beyond noise (results/backtests/observational/README.md)."""
SHORT_LADDER_ORDER = ("two-step", "pass-until", "carry-forward", "direct (linear)", "direct (sigmoid)",
                      "two-step (exponential)", "choice-mass", "pass-until-items", "direct (2p)", "observational")
"""Two sizes leave no origin to backtest on: the first of these that fits (carry-forward beat the line on
the one public ladder of two sizes left, LLaMA in lm-eval 2023)."""
Z_ONE_SIDED = 1.645  # a later candidate must beat an earlier one at one-sided 5% over the ladder's tasks
SINGLE_TASK_MARGIN = 0.1  # ... or, with a single task to compare on, by 10% of the error
SELECTIONS = ("ladder", "task")
PER_CHOICE_COLUMNS = {"choice", "logprob", "gold"}
SAMPLE_COLUMNS = {"n_drawn", "n_correct"}
_MEMO: dict = {}  # (ladder, items, settings) fingerprint -> {task: {candidate: error}}; see ladder_errors
_MEMO_SIZE = 8


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


def fingerprint(*tables) -> str:
    """A content hash of tables (None allowed): the same ladder gives the same key in any call."""
    digest = hashlib.sha1()
    for table in tables:
        if table is None:
            digest.update(b"none")
            continue
        digest.update(",".join(map(str, table.columns)).encode())
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def common_error(points: dict[str, list[OriginPoint]]) -> dict[str, float]:
    """Each scored candidate's mean error on the origins every scored candidate could fit."""
    scored = {n: p for n, p in points.items() if p}
    if not scored:
        return {}
    common = set.intersection(*({p.origin for p in pts} for pts in scored.values()))
    if not common:
        return {n: mean_error(p) for n, p in scored.items() if len({q.origin for q in p}) ==
                max(len({q.origin for q in v}) for v in scored.values())}
    return {n: mean_error([p for p in pts if p.origin in common]) for n, pts in scored.items()}


def relative_errors(errors: dict[str, dict[str, float]], available: list[str]) -> pd.DataFrame:
    """task x candidate errors divided by the task's mean over the candidates (every task counts alike),
    over the tasks where every available candidate was scored."""
    rows = {t: {c: e[c] for c in available} for t, e in errors.items() if all(c in e for c in available)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=available)
    if table.empty:
        return table
    means = table.mean(axis=1)
    return table[means > 0].div(means[means > 0], axis=0)


def beats(later: pd.Series, earlier: pd.Series) -> bool:
    """Is ``later`` better than ``earlier`` beyond noise? Paired over tasks (one-sided z on the mean
    difference of relative errors), or by a margin when there is one task."""
    d = (earlier - later).to_numpy(float)
    if len(d) == 0:
        return False
    if len(d) == 1:
        return bool(d[0] > SINGLE_TASK_MARGIN * float(earlier.iloc[0]))
    se = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    return bool(d.mean() > Z_ONE_SIDED * se) if se > 0 else bool(d.mean() > 0)


def gated_choice(errors: dict[str, dict[str, float]], task: str, available: list[str]) -> tuple[str | None, dict]:
    """Walk the available candidates in the prior order; a later one replaces the current choice only if
    it beats it beyond noise on the ladder's tasks (``beats``). Returns (winner, {candidate: mean relative
    error}); (None, {}) when nothing could be compared (no origin anywhere)."""
    scored = [c for c in available if c in errors.get(task, {})]
    table = relative_errors(errors, scored)
    if table.empty:
        return None, {}
    choice = scored[0]
    for candidate in scored[1:]:
        if beats(table[candidate], table[choice]):
            choice = candidate
    return choice, table.mean().to_dict()


class AutoPredictor(TaskPredictor):
    """Chooses the method by the ladder's own rolling-origin backtests (module docstring).

    Fitted attributes: ``chosen_`` (the fitted winner), ``method_used_``, ``internal_errors_`` (this
    task's candidate -> mean |error| on the ladder's held-out runs), ``selection_scores_`` (what the
    choice compared: relative errors pooled over the ladder's tasks, or this task's errors), plus the
    winner's ``data_``, ``extent_``. ``ceiling``, ``anchor_weight``: passed to the two-step candidates.
    ``family``: the target's family; with several families in the table, observational is a candidate."""

    method_name = "auto"

    def __init__(self, select: str = "ladder", ceiling: str = "auto", anchor_weight: float = 1.0, level=0.9,
                 n_boot=1000, seed=0, calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100,
                 family: str | None = None):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.select = select
        self.ceiling = ceiling
        self.anchor_weight = anchor_weight
        self.family = family

    def pooled_split(self, ladder: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
        """(the target family's runs, whether observational pools the other families too)."""
        if self.family is None or ladder["family"].nunique() < 2:
            return ladder, False
        return ladder[ladder["family"] == self.family].reset_index(drop=True), True

    def candidates(self, ladder, task, metric, loss, loss_task, items, pooled=False) -> dict[str, TaskPredictor]:
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
        if kind == "choices" and metric in ("acc", "acc_norm", "acc_bytes", "p_correct", "brier") and \
                (items["task"] == task).any():
            from capscale.laws.choicemass import ChoiceMassPredictor

            out["choice-mass"] = ChoiceMassPredictor(**common)
        if not pooled or has_series(ladder, task, metric):  # (a family with no run of its own: observational only)
            finals = task_finals(ladder, task, metric)
            chance = finals["chance"].dropna().median() if "chance" in finals and finals["chance"].notna().any() \
                else None
            direct = DirectPredictor(**common)
            for form in direct.candidates(len(finals), chance):
                out[f"direct ({'2p' if form == 'sigmoid_2p' else form})"] = DirectPredictor(form=form, **common)
            out["carry-forward"] = CarryForwardPredictor(**common)
        if pooled and metric_kind(metric).probability:
            from capscale.laws.observational import ObservationalPredictor

            out["observational"] = ObservationalPredictor(family=self.family, **common)
        return {name: out[name] for name in CANDIDATE_ORDER if name in out}

    @staticmethod
    def items_for(name: str, items, kind: str | None, task: str, loss_task: str | None):
        """Each candidate gets the per-item data it uses for this task: per-choice rows for choice-mass,
        their item metrics for the task-level methods (item resampling), sample counts for PassUntil."""
        if items is None:
            return None
        items = items[items["task"].isin([task, loss_task or task])]
        if kind == "choices" and name != "choice-mass":
            from capscale.metrics import item_metrics

            return item_metrics(items) if len(items) else None
        if kind == "samples" and not name.startswith("pass-until"):
            return None
        return items

    def task_errors(self, ladder, task, metric, loss, loss_task, items) -> dict[str, float]:
        """Each candidate's mean internal error on this task (compared on common origins); observational
        (on the whole table) only beside a scored per-family candidate, with its own link (the sigmoid
        where that is "auto": its own choice of link would refit every family's origins per task)."""
        kind = items_kind(items)
        whole = ladder
        ladder, pooled = self.pooled_split(whole)
        points = {}
        for name, candidate in self.candidates(ladder, task, metric, loss, loss_task, items, pooled).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if name != "observational":
                    points[name] = internal_backtest(candidate.clone(n_boot=0), ladder, task, metric, loss, loss_task,
                                                     self.items_for(name, items, kind, task, loss_task), self.n_origins)
                elif any(points.values()):
                    try:
                        link = "sigmoid" if candidate.score_link == "auto" else candidate.score_link
                        points[name] = candidate.clone(score_link=link).own_points(whole, task, metric)
                    except CapscaleError:
                        points[name] = []
        return common_error(points)

    def errors_or_none(self, ladder, task, metric, loss, loss_task, items) -> dict[str, float]:
        """A task that cannot be fitted (e.g. duplicate rows) gives no votes; its own fit reports why."""
        try:
            return self.task_errors(ladder, task, metric, loss, loss_task, items)
        except CapscaleError:
            return {}

    def ladder_errors(self, ladder, metric, loss, loss_task, items) -> dict[str, dict[str, float]]:
        """task -> candidate -> internal error, for every task of the ladder with the metric; memoised on
        the ladder's content, so fitting the ladder's tasks one after the other computes it once."""
        key = (fingerprint(ladder, items), metric, loss, loss_task, repr(sorted(self.get_params().items())))
        if key not in _MEMO:
            tasks = sorted(ladder.loc[ladder["metric"] == metric, "task"].unique())
            _MEMO[key] = {t: self.errors_or_none(ladder, t, metric, loss, loss_task, items) for t in tasks}
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.pop(next(iter(_MEMO)))
        return _MEMO[key]

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss: str | None = "bpb_correct",
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "AutoPredictor":
        """``items``: the per-item data of the ladder's tasks (choice-mass competes where they are per-choice
        rows; with select="ladder" every task's rows are used to rank the candidates)."""
        if self.select not in SELECTIONS:
            raise CapscaleError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        self.task_, self.metric_, self.loss_metric_ = task, metric, loss
        kind = items_kind(items)
        whole = ladder
        ladder, pooled = self.pooled_split(whole)
        candidates = self.candidates(ladder, task, metric, loss, loss_task, items, pooled)
        if self.select == "ladder":
            errors = self.ladder_errors(whole, metric, loss, loss_task, items)
            winner, self.selection_scores_ = gated_choice(errors, task, list(candidates))
            self.internal_errors_ = dict(errors.get(task, {}))
        else:
            self.internal_errors_ = self.task_errors(whole, task, metric, loss, loss_task, items)
            winner, self.selection_scores_ = gated_choice({task: self.internal_errors_}, task, list(candidates))
        fallback = [n for n in SHORT_LADDER_ORDER if n in candidates]
        order = fallback if winner is None else [winner] + [n for n in fallback if n != winner]
        failures = []
        for name in order:
            try:
                self.chosen_ = candidates[name].fit(whole if name == "observational" else ladder, task, metric, loss,
                                                    loss_task=loss_task,
                                                    items=self.items_for(name, items, kind, task, loss_task))
            except CapscaleError as e:
                failures.append(f"{name}: {e}")
                continue
            self.method_used_ = name
            break
        else:
            raise CapscaleError(f"task {task!r}: no method could fit ({'; '.join(failures)})")
        self.fit_warnings_ = [f"auto: {e}" for e in failures]
        if winner is None:
            self.fit_warnings_.append(f"auto: the ladder is too short for an internal backtest; {self.method_used_} "
                                      "by the fixed order for short ladders")
        chosen = self.chosen_
        for attribute in ("data_", "extent_", "chance_", "calibration_", "n_boot_failed_"):
            setattr(self, attribute, getattr(chosen, attribute, None))
        self.n_runs_ = chosen.n_runs_ if hasattr(chosen, "n_runs_") else len(task_finals(ladder, task, metric))
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

