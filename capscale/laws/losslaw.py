"""Loss laws as predictors: scale -> a loss, and loss -> loss (Brandfonbrener et al. 2024).

- LossLawPredictor: a scale law for one loss (a validation loss, or a task's bpb_correct) on each
  run's final checkpoint: two-step's step-1 forms (chinchilla, chinchilla_shared, power_compute,
  power_law), chosen by rolling-origin backtests inside the ladder like two-step's step 1. Alone it
  forecasts a loss; ``capscale decide`` ranks recipes by it ("extrapolated bpb").
- LossToLossPredictor: a scale law for a *source* loss (e.g. the validation loss, which every run
  has and which is smooth) composed with the shifted power law ``loss_to_loss`` that maps the source
  loss to the task's loss (L1 = K (L0 - E0)^kappa + E1, fitted on every checkpoint that has both).
  For an accuracy it goes one step further with two-step's own step 2 (task loss -> metric): two-step
  whose step 1 is "predict the task loss from the validation loss". It composes the existing
  predictors instead of changing TwoStepPredictor.

Both draw predictive samples like every predictor (``predictive_draws``): the same seeded bootstrap
over runs (and items, where per-item data are given) refits every step, plus one resampled
residual; ``capscale.laws.base`` makes calibrated intervals of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.base import RUN_KEYS, ItemResampler, RunColumns, dof_warning, ladder_extent, run_keys
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.fitting import FitError, FitResult, fit_form, refit_many
from capscale.laws.forms import LOSS_TO_LOSS, shifted_power_params
from capscale.laws.predictors import TaskPredictor
from capscale.laws.step1 import fit_step1, predict_loss, step1_free, step1_label
from capscale.laws.twostep import TwoStepPredictor
from capscale.progress import report_refits
from capscale.schema import metric_kind, target_scale


def require_loss(metric: str, what: str) -> None:
    kind = metric_kind(metric)
    if kind.higher_is_better or kind.probability:
        raise CapscaleError(f"{what} forecasts a loss (lower is better, unbounded), not {metric!r}")


def kept_resamples(counts: np.ndarray, least: int) -> np.ndarray:
    """Indices of the bootstrap resamples with enough distinct runs to determine ``least`` parameters."""
    return np.flatnonzero((counts > 0).sum(1) >= least)


def without_interpolation(name: str, n_runs: int, may_change: bool) -> str:
    """A law with as many parameters as runs passes through every run: its bootstrap has no spread and
    its interval means nothing. Under "auto" the 2-parameter power law takes over; a form the user
    named is an error."""
    if n_runs > step1_free(name):
        return name
    if may_change and n_runs > step1_free("power_law"):
        return "power_law"
    raise CapscaleError(f"{n_runs} runs cannot determine the loss law {name!r} with a point to spare")


class LossLawPredictor(TaskPredictor):
    """scale -> loss on each run's final checkpoint (step 1 of two-step, as a predictor of its own).

    ``step1``: a form of STEP1_FORMS, "auto" (chosen by rolling origin inside the ladder) or "average" (the
    default: the eligible forms' forecasts averaged with equal weights, which beat the rolling-origin
    choice on every public loss ladder: results/backtests/step1_average.md; as "auto" on <= 3 sizes).
    Fitted: ``fit_`` (FitResult), ``boot_fits_`` and ``boot_ids_`` (which bootstrap resample each
    refit came from, so another predictor with the same seed and runs can pair its draws with these)."""

    method_name = "loss-law"

    def __init__(self, step1: str = "average", level=0.9, n_boot=1000, seed=0, calibrate=True, n_origins=3,
                 growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.step1 = step1

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "loss", loss=None, loss_task=None,
            items: pd.DataFrame | None = None) -> "LossLawPredictor":
        """``loss`` and ``loss_task`` are accepted for the common signature and ignored: the metric is the loss."""
        require_loss(metric, "loss-law")
        self.task_, self.metric_, self.loss_metric_ = task, metric, metric
        finals = final_checkpoints(metric_series(ladder, task, metric))
        y = finals["value"].to_numpy(float)
        chooser = TwoStepPredictor(step1=self.step1, n_origins=self.n_origins)
        self.step1_form_ = without_interpolation(chooser.choose_step1(finals, y), len(finals),
                                                 self.step1 in ("auto", "average"))
        self.step1_errors_ = getattr(chooser, "step1_errors_", {})
        self.data_, self.n_runs_, self.extent_ = finals, len(finals), ladder_extent(finals)
        self.chance_ = None
        self.fit_ = fit_step1(self.step1_form_, finals, y)
        self.form_used_ = step1_label(self.step1_form_, self.fit_)
        inputs = {k: finals[k].to_numpy(float) for k in self.fit_.form.inputs}
        self.noise_ = y - self.fit_.predict(**inputs)
        self.fit_warnings_ = dof_warning(self.fit_, "the loss law")
        runs = run_keys(finals)
        columns = RunColumns(finals, runs)
        resampler = ItemResampler.from_items(items, finals.get("checkpoint", pd.Series([np.nan])),
                                             {"value": (task, metric)})
        self.items_resampled_ = resampler is not None
        counts, redrawn = self._resamples(len(runs), resampler, self.fit_.n_free)
        keep = kept_resamples(counts, self.fit_.n_free)
        targets = y if resampler is None else np.stack([redrawn[b]["value"] for b in keep]).reshape(len(keep), -1)
        refits = refit_many(self.fit_, inputs, targets, counts[keep][:, columns.row_runs()]) if len(keep) else []
        self.boot_ids_ = np.array([b for b, f in zip(keep, refits) if f is not None], dtype=int)
        self.boot_fits_ = [f for f in refits if f is not None]
        self.n_boot_failed_ = self.n_boot - len(self.boot_fits_)
        report_refits(self.n_boot)
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def boot_losses(self, target: dict) -> np.ndarray:
        return np.array([predict_loss(target, f) for f in self.boot_fits_])

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        target = target_scale(params, tokens, flops)
        centre = predict_loss(target, self.fit_)
        boot = self.boot_losses(target)
        return centre, boot + self._residual_draws(np.asarray(self.noise_, float), len(boot))


def paired_rows(ladder: pd.DataFrame, source: tuple[str, str], target: tuple[str, str], finals_only: bool):
    """Checkpoints that have both losses: columns family, model, step, params, tokens, flops, source,
    target (and checkpoint where the table has it); only each run's last one with ``finals_only``."""
    a = metric_series(ladder, *source)
    b = metric_series(ladder, *target)
    keys = RUN_KEYS + ["step"]
    extra = ["checkpoint"] if "checkpoint" in b else []
    joined = b[keys + ["params", "tokens", "flops", "value"] + extra].rename(columns={"value": "target"}).merge(
        a[keys + ["value"]].rename(columns={"value": "source"}), on=keys, how="inner")
    if joined.empty:
        raise CapscaleError(f"no checkpoint has both {source[0]!r} {source[1]!r} and {target[0]!r} {target[1]!r}")
    return final_checkpoints(joined) if finals_only else joined.reset_index(drop=True)


