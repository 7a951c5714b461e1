"""What every task-level predictor shares: the forecast record, the bootstrap, intervals, calibration.

A predictor turns a target into a point forecast and *predictive draws* (bootstrap refits over
ladder runs, and benchmark items where known, plus one resampled residual each: what a new
measurement of the target could read). Intervals come from those draws in one way for every
method (``BasePredictor._forecast``):

- centred on the point forecast: the draws' deviations from their median are added to the point,
  so the forecast always lies inside its own interval (a percentile interval of skewed draws need
  not contain the full-data fit);
- widened by the ladder's own rolling-origin backtests (``capscale.laws.calibration``): the
  interval is stretched until it covers the ladder's held-out points at the stated level, and it
  grows with the extrapolation distance;
- clipped to the metric's range (probabilities to [0, 1]).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from capscale.laws.fitting import FitError, FitResult, one_blas_thread
from capscale.progress import report_refits
from capscale.schema import metric_kind

RUN_KEYS = ["family", "model"]
EXTRAPOLATION_WARN_FACTOR = 10.0
STANDARD_LEVELS = (0.5, 0.8, 0.9)
REPORT_EVERY = 50  # bootstrap refits per progress report


def bound(metric: str, values):
    """Clip forecasts and draws to the metric's range: probabilities to [0, 1], brier to [0, 2]."""
    kind = metric_kind(metric)
    if kind.probability:
        return np.clip(values, 0.0, 1.0)
    if np.isfinite(kind.upper):
        return np.clip(values, 0.0, kind.upper)
    return values


def dof_warning(fit: FitResult, what: str) -> list[str]:
    free = fit.n_free
    if fit.n_points <= free:
        return [f"{what} ({fit.form.name}) has {fit.n_points} points for {free} free parameters: "
                "it interpolates and its interval means little"]
    return []


REDRAWS = 100  # tries for a resample with enough distinct runs before it counts as failed


def draw_runs(rng: np.random.Generator, n_runs: int, min_distinct: int) -> np.ndarray:
    """One bootstrap resample of run indices with at least ``min_distinct`` distinct runs: a
    resample with fewer cannot determine the fit, and on a ladder of one run per size (a 6-run
    ladder and a 5-parameter law) three resamples in four have fewer, so rejecting them wasted most
    of the bootstrap. Redrawn (the bootstrap conditional on an identified fit) up to ``REDRAWS``
    times; the last draw is returned if none has enough (the caller counts it as failed)."""
    sample = rng.integers(0, n_runs, n_runs)
    if min_distinct > n_runs:
        return sample
    for _ in range(REDRAWS):
        if len(np.unique(sample)) >= min_distinct:
            break
        sample = rng.integers(0, n_runs, n_runs)
    return sample


@dataclass
class Forecast:
    value: float
    lower: float
    upper: float
    level: float
    loss: float | None = None
    loss_lower: float | None = None
    loss_upper: float | None = None
    n_boot: int = 0
    n_boot_failed: int = 0
    warnings: list[str] = field(default_factory=list)
    intervals: dict = field(default_factory=dict)  # level -> (lower, upper), the standard levels and ``level``
    form_used: str = ""  # the functional form(s) behind the point forecast, e.g. "chinchilla -> sigmoid_loss"
    n_points: int = 0  # runs the scale law was fitted on
    method_used: str = ""  # the method that made the forecast (auto says which candidate won)
    internal_error: float | None = None  # mean |error| of the ladder's own rolling-origin backtests
    widening: float | None = None  # the misspecification half-width the calibration added at ``level``

    def interval(self, level: float) -> tuple[float, float]:
        return self.intervals.get(level, (np.nan, np.nan))


def chance_level(points: pd.DataFrame) -> float | None:
    if "chance" not in points or points["chance"].isna().all():
        return None
    return float(points["chance"].dropna().median())


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1.0 - alpha))


def deviation_quantiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    """How far below and above their median the draws reach at ``level`` (<= 0 and >= 0)."""
    if len(draws) == 0:
        return np.nan, np.nan
    centre = float(np.median(draws))
    lo, hi = percentile_interval(draws, level)
    return min(lo - centre, 0.0), max(hi - centre, 0.0)


def ladder_extent(points: pd.DataFrame) -> dict[str, float]:
    """Largest params / tokens / flops of the fitted runs: what a forecast extrapolates from."""
    return {k: float(points[k].max()) for k in ("flops", "params", "tokens") if k in points and points[k].notna().any()}


