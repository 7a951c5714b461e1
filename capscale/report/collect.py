"""Gather every number of a report: the ladder, per (task, family) fits and forecasts, a held-out backtest,
the checkpoint noise, trend classes and provenance, into one JSON-able dict (``report.json``).

Nothing here re-implements forecasting or trend detection: fits are ``capscale.laws.registry`` predictors
(``--method auto`` by default, whose rolling-origin backtests choose the method), the held-out backtest is
``capscale.laws.backtest.backtest_task`` on each family's largest size, trends are ``capscale.trends``.
A (task, family) whose fit or backtest fails keeps its row, with the error, and the rest goes on.
Fitted predictors are kept beside the dict (``Collected``) for the figures; they are not serialised.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints
from capscale.laws.backtest import backtest_task
from capscale.laws.registry import MethodOptions, get_method, make_predictor
from capscale.schema import jsonable
from capscale.laws.rolling import SIZE_RTOL, rungs, size_keys
from capscale.report import triage
from capscale.report.targets import default_target, target_label

RUN_COLUMNS = ["family", "model"]


@dataclass
class Settings:
    """What the report was asked for (the CLI's options); everything that changes a number."""
    metric: str = "acc"
    loss: str | None = "bpb_correct"
    loss_task: str | None = None
    method: str = "auto"
    options: MethodOptions = field(default_factory=MethodOptions)
    tasks: list[str] | None = None
    targets: list[dict] = field(default_factory=list)
    n_sim: int = 999
    progress: bool = True


@dataclass
class PairFit:
    """One (task, family): the full-ladder predictor, its target forecasts, the held-out backtest."""
    task: str
    family: str
    predictor: object = None
    forecasts: list = field(default_factory=list)  # one Forecast (or None) per target
    backtest: list = field(default_factory=list)  # (BacktestRecord, Forecast | None) of held-out runs
    backtest_predictor: object = None
    error: str = ""


@dataclass
class Collected:
    report: dict
    ladder: pd.DataFrame
    pairs: dict  # (task, family) -> PairFit
    trends: object  # capscale.trends.TrendReport or None
    trend_items: pd.DataFrame | None
    colours: dict  # family -> matplotlib colour, the same in every figure


def describe_error(exc: BaseException) -> str:
    """A CapscaleError is the user's to fix and reads as its message; anything else names its type."""
    return str(exc) if isinstance(exc, CapscaleError) else f"{type(exc).__name__}: {exc}"


def usable_rows(ladder: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows a scale law can use: zero compute (a run's step 0) cannot sit on a log axis."""
    zero = (ladder["tokens"] <= 0) | (ladder["flops"] <= 0)
    notes = []
    if zero.any():
        notes.append(f"{int(zero.sum())} rows at zero tokens or compute (initial checkpoints) are left out: laws "
                     "and plots are in log compute")
    out = ladder.loc[~zero].reset_index(drop=True)
    out.attrs = dict(ladder.attrs)
    return out, notes


def select_tasks(ladder: pd.DataFrame, metric: str, wanted: list[str] | None) -> list[str]:
    available = sorted(ladder.loc[ladder["metric"] == metric, "task"].unique())
    if not available:
        metrics = sorted(ladder["metric"].unique())
        raise CapscaleError(f"the ladder has no rows with metric {metric!r} (metrics: {metrics[:20]}); "
                            "choose one with --metric")
    if not wanted:
        return available
    missing = [t for t in wanted if t not in available]
    if missing:
        raise CapscaleError(f"--tasks: {missing} have no rows with metric {metric!r}; tasks: "
                            f"{available[:30]}{' ...' if len(available) > 30 else ''}")
    return [t for t in available if t in wanted]


def run_table(ladder: pd.DataFrame) -> list[dict]:
    """One row per run: its scale at the last checkpoint and how many checkpoints it has."""
    per_checkpoint = ladder.drop_duplicates(RUN_COLUMNS + ["step"])
    rows = []
    for (family, model), run in per_checkpoint.groupby(RUN_COLUMNS, sort=False):
        last = run.sort_values("step").iloc[-1]
        rows.append({"family": family, "model": model, "params": jsonable(last["params"]),
                     "tokens": jsonable(last["tokens"]), "flops": jsonable(last["flops"]),
                     "tokens_per_param": jsonable(last["tokens"] / last["params"]),
                     "checkpoints": int(len(run)), "last_step": jsonable(last["step"])})
    return sorted(rows, key=lambda r: (r["family"], r["flops"] or 0.0, r["model"]))


def largest_rung_split(ladder: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, held, {family: held models}): every run of each family's largest size is held out, the way the
    public backtests hold out the largest models (sizes within 2% are one rung, as in capscale.laws.rolling)."""
    finals = final_checkpoints(ladder[ladder["metric"] == metric]).drop_duplicates(RUN_COLUMNS)
    held_runs = set()
    held_models = {}
    for family, runs in finals.groupby("family", sort=True):
        sizes = size_keys(runs)
        if len(rungs(sizes)) < 2:
            continue
        cut = rungs(sizes)[-1] / (1.0 + SIZE_RTOL)
        models = sorted(runs.loc[sizes >= cut, "model"].astype(str))
        held_models[family] = models
        held_runs.update((family, m) for m in models)
    mask = pd.Series([k in held_runs for k in zip(ladder["family"], ladder["model"].astype(str))], index=ladder.index)
    train, held = ladder.loc[~mask].reset_index(drop=True), ladder.loc[mask].reset_index(drop=True)
    train.attrs, held.attrs = dict(ladder.attrs), dict(ladder.attrs)
    return train, held, held_models


def task_items(items: pd.DataFrame | None, task: str, loss_task: str | None, every_task: bool):
    """The per-item rows a method reads for one task (all tasks for methods that rank over the ladder)."""
    if items is None or every_task:
        return items
    return items[items["task"].isin([task, loss_task or task])]


def fit_pair(pair: PairFit, ladder: pd.DataFrame, settings: Settings, items) -> None:
    """Fit on the family's whole ladder and forecast every target; errors stay in the pair."""
    family_ladder = ladder[ladder["family"] == pair.family]
    family_ladder.attrs = dict(ladder.attrs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair.predictor = make_predictor(settings.method, settings.options).fit(
                family_ladder, pair.task, settings.metric, settings.loss, loss_task=settings.loss_task, items=items)
    except Exception as exc:  # noqa: BLE001 - one failing task is a row with its error, not a crash
        pair.error = describe_error(exc)
        return
    for target in settings.targets:
        try:
            pair.forecasts.append(pair.predictor.predict(params=target["params"], tokens=target["tokens"],
                                                         flops=target["flops"]))
        except Exception as exc:  # noqa: BLE001
            pair.forecasts.append(describe_error(exc))


def backtest_pair(pair: PairFit, train: pd.DataFrame, held: pd.DataFrame, settings: Settings, items) -> None:
    if not (held["family"] == pair.family).any():
        return
    family_held = held[held["family"] == pair.family]
    try:
        records, forecasts, skipped, predictors = backtest_task(
            train, family_held, pair.task, settings.metric, settings.loss, settings.loss_task,
            lambda: make_predictor(settings.method, settings.options), items)
    except Exception as exc:  # noqa: BLE001
        pair.backtest = [(None, describe_error(exc))]
        return
    pair.backtest = list(zip(records, forecasts))
    pair.backtest_predictor = predictors.get((pair.task, pair.family))


_LANE: dict = {}  # what a lane's worker process fits on (set by _lane_start; inherited by fork, never pickled)


def _lane_start(ladder, train, held, settings, items) -> None:
    _LANE.update(ladder=ladder, train=train, held=held, settings=settings, items=items)


def _lane_job(kind: str, task: str, family: str) -> bytes:
    """One pair's fit or backtest, sent back with cloudpickle (the laws' forms hold lambdas)."""
    try:
        import cloudpickle  # joblib >= 1.5 depends on it (scikit-learn -> joblib)
    except ImportError:  # older joblib ships it inside
        from joblib.externals import cloudpickle

    return cloudpickle.dumps(_lane_work(kind, task, family))


def _lane_work(kind: str, task: str, family: str) -> tuple[str, PairFit]:
    settings = _LANE["settings"]
    pair = PairFit(task, family)
    items = task_items(_LANE["items"], task, settings.loss_task, get_method(settings.method).reads_all_tasks)
    if kind == "fit":
        fit_pair(pair, _LANE["ladder"], settings, items)
    else:
        backtest_pair(pair, _LANE["train"], _LANE["held"], settings, items)
    return kind, pair


def merge(target: PairFit, kind: str, done: PairFit) -> None:
    if kind == "fit":
        target.predictor, target.forecasts, target.error = done.predictor, done.forecasts, done.error
    else:
        target.backtest, target.backtest_predictor = done.backtest, done.backtest_predictor


def run_pairs(pairs: dict, ladder, train, held, settings: Settings, items, jobs: int) -> None:
    """Every pair's full-ladder fit and its held-out backtest. With jobs >= 2 they run in two lanes, one
    worker process each: all full-ladder fits in one, all backtests in the other, so each lane computes the
    ladder-wide ranking of ``--method auto`` (memoised per process) once."""
    from capscale.progress import task_bar

    kinds = ("fit", "backtest")
    jobs_list = [(kind, task, family) for kind in kinds for task, family in pairs]
    if jobs <= 1 or not pairs:
        _lane_start(ladder, train, held, settings, items)
        with task_bar(len(jobs_list), "report: fits and held-out backtests", enabled=settings.progress) as bar:
            for job in jobs_list:
                kind, done = _lane_work(*job)
                merge(pairs[(done.task, done.family)], kind, done)
                bar.task_done()
        _LANE.clear()
        return
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    lanes = {kind: ProcessPoolExecutor(1, mp_context=context, initializer=_lane_start,
                                       initargs=(ladder, train, held, settings, items)) for kind in kinds}
    try:
        futures = [lanes[kind].submit(_lane_job, kind, task, family) for kind, task, family in jobs_list]
        with task_bar(len(futures), "report: fits and held-out backtests", enabled=settings.progress,
                      nested=False) as bar:
            for future in as_completed(futures):
                kind, done = pickle.loads(future.result())
                merge(pairs[(done.task, done.family)], kind, done)
                bar.task_done()
    finally:
        for lane in lanes.values():
            lane.shutdown(cancel_futures=True)


def in_ladder_error(predictor) -> float | None:
    """Mean |error| of the chosen method on the ladder's own rolling origins."""
    if predictor is None:
        return None
    if hasattr(predictor, "internal_errors_"):
        value = predictor.internal_errors_.get(predictor.method_used_)
        return None if value is None or not np.isfinite(value) else float(value)
    calibration = getattr(predictor, "calibration_", None)
    return None if calibration is None or calibration.error is None else float(calibration.error)


def method_of(predictor) -> tuple[str, str]:
    """(method, form) that made the fit; auto names the candidate it chose."""
    chosen = getattr(predictor, "chosen_", predictor)
    method = getattr(predictor, "method_used_", None) or getattr(chosen, "method_name", "")
    return method, str(getattr(chosen, "form_used_", ""))


def forecast_dict(forecast) -> dict:
    return {"value": jsonable(forecast.value), "lower": jsonable(forecast.lower),
            "upper": jsonable(forecast.upper), "level": forecast.level,
            "intervals": {str(k): [jsonable(lo), jsonable(hi)] for k, (lo, hi) in forecast.intervals.items()},
            "loss": jsonable(forecast.loss), "loss_lower": jsonable(forecast.loss_lower),
            "loss_upper": jsonable(forecast.loss_upper), "method_used": forecast.method_used,
            "form_used": forecast.form_used, "n_points": forecast.n_points, "warnings": list(forecast.warnings)}


def backtest_summary(pair: PairFit) -> dict | None:
    """The held-out runs of this (task, family): forecasts, truths, errors, whether inside the interval."""
    if not pair.backtest:
        return None
    rows = []
    for record, forecast in pair.backtest:
        if record is None:
            return {"error": forecast, "runs": []}
        inside = None
        if np.isfinite(record.predicted):
            inside = bool(record.lower <= record.actual <= record.upper)
        rows.append({"model": record.model, "predicted": jsonable(record.predicted),
                     "lower": jsonable(record.lower), "upper": jsonable(record.upper),
                     "actual": jsonable(record.actual), "abs_error": jsonable(record.abs_error),
                     "inside": inside, "method_used": record.method_used, "reason": record.reason})
    scored = [r for r in rows if r["inside"] is not None]
    return {"runs": rows, "n": len(scored), "inside": sum(r["inside"] for r in scored),
            "mae": float(np.mean([r["abs_error"] for r in scored])) if scored else None, "error": ""}


def hidden_summary(result) -> tuple[bool | None, str]:
    hp = None if result is None else result.hidden_progress
    if not hp:
        return None, ""
    parts = [f"{m} {v['first']:.3g} -> {v['last']:.3g}" + ("" if v["p_value"] is None else f" (p={v['p_value']:.2g})")
             for m, v in hp["metrics"].items()]
    return hp["hidden_progress"], f"{hp['region']}: " + "; ".join(parts) if parts else hp.get("note", "")


def triage_row(pair: PairFit, ladder: pd.DataFrame, settings: Settings, trend) -> dict:
    """One row of the triage table (module triage for the verdict's rule)."""
    rows = ladder[(ladder["family"] == pair.family) & (ladder["task"] == pair.task)
                  & (ladder["metric"] == settings.metric)]
    finals = final_checkpoints(rows)
    noise, noise_source = triage.checkpoint_noise(rows)
    spread = triage.spread(finals["value"])
    error = in_ladder_error(pair.predictor)
    hidden, hidden_detail = hidden_summary(trend)
    relative_noise, relative_error = triage.ratio(noise, spread), triage.ratio(error, spread)
    label = None if trend is None else trend.label
    verdict, why = triage.verdict(label, hidden, relative_noise, relative_error)
    method, form = method_of(pair.predictor) if pair.predictor is not None else ("", "")
    backtest = backtest_summary(pair)
    if pair.error:
        verdict, why = "failed", "no fit: see the method column"
    return {"task": pair.task, "family": pair.family, "n_runs": int(len(finals)),
            "last": jsonable(finals.sort_values("flops")["value"].iloc[-1]) if len(finals) else None,
            "spread": jsonable(spread), "noise": jsonable(noise), "noise_source": noise_source,
            "relative_noise": relative_noise, "method": method, "form": form, "in_ladder_error": error,
            "relative_error": relative_error,
            "candidates": {k: jsonable(v) for k, v in getattr(pair.predictor, "internal_errors_", {}).items()},
            "backtest": backtest, "trend": label, "trend_p": None if trend is None else jsonable(trend.p_value),
            "trend_noise": None if trend is None else trend.noise_source,
            "hidden_progress": hidden, "hidden_detail": hidden_detail, "verdict": verdict, "why": why,
            "error": pair.error}


def forecast_rows(pair: PairFit, targets: list[dict]) -> list[dict]:
    out = []
    for target, forecast in zip(targets, pair.forecasts or [None] * len(targets)):
        row = {"task": pair.task, "family": pair.family, "target": target["label"]}
        if forecast is None or isinstance(forecast, str):
            row["error"] = forecast or pair.error or "no fit"
        else:
            row.update(forecast_dict(forecast), error="")
        out.append(row)
    return out


def coverage(triage_rows: list[dict]) -> dict:
    runs = [r for row in triage_rows if row["backtest"] for r in row["backtest"]["runs"] if r["inside"] is not None]
    return {"n": len(runs), "inside": int(sum(r["inside"] for r in runs)),
            "mae": float(np.mean([r["abs_error"] for r in runs])) if runs else None}


def fingerprint_file(path: Path) -> str:
    """sha256 of the ladder file, or of every file of a results store (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() \
        else [path]
    for p in files:
        digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


def provenance(source: str, settings: Settings, argv: list[str] | None) -> dict:
    import matplotlib
    import scipy

    from capscale import __version__

    options = settings.options
    return {"capscale": __version__, "command": shlex.join(["capscale", *argv]) if argv is not None else "",
            "ladder": source, "ladder_sha256": fingerprint_file(Path(source)),
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seeds": {"fits": options.seed, "trends": options.seed},
            "settings": {"method": settings.method, "metric": settings.metric, "loss": settings.loss,
                         "loss_task": settings.loss_task, "level": options.level, "n_boot": options.n_boot,
                         "n_origins": options.n_origins, "calibrate": options.calibrate, "n_sim": settings.n_sim},
            "python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "scipy": scipy.__version__, "matplotlib": matplotlib.__version__, "platform": sys.platform}


def family_colours(families) -> dict:
    return {family: f"C{i % 10}" for i, family in enumerate(sorted(families))}


def run_trends(ladder, tasks, settings: Settings, trend_items):
    from capscale.trends import analyse_ladder

    try:
        return analyse_ladder(ladder, settings.metric, items=trend_items, tasks=tasks, n_sim=settings.n_sim,
                              seed=settings.options.seed, progress=settings.progress), ""
    except Exception as exc:  # noqa: BLE001 - the page still shows the fits
        return None, describe_error(exc)


def collect(source: str, ladder: pd.DataFrame, settings: Settings, items=None, trend_items=None,
            argv: list[str] | None = None, jobs: int = 2) -> Collected:
    """Run everything and return the report dict with the fitted objects the figures need."""
    ladder, notes = usable_rows(ladder)
    tasks = select_tasks(ladder, settings.metric, settings.tasks)
    if settings.tasks:  # auto ranks its candidates over the ladder's tasks: here, the tasks on the page
        keep = set(tasks) | ({settings.loss_task} if settings.loss_task else set())
        ladder = ladder[ladder["task"].isin(keep)].reset_index(drop=True)
        items = None if items is None else items[items["task"].isin(keep)]
        notes.append(f"only the {len(tasks)} tasks asked for (--tasks) are fitted; --method auto ranks its "
                     "candidates over them")
    families = sorted(ladder.loc[ladder["metric"] == settings.metric, "family"].unique())
    finals = final_checkpoints(ladder[ladder["metric"] == settings.metric])
    if not settings.targets:
        settings.targets = [dict(default_target(finals), default=True)]
    for target in settings.targets:
        target.setdefault("label", target_label(target))
    pairs = {(t, f): PairFit(t, f) for t in tasks for f in families
             if ((ladder["task"] == t) & (ladder["family"] == f) & (ladder["metric"] == settings.metric)).any()}
    train, held, held_models = largest_rung_split(ladder, settings.metric)
    run_pairs(pairs, ladder, train, held, settings, items, jobs)
    trends, trend_error = run_trends(ladder, tasks, settings, trend_items)
    by_curve = {(r.task, r.family): r for r in (trends.results if trends else [])}
    triage_rows = [triage_row(p, ladder, settings, by_curve.get(key)) for key, p in pairs.items()]
    report = {
        "title": f"capscale report: {Path(source).name}",
        "ladder": {"source": source, "metric": settings.metric, "families": families, "tasks": tasks,
                   "n_rows": int(len(ladder)), "runs": run_table(ladder[ladder["metric"] == settings.metric]),
                   "notes": notes, "held_out": held_models},
        "targets": [{k: jsonable(v) for k, v in t.items()} for t in settings.targets],
        "triage": triage_rows,
        "coverage": {**coverage(triage_rows), "level": settings.options.level},
        "forecasts": [row for p in pairs.values() for row in forecast_rows(p, settings.targets)],
        "trends": {"error": trend_error, "notes": list(trends.notes) if trends else [],
                   "skipped": [list(s) for s in trends.skipped] if trends else []},
        "decisions": None,
        "figures": {},
        "provenance": provenance(source, settings, argv),
    }
    return Collected(report, ladder, pairs, trends, trend_items, family_colours(families))