RAW = {"loss": (0.0, 1.0)}  # fit the map in the losses' own units, so fixed irreducible losses are physical


def fit_loss_to_loss(source: np.ndarray, target: np.ndarray, e0: float | None = None,
                     e1: float | None = None) -> FitResult:
    """The shifted power law from ``source`` to ``target`` losses. With ``e0`` / ``e1`` (the two losses'
    irreducible parts, from their own scale laws) only K and kappa are fitted, as Brandfonbrener et al.
    do: left free, E0 drifts to the smallest source loss and the map cannot extrapolate below it."""
    source, target = np.asarray(source, float), np.asarray(target, float)
    if e0 is None and e1 is None:
        return fit_form(LOSS_TO_LOSS, {"loss": source}, target)
    fixed = {k: float(v) for k, v in (("e0", e0), ("E1", e1)) if v is not None}
    if "e0" in fixed and np.any(source <= fixed["e0"]):
        raise CapscaleError(f"a source loss lies below the source law's irreducible loss {fixed['e0']:.4g}")
    gap = source - fixed.get("e0", 0.0)
    lift = np.clip(target - fixed.get("E1", 0.0), 1e-6, None)
    slope = float(np.polyfit(np.log(gap), np.log(lift), 1)[0]) if len(np.unique(gap)) > 1 else 1.0
    starts = [{"a": float(np.median(np.log(lift) - kappa * np.log(gap))), "kappa": kappa, "e0": 0.0,
               "E1": float(np.min(target)) * 0.5} for kappa in (float(np.clip(slope, 0.05, 9.0)), 1.0)]
    return fit_form(LOSS_TO_LOSS, {"loss": source}, target, fixed=fixed, starts=starts, reference=RAW)


