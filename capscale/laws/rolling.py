"""Rolling-origin backtests inside a ladder: how well a method forecasts the ladder's own largest runs.

A ladder's runs are grouped by size (params; compute when every run has the same params). Origin k
holds out every run of the k largest sizes, fits on the smaller runs and forecasts each held-out
run at its last checkpoint; k = 1 is the usual "largest from the rest", k = 2, 3 go further back,
so the held-out points sit at several extrapolation distances. These internal errors choose
functional forms and methods (``--method auto``) and calibrate interval widths
(``capscale.laws.calibration``): the ladder tests the forecaster on the task it is asked to do,
only shorter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.base import RUN_KEYS, STANDARD_LEVELS, deviation_quantiles, extrapolation_distance, ladder_extent

SIZE_RTOL = 0.02  # sizes within 2% are one rung (nominal sizes differ in their last digits)
ORIGIN_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # levels at which held-out points are scored


@dataclass
class OriginPoint:
    """One held-out run of one origin: what was forecast, what happened, how far it extrapolated."""
    origin: int
    model: str
    actual: float
    predicted: float
    distance: float  # ln(compute / largest compute of the origin's fitting runs), >= 0
    deviations: dict = field(default_factory=dict)  # level -> (lo <= 0, hi >= 0) of the uncalibrated draws
    previous: float = float("nan")  # the family's largest fitting run's value (its carry-forward), where known

    @property
    def error(self) -> float:
        return abs(self.predicted - self.actual)


def size_keys(finals: pd.DataFrame) -> np.ndarray:
    """One size per run: params, or compute when params do not vary (a tokens-only ladder)."""
    for column in ("params", "flops", "tokens"):
        if column in finals and finals[column].notna().all() and finals[column].nunique() > 1:
            return finals[column].to_numpy(float)
    return np.arange(len(finals), dtype=float)


def rungs(sizes: np.ndarray) -> list[float]:
    """Distinct sizes, ascending, merging sizes within SIZE_RTOL of each other."""
    out: list[float] = []
    for s in np.sort(sizes):
        if not out or s > out[-1] * (1.0 + SIZE_RTOL):
            out.append(float(s))
    return out


def origin_splits(finals: pd.DataFrame, n_origins: int, min_train_sizes: int = 2) -> list[tuple[int, list, list]]:
    """[(k, fitting runs, held-out runs)] for k = 1..n_origins while the fitting runs still span
    ``min_train_sizes`` sizes (a scale law fitted on one size cannot extrapolate in size)."""
    sizes = size_keys(finals)
    keys = list(finals[RUN_KEYS].itertuples(index=False, name=None))
    steps = rungs(sizes)
    out = []
    for k in range(1, min(n_origins, len(steps) - min_train_sizes) + 1):
        cut = steps[-k] / (1.0 + SIZE_RTOL)
        train = [key for key, s in zip(keys, sizes) if s < cut]
        test = [key for key, s in zip(keys, sizes) if s >= cut]
        out.append((k, train, test))
    return out


def run_rows(ladder: pd.DataFrame, runs: list[tuple]) -> pd.DataFrame:
    """The rows of ``ladder`` that belong to the given (family, model) runs."""
    wanted = pd.MultiIndex.from_tuples(runs, names=RUN_KEYS)
    mask = pd.MultiIndex.from_frame(ladder[RUN_KEYS]).isin(wanted)
    out = ladder.loc[mask].reset_index(drop=True)
    out.attrs = dict(ladder.attrs)
    return out


def task_finals(ladder: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    return final_checkpoints(metric_series(ladder, task, metric))


def internal_backtest(predictor, ladder: pd.DataFrame, task: str, metric: str, loss=None, loss_task=None,
                      items=None, n_origins: int = 3) -> list[OriginPoint]:
    """Fit ``predictor`` (an unfitted configuration; it is cloned, never changed) at each origin and
    score its forecasts of the held-out runs. Origins where the method cannot fit are left out."""
    finals = task_finals(ladder, task, metric)
    points: list[OriginPoint] = []
    for k, train, test in origin_splits(finals, n_origins):
        train_ladder = run_rows(ladder, train)
        model = predictor.clone(calibrate=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(train_ladder, task, metric, loss, loss_task=loss_task, items=items)
        except (CapscaleError, ValueError, np.linalg.LinAlgError):
            continue
        extent = ladder_extent(task_finals(train_ladder, task, metric))
        for _, row in finals[finals[RUN_KEYS].apply(tuple, axis=1).isin(test)].iterrows():
            target = {"params": row["params"], "tokens": row["tokens"], "flops": row["flops"]}
            try:
                value, draws = model.predictive_draws(**target)
            except (CapscaleError, ValueError):
                continue
            if not np.isfinite(value):
                continue
            deviations = {lv: deviation_quantiles(draws, lv) for lv in ORIGIN_LEVELS}
            points.append(OriginPoint(k, str(row["model"]), float(row["value"]), float(value),
                                      extrapolation_distance(extent, model_target(target)), deviations))
    return points


def model_target(target: dict) -> dict:
    """NaN-free target dict for distance computations."""
    return {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)) for k, v in target.items()}


def mean_error(points: list[OriginPoint]) -> float:
    """Mean absolute error, each origin weighted equally (an origin with many runs is one test)."""
    if not points:
        return np.inf
    by_origin: dict[int, list[float]] = {}
    for p in points:
        by_origin.setdefault(p.origin, []).append(p.error)
    return float(np.mean([np.mean(v) for v in by_origin.values()]))


def choose(candidates: dict[str, list[OriginPoint]]) -> tuple[str | None, dict[str, float]]:
    """The candidate with the lowest internal error, compared on the origins every scored candidate
    could fit (a form that needs more runs is not judged on the short origins others manage); ties go
    to the earlier candidate. None when no candidate was scored anywhere."""
    scored = {name: pts for name, pts in candidates.items() if pts}
    if not scored:
        return None, {}
    origin_sets = {name: {p.origin for p in pts} for name, pts in scored.items()}
    common = set.intersection(*origin_sets.values())
    if common:
        errors = {n: mean_error([p for p in pts if p.origin in common]) for n, pts in scored.items()}
        eligible = list(scored)
    else:
        most = max(len(o) for o in origin_sets.values())
        errors = {n: mean_error(pts) for n, pts in scored.items()}
        eligible = [n for n in scored if len(origin_sets[n]) == most]
    order = list(candidates)
    return min(eligible, key=lambda n: (errors[n], order.index(n))), errors


__all__ = ["OriginPoint", "internal_backtest", "origin_splits", "mean_error", "choose", "STANDARD_LEVELS"]