def extrapolation_distance(extent: dict, target: dict) -> float:
    """ln(target / largest of the ladder) in compute (params where compute is unknown), >= 0."""
    for key in ("flops", "params"):
        if extent.get(key) and target.get(key) is not None:
            return max(float(np.log(float(target[key]) / extent[key])), 0.0)
    return 0.0


def extrapolation_warning(extent: dict, target: dict) -> list[str]:
    out = []
    for key, largest in extent.items():
        if target.get(key) is not None:
            factor = float(target[key]) / largest
            if factor > EXTRAPOLATION_WARN_FACTOR:
                out.append(f"target {key} is {factor:.0f}x the largest in the ladder: far extrapolation")
    return out


def boot_warning(failed: int, total: int) -> list[str]:
    if total and failed / total > 0.2:
        return [f"{failed} of {total} bootstrap refits failed; the interval rests on the rest"]
    return []


def run_keys(points: pd.DataFrame) -> list[tuple]:
    return list(points[RUN_KEYS].drop_duplicates().itertuples(index=False, name=None))


class RunColumns:
    """Row positions of each run, so a bootstrap resample of runs is a numpy gather
    (a pandas concat per resample would cost more than the refit itself)."""

    def __init__(self, points: pd.DataFrame, runs: list[tuple]):
        keys = list(points[RUN_KEYS].itertuples(index=False, name=None))
        self.by_run = [np.array([i for i, k in enumerate(keys) if k == r], dtype=int) for r in runs]

    def row_runs(self) -> np.ndarray:
        """The run index of every row (the inverse of ``by_run``)."""
        out = np.empty(sum(len(r) for r in self.by_run), dtype=int)
        for k, rows in enumerate(self.by_run):
            out[rows] = k
        return out

    def take(self, base: dict[str, np.ndarray], run_indices=None) -> dict[str, np.ndarray]:
        if run_indices is None:
            return base
        rows = np.concatenate([self.by_run[i] for i in run_indices])
        return {c: v[rows] for c, v in base.items()}


class ItemResampler:
    """Per-item values behind each ladder row, so a bootstrap can resample the benchmark's items
    too (the same items for every checkpoint: a draw shifts the whole ladder coherently)."""

    def __init__(self, matrices: dict[str, np.ndarray], groups: dict[str, str]):
        self.matrices = matrices  # column -> [n_rows, n_items] item values per ladder row
        self.groups = groups  # column -> task whose items it averages (same task = same draw)

    @classmethod
    def from_items(cls, items: pd.DataFrame | None, checkpoints: pd.Series, columns: dict[str, tuple[str, str]]):
        """``columns``: name -> (task, per-item metric). None when items are absent or incomplete."""
        if items is None or checkpoints.isna().any():
            return None
        matrices, groups = {}, {}
        for name, (task, metric) in columns.items():
            rows = items[items["task"] == task]
            if rows.empty or metric not in rows:
                return None
            table = rows.pivot_table(index="checkpoint", columns="item", values=metric, aggfunc="first")
            table = table.reindex(checkpoints.to_numpy())
            if table.isna().to_numpy().any():
                return None
            matrices[name], groups[name] = table.to_numpy(float), task
        return cls(matrices, groups)

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        weights = {}
        for task in dict.fromkeys(self.groups.values()):
            n = next(m.shape[1] for c, m in self.matrices.items() if self.groups[c] == task)
            weights[task] = rng.multinomial(n, np.full(n, 1.0 / n)) / n
        return {c: m @ weights[self.groups[c]] for c, m in self.matrices.items()}


