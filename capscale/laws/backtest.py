"""Backtests: hold out models of a ladder, fit on the rest, forecast the held-out ones.

For every task and every held-out run (family + model, at its last step) a predictor is fitted
on the remaining runs *of the same family* (families are different training setups and are
never pooled into one curve) and forecasts the run from its params, tokens and flops. A method
that pools families (``pools_families`` in capscale.laws.registry: observational) is fitted on
every family's runs instead, minus every row of every held-out run, and told the target's family. A run that
cannot be forecast still gets a record, with no prediction and the reason, so nothing is skipped
silently. Tasks are independent, so they run in parallel worker processes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, holdout_split
from capscale.laws.base import STANDARD_LEVELS, Forecast
from capscale.laws.registry import MethodOptions, get_method, make_predictor
from capscale.schema import jsonable

RECORD_KEYS = ["task", "family", "model", "params", "tokens", "flops", "predicted", "lower", "upper", "actual",
               "abs_error", "lower_50", "upper_50", "lower_80", "upper_80", "method_used", "form_used", "n_points",
               "internal_error", "reason"]
"""The JSON record of a backtest: the forecast with its interval at the requested level (lower, upper)
and at 50% and 80%, what made it (method, form, how many runs), the method's error on the ladder's
own held-out runs, and, for a run that could not be forecast, the reason (predicted is null then)."""


@dataclass
class BacktestRecord:
    task: str
    family: str
    model: str
    params: float
    tokens: float
    flops: float
    predicted: float
    lower: float
    upper: float
    actual: float
    abs_error: float
    lower_50: float = math.nan
    upper_50: float = math.nan
    lower_80: float = math.nan
    upper_80: float = math.nan
    method_used: str = ""
    form_used: str = ""
    n_points: int = 0
    internal_error: float | None = None
    reason: str = ""
    actual_loss: float | None = None  # the held-out run's true task loss, for plots (not in the JSON contract)

    def contract(self) -> dict:
        """The JSON record of the backtest contract, exactly RECORD_KEYS; NaN becomes null."""
        return {k: jsonable(getattr(self, k)) for k in RECORD_KEYS}


@dataclass
class BacktestOutcome:
    records: list[BacktestRecord]
    forecasts: list[Forecast | None]  # None where the record has a reason instead of a forecast
    skipped: list[tuple[str, str, str]]  # (task, family, reason)
    predictors: dict  # (task, family) -> fitted predictor (for plots)


def record_for(task: str, family: str, row, forecast: Forecast | None, reason: str = "",
               actual_loss: float | None = None) -> BacktestRecord:
    actual = float(row["value"])
    scale = (float(row["params"]), float(row["tokens"]), float(row["flops"]))
    if forecast is None:
        return BacktestRecord(task, family, row["model"], *scale, math.nan, math.nan, math.nan, actual, math.nan,
                              reason=reason, actual_loss=actual_loss)
    lo50, hi50 = forecast.interval(0.5)
    lo80, hi80 = forecast.interval(0.8)
    return BacktestRecord(task, family, row["model"], *scale, forecast.value, forecast.lower, forecast.upper, actual,
                          abs(forecast.value - actual), lo50, hi50, lo80, hi80, forecast.method_used,
                          forecast.form_used, forecast.n_points, forecast.internal_error, "", actual_loss)


def backtest_task(train: pd.DataFrame, held: pd.DataFrame, task: str, metric: str, loss: str, loss_task: str | None,
                  make, items: pd.DataFrame | None = None, progress=None,
                  pools_families: bool = False) -> tuple[list, list, list, dict]:
    """Forecast every held-out run of one task; returns (records, forecasts, skipped, predictors).
    ``pools_families``: the method fits on every family's runs and is told the target's family
    (capscale.laws.registry: observational)."""
    records, forecasts, skipped, predictors = [], [], [], {}
    held_task = final_checkpoints(held[(held["task"] == task) & (held["metric"] == metric)])
    held_loss = held[(held["task"] == (loss_task or task)) & (held["metric"] == loss)] if loss else held.iloc[:0]
    if pools_families:  # a pooled fit reads every task: no row of a held-out run may stay in it
        held_runs = set(zip(held["family"], held["model"]))
        train = train[[run not in held_runs for run in zip(train["family"], train["model"])]]
    for family, targets in held_task.groupby("family", sort=True):
        family_train = train if pools_families else train[train["family"] == family]
        predictor, reason = None, ""
        if family_train.empty:
            reason = f"family {family!r} has no run left to fit on"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = make().clone(family=family) if pools_families else make()
                    predictor = model.fit(family_train, task, metric, loss, loss_task=loss_task, items=items)
            except CapscaleError as e:
                reason = str(e)
        if predictor is None:
            skipped.append((task, family, reason))
        else:
            predictors[(task, family)] = predictor
        for _, row in targets.iterrows():
            true_loss = held_loss[(held_loss["family"] == family) & (held_loss["model"] == row["model"])
                                  & ((held_loss["step"] == row["step"]) | (held_loss["step"].isna() & pd.isna(row["step"])))]
            actual_loss = float(true_loss["value"].iloc[0]) if len(true_loss) else None
            forecast, why = None, reason
            if predictor is not None:
                try:
                    forecast = predictor.predict(params=row["params"], tokens=row["tokens"], flops=row["flops"])
                except CapscaleError as e:
                    why = str(e)
            forecasts.append(forecast)
            records.append(record_for(task, family, row, forecast, why, actual_loss))
        if progress is not None:
            progress()
    return records, forecasts, skipped, predictors


def run_backtest(
    ladder: pd.DataFrame,
    holdout: str,
    *,
    metric: str = "acc",
    loss: str = "bpb_correct",
    loss_task: str | None = None,
    method: str = "auto",
    tasks: list[str] | None = None,
    level: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    step1: str | None = None,
    step2: str = "sigmoid_loss",
    jobs: int = 1,
    items: pd.DataFrame | None = None,
    x: str | None = None,
    ceiling: str = "auto",
    anchor_weight: float = 1.0,
    calibrate: bool = True,
    options: MethodOptions | None = None,
    progress: bool = False,
) -> BacktestOutcome:
    """``items``: the per-item data the method reads (see capscale.laws.registry: per-choice rows,
    their item metrics, or per-item sample counts); when given, every bootstrap resample also
    resamples the benchmark items. ``options`` replaces the individual method options.
    ``progress``: a bar over tasks (and, with one job, over bootstrap refits)."""
    train, held = holdout_split(ladder, holdout)
    available = sorted(held.loc[held["metric"] == metric, "task"].unique())
    if tasks:
        missing = sorted(set(tasks) - set(available))
        if missing:
            raise CapscaleError(f"tasks {missing} have no held-out rows with metric {metric!r}")
        available = [t for t in available if t in tasks]
    if not available:
        raise CapscaleError(f"the held-out rows have no metric {metric!r}")
    options = options or MethodOptions(level=level, n_boot=n_boot, seed=seed, step1=step1, step2=step2, x=x,
                                       ceiling=ceiling, anchor_weight=anchor_weight, calibrate=calibrate)

    def make():
        return make_predictor(method, options)

    every_task = get_method(method).reads_all_tasks
    pools_families = get_method(method).pools_families

    def one(task, tick=None):
        task_items = None if items is None or every_task else items[items["task"].isin([task, loss_task or task])]
        return backtest_task(train, held, task, metric, loss, loss_task, make, items if every_task else task_items,
                             tick, pools_families=pools_families)

    from capscale.progress import task_bar

    with task_bar(len(available), "backtest", enabled=progress, nested=jobs <= 1) as bar:
        if jobs > 1 and len(available) > 1:
            from joblib import Parallel, delayed

            results = []
            for result in Parallel(n_jobs=jobs, return_as="generator")(delayed(one)(t) for t in available):
                results.append(result)
                bar.task_done()
        else:
            results = []
            for t in available:
                results.append(one(t))
                bar.task_done()
    outcome = BacktestOutcome([], [], [], {})
    for records, forecasts, skipped, predictors in results:
        outcome.records += records
        outcome.forecasts += forecasts
        outcome.skipped += skipped
        outcome.predictors.update(predictors)
    return outcome


def summary_table(outcome: BacktestOutcome) -> pd.DataFrame:
    df = pd.DataFrame([asdict(r) for r in outcome.records])
    if df.empty:
        return df
    forecast = df["predicted"].notna()
    for level, (lo, hi) in {0.5: ("lower_50", "upper_50"), 0.8: ("lower_80", "upper_80"),
                            None: ("lower", "upper")}.items():
        inside = (df["actual"] >= df[lo]) & (df["actual"] <= df[hi])
        df["inside" if level is None else f"inside_{int(level * 100)}"] = inside.where(forecast, np.nan)
    df["loss_pred"] = [f.loss if f is not None else np.nan for f in outcome.forecasts]
    df["warnings"] = ["; ".join(f.warnings) if f is not None else "" for f in outcome.forecasts]
    return df


def coverage(df: pd.DataFrame, column: str = "inside") -> float:
    values = df[column].dropna() if len(df) else df
    return float(values.astype(float).mean()) if len(values) else float("nan")


def mean_abs_error(df: pd.DataFrame) -> float:
    values = df["abs_error"].dropna() if len(df) else df
    return float(np.mean(values)) if len(values) else float("nan")


__all__ = ["RECORD_KEYS", "BacktestRecord", "BacktestOutcome", "run_backtest", "summary_table", "coverage",
           "mean_abs_error", "STANDARD_LEVELS", "make_predictor"]