class LossToLossPredictor(TaskPredictor):
    """scale -> source loss -> the task's loss [-> metric]: a scale law for the source loss (a
    LossLawPredictor), the shifted power law between the two losses, and for an accuracy two-step's
    step 2 (a TwoStepPredictor fitted on the same ladder supplies it and its bootstrap refits).

    ``source_task`` / ``source_metric``: the source loss (``fit(..., loss_task=...)`` overrides the task,
    as for two-step's "take the loss from this task"). ``intermediate``: fit the loss-to-loss map on
    every checkpoint that has both losses (True) or on final checkpoints only. ``step1``: the source
    law's form; ``irreducible``: "laws" fixes the map's E0 and E1 at the irreducible losses of the
    two losses' own scale laws (Brandfonbrener et al.; only K and kappa are fitted, each bootstrap refit
    keeps them), "fit" frees all four; ``step2`` / ``ceiling``: two-step's, for an accuracy."""

    method_name = "loss-to-loss"

    def __init__(self, source_task: str | None = None, source_metric: str = "loss", step1: str = "auto",
                 irreducible: str = "laws", intermediate: bool = True, step2: str = "sigmoid_loss",
                 ceiling: str = "auto", level=0.9, n_boot=1000, seed=0, calibrate=True, n_origins=3,
                 growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.irreducible = irreducible
        self.source_task = source_task
        self.source_metric = source_metric
        self.step1 = step1
        self.intermediate = intermediate
        self.step2 = step2
        self.ceiling = ceiling

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "loss", loss: str | None = "bpb_correct",
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "LossToLossPredictor":
        """``metric``: a loss of ``task`` (forecast through the map), or an accuracy-like metric, which
        then goes through the task's own loss ``loss`` (e.g. bpb_correct) and two-step's step 2."""
        source = loss_task or self.source_task
        if not source:
            raise CapscaleError("loss-to-loss needs the source loss: give source_task (or --loss-task)")
        self.task_, self.metric_, self.source_ = task, metric, source
        kind = metric_kind(metric)
        to_metric = kind.higher_is_better or kind.probability
        self.loss_metric_ = loss if to_metric else metric
        if to_metric and not loss:
            raise CapscaleError(f"loss-to-loss forecasts {metric!r} through the task's own loss: give loss")
        require_loss(self.source_metric, "the source of loss-to-loss")
        common = dict(level=self.level, n_boot=self.n_boot, seed=self.seed, calibrate=False, n_origins=self.n_origins)
        self.source_law_ = LossLawPredictor(step1=self.step1, **common).fit(ladder, source, self.source_metric,
                                                                            items=items)
        pairs = paired_rows(ladder, (source, self.source_metric), (task, self.loss_metric_), not self.intermediate)
        self.map_data_ = pairs
        e0 = e1 = None
        if self.irreducible == "laws":  # E0, E1: the irreducible losses of the two losses' own scale laws
            target_law = LossLawPredictor(step1=self.step1, n_boot=0, calibrate=False, n_origins=self.n_origins)
            target_law.fit(ladder, task, self.loss_metric_)
            e0, e1 = self.source_law_.fit_.params.get("E", 0.0), target_law.fit_.params.get("E", 0.0)
            self.target_law_form_ = target_law.form_used_
        elif self.irreducible != "fit":
            raise CapscaleError(f"irreducible must be 'laws' or 'fit', got {self.irreducible!r}")
        self.map_ = fit_loss_to_loss(pairs["source"], pairs["target"], e0, e1)
        self.map_params_ = shifted_power_params(self.map_.params, self.map_.reference)
        self.map_noise_ = pairs["target"].to_numpy(float) - self.map_.predict(loss=pairs["source"].to_numpy(float))
        self._bootstrap_map(pairs, task, source, items)
        self.step2_ = None
        if to_metric:
            self.step2_ = TwoStepPredictor(step2=self.step2, ceiling=self.ceiling, **common).fit(
                ladder, task, metric, loss, items=items)
        self.data_ = final_checkpoints(pairs)
        self.n_runs_ = len(self.data_)
        self.extent_ = ladder_extent(self.data_)
        self.chance_ = getattr(self.step2_, "chance_", None)
        step2 = f" -> {self.step2_.fit_[1].form.name}" if self.step2_ is not None else ""
        self.form_used_ = f"{self.source_law_.form_used_} ({source}) -> loss_to_loss{step2}"
        self.fit_warnings_ = list(self.source_law_.fit_warnings_) + dof_warning(self.map_, "the loss-to-loss map")
        self.n_boot_failed_ = self.n_boot - len(self.boot_pairs_)
        self._calibrate(ladder, task, metric, loss, source, items)
        return self

    def _bootstrap_map(self, pairs: pd.DataFrame, task: str, source: str, items) -> None:
        """Refit the map on the same run resamples as the source law (same seed and runs: resample b
        draws the same runs for both), items redrawn where per-item data are given."""
        runs = run_keys(pairs)
        columns = RunColumns(pairs, runs)
        resampler = ItemResampler.from_items(items, pairs.get("checkpoint", pd.Series([np.nan])),
                                             {"source": (source, self.source_metric),
                                              "target": (task, self.loss_metric_)})
        counts, redrawn = self._resamples(len(runs), resampler, 2)
        keep = kept_resamples(counts, 2)
        if resampler is None:
            x, y = pairs["source"].to_numpy(float), pairs["target"].to_numpy(float)
        else:
            x = np.stack([redrawn[b]["source"] for b in keep]).reshape(len(keep), -1)
            y = np.stack([redrawn[b]["target"] for b in keep]).reshape(len(keep), -1)
        refits = refit_many(self.map_, {"loss": x}, y, counts[keep][:, columns.row_runs()]) if len(keep) else []
        maps = {int(b): f for b, f in zip(keep, refits) if f is not None}
        laws = dict(zip(self.source_law_.boot_ids_.tolist(), self.source_law_.boot_fits_))
        same_runs = len(run_keys(self.source_law_.data_)) == len(runs)
        if same_runs:
            ids = [b for b in laws if b in maps]
            self.boot_pairs_ = [(laws[b], maps[b]) for b in ids]
        else:  # different run sets: the resamples do not correspond; pair them in order
            self.boot_pairs_ = list(zip(self.source_law_.boot_fits_, maps.values()))
        report_refits(self.n_boot)

    @property
    def boot_fits_(self):
        return self.boot_pairs_

    def loss_draws(self, target: dict) -> tuple[float, np.ndarray]:
        """The task loss at the target: the map of the source law's forecast, and its bootstrap draws."""
        centre = float(self.map_.predict(loss=np.array([predict_loss(target, self.source_law_.fit_)]))[0])
        boot = np.array([float(m.predict(loss=np.array([predict_loss(target, law)]))[0])
                         for law, m in self.boot_pairs_])
        return centre, boot

    def predictive_draws(self, params=None, tokens=None, flops=None, with_loss: bool = False):
        target = target_scale(params, tokens, flops)
        loss, boot_loss = self.loss_draws(target)
        if self.step2_ is None:
            value, draws = loss, boot_loss + self._residual_draws(np.asarray(self.map_noise_, float), len(boot_loss))
        else:
            step2 = self.step2_
            value = float(step2.step2_curve([loss])[0])
            fits = [b2 for _, b2 in step2.boot_fits_][: len(boot_loss)]  # two-step's refits, in resample order
            boot = np.array([float(step2.step2_curve([l], f)[0]) for l, f in zip(boot_loss, fits)])
            draws = boot + self._residual_draws(np.asarray(step2.noise_, float), len(boot))
            boot_loss = boot_loss[: len(boot)]
        return (value, draws, loss, boot_loss) if with_loss else (value, draws)

    def predict(self, params=None, tokens=None, flops=None, level: float | None = None):
        target = target_scale(params, tokens, flops)
        value, draws, loss, boot_loss = self.predictive_draws(**target, with_loss=True)
        fields = self._forecast_fields(target, level)
        if self.step2_ is None:
            return self._forecast(value, draws, target, level, **fields)
        lo, hi = self._loss_interval(loss, boot_loss, self.level if level is None else level)
        return self._forecast(value, draws, target, level, loss=loss, loss_lower=lo, loss_upper=hi, **fields)


def loss_law_fit(finals: pd.DataFrame, step1: str, n_origins: int = 3) -> tuple[str, FitResult]:
    """(form name, fit) of the scale law of a loss on these final checkpoints (no bootstrap): the
    chooser of two-step's step 1, for callers that need only the curve (capscale.laws.transfer)."""
    y = finals["value"].to_numpy(float)
    name = TwoStepPredictor(step1=step1, n_origins=n_origins).choose_step1(finals, y)
    try:
        return name, fit_step1(name, finals, y)
    except FitError as e:
        raise CapscaleError(f"the scale law ({name}) does not fit: {e}") from e


__all__ = ["LossLawPredictor", "LossToLossPredictor", "fit_loss_to_loss", "loss_law_fit", "paired_rows"]