class BasePredictor:
    """Shared machinery: hyper-parameters (scikit-learn's get_params / clone), the seeded bootstrap,
    residual draws, and the interval of every forecast (centred, calibrated, clipped)."""

    def __init__(self, level: float = 0.9, n_boot: int = 1000, seed: int = 0):
        self.level = level
        self.n_boot = n_boot
        self.seed = seed

    # --- hyper-parameters ---------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self) -> dict:
        return {n: getattr(self, n) for n in self._param_names()}

    def clone(self, **changes) -> "BasePredictor":
        """An unfitted copy with the same hyper-parameters, some changed (scikit-learn's clone)."""
        params = copy.deepcopy(self.get_params())
        params.update(changes)
        return type(self)(**params)

    # --- bootstrap ------------------------------------------------------------------------
    def _bootstrap(self, fit_once, n_runs: int, min_distinct: int, items: "ItemResampler | None" = None):
        """Refit on ``n_boot`` resamples of the runs (with replacement) and, with per-item data,
        of the benchmark items; a resample with fewer distinct runs than the free parameters it
        must determine counts as failed, like a refit that does not converge: such a "fit" only
        interpolates. Refits are reported in batches to the active progress counter."""
        rng = np.random.default_rng(self.seed)
        fits, failed = [], 0
        with one_blas_thread():
            for b in range(self.n_boot):
                sample = draw_runs(rng, n_runs, min_distinct)
                redrawn = items.draw(rng) if items is not None else None
                if (b + 1) % REPORT_EVERY == 0:
                    report_refits(REPORT_EVERY)
                if len(np.unique(sample)) < min_distinct:
                    failed += 1
                    continue
                try:
                    fits.append(fit_once(sample, redrawn))
                except FitError:
                    failed += 1
        report_refits(self.n_boot % REPORT_EVERY)
        return fits, failed

    def _resamples(self, n_runs: int, items: "ItemResampler | None" = None,
                   min_distinct: int = 0) -> tuple[np.ndarray, list]:
        """The seeded bootstrap draws: how often each run is drawn in each resample [n_boot, n_runs],
        and the redrawn item averages of each resample (None without per-item data). The same
        sequence as ``_bootstrap``, so batched and one-at-a-time refits see the same resamples."""
        rng = np.random.default_rng(self.seed)
        counts = np.zeros((self.n_boot, n_runs))
        redrawn = []
        for b in range(self.n_boot):
            counts[b] = np.bincount(draw_runs(rng, n_runs, min_distinct), minlength=n_runs)
            redrawn.append(items.draw(rng) if items is not None else None)
        return counts, redrawn

    def _residual_draws(self, residuals: np.ndarray, n: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        return rng.choice(residuals, size=n, replace=True) if len(residuals) else np.zeros(n)

    # --- intervals ------------------------------------------------------------------------
    def _levels(self, level: float | None) -> tuple[float, list[float]]:
        level = self.level if level is None else float(level)
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        return level, sorted(set(STANDARD_LEVELS) | {level})

    def _forecast(self, value: float, draws: np.ndarray, target: dict, level: float | None = None,
                  link=None, metric: str | None = None, calibrated: bool = True, **fields) -> Forecast:
        """The forecast record: intervals at ``level`` and the standard levels from the draws'
        deviations around their median, widened by the calibration and added to the point.
        ``link`` = (forward, inverse): the space in which deviations are additive (PassUntil's
        log(-log p)); linear by default. ``metric``: another metric than the fitted one (choice-mass
        forecasts p_correct and brier too; ``calibrated=False`` then, the calibration is the fitted one's)."""
        level, levels = self._levels(level)
        metric = metric or self.metric_
        forward, inverse = link if link is not None else (lambda v: v, lambda v: v)
        value = float(bound(metric, value))
        distance = extrapolation_distance(getattr(self, "extent_", {}), target)
        draws = np.asarray(draws, dtype=float)
        draws = draws[np.isfinite(forward(draws))] if len(draws) else draws
        calibration = getattr(self, "calibration_", None) if calibrated else None
        intervals = {}
        for lv in levels:
            lo, hi = deviation_quantiles(forward(draws), lv)
            if not np.isfinite(lo):
                lo, hi = 0.0, 0.0  # no draws (n_boot = 0): the calibration alone, if any
            if calibration is not None:  # in the link's space, where the held-out residuals were measured
                lo, hi = calibration.widen(lv, distance, lo, hi)
            with np.errstate(over="ignore", invalid="ignore"):
                ends = inverse(forward(value) + lo), inverse(forward(value) + hi)
            a, b = sorted(float(x) for x in bound(metric, np.array(ends)))
            intervals[lv] = (min(a, value), max(b, value))
        lower, upper = intervals[level]
        warnings_ = list(getattr(self, "fit_warnings_", [])) + extrapolation_warning(getattr(self, "extent_", {}), target) \
            + boot_warning(getattr(self, "n_boot_failed_", 0), self.n_boot)
        added = calibration.extra(level, distance) if calibration is not None else None
        return Forecast(value, lower, upper, level, n_boot=len(draws), n_boot_failed=getattr(self, "n_boot_failed_", 0),
                        warnings=warnings_, intervals=intervals, widening=added,
                        internal_error=getattr(getattr(self, "calibration_", None), "error", None), **fields)

    def _loss_interval(self, loss: float, draws: np.ndarray, level: float) -> tuple[float, float]:
        lo, hi = deviation_quantiles(np.asarray(draws, dtype=float), level)
        # deviations around the draws' median, added to the point: near a loss of 0 they can cross it
        return (max(loss + lo, 0.0), loss + hi) if np.isfinite(lo) else (np.nan, np.nan)
