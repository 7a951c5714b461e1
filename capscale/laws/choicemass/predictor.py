"""ChoiceMassPredictor: fit the pooled margin model on a ladder's per-choice rows, forecast accuracy at a target."""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints
from capscale.laws.base import REPORT_EVERY, Forecast, RunColumns, run_keys
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.choicemass.diagnostics import item_correlations, observed_accuracy
from capscale.laws.choicemass.mixed import (NoiseStructure, Population, draw_margins, fit_pooling, fit_population,
                                            item_outcomes, noise_structure, pair_statistics, posterior)
from capscale.laws.choicemass.rows import (SCORE_OF, ChoiceTrajectories, MarginPairs, choice_scores,
                                           choice_trajectories, margin_pairs)
from capscale.laws.averaged import fit_from_dict
from capscale.laws.fitting import FitError, FitResult
from capscale.laws.forms import SCALE_INPUTS
from capscale.laws.predictors import TaskPredictor
from capscale.laws.step1 import fit_step1, predict_loss
from capscale.laws.twostep import TwoStepPredictor
from capscale.progress import report_refits
from capscale.schema import target_scale

X_CHOICES = ("auto", "flops", "params", "tokens", "loss")
META_COLUMNS = ["checkpoint", "family", "model", "params", "tokens", "flops", "step"]


class ChoiceMassPredictor(TaskPredictor):
    """Per-item margins of the gold choice over each incorrect choice, pooled across items, extrapolated
    in scale; accuracy = expected share of items won (the capscale.laws.choicemass docstring).

    Fitted attributes: ``x_`` (the scale input used), ``population_`` (mu, tau, pooled noise), ``noise_``
    (checkpoint shocks, within-item rho), ``counts_`` (items, pairs, single-choice items, tied pairs,
    missing cells), ``item_correlations_`` (Schaeffer et al.'s per-item correlation of p_correct with
    scale), ``boot_fits_`` (per-replicate pooling), ``n_boot_failed_``, ``extent_``, ``fit_warnings_``.
    """

    method_name = "choice-mass"

    def __init__(self, x: str = "auto", checkpoints: str = "auto", level: float = 0.9, n_boot: int = 1000,
                 seed: int = 0, noise_prior_df: float = 4.0, n_draws: int = 400, step1: str = "auto",
                 calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.x = x
        self.checkpoints = checkpoints
        self.noise_prior_df = noise_prior_df
        self.n_draws = n_draws
        self.step1 = step1

    # -- fitting ------------------------------------------------------------------------

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss: str | None = "bpb_correct",
            loss_task: str | None = None, items: pd.DataFrame | None = None) -> "ChoiceMassPredictor":
        """``items``: per-choice rows (required); only those at the ladder's checkpoints are used, so a
        held-out model's rows never leak into the fit. ``loss``/``loss_task`` are used with x="loss"."""
        if self.x not in X_CHOICES:
            raise CapscaleError(f"x must be one of {', '.join(X_CHOICES)}, got {self.x!r}")
        if items is None:
            raise CapscaleError("choice-mass needs per-choice rows: pass --items OUT (a results store or a per-choice "
                                "CSV/Parquet file), or give a results store as LADDER")
        choice_scores(items.iloc[:0], metric)  # unknown metric: fail before any work
        self.task_, self.metric_, self.loss_metric_ = task, metric, loss if self.x == "loss" else None
        if self.checkpoints not in ("auto", "final", "all"):
            raise CapscaleError(f"checkpoints must be auto, final or all, got {self.checkpoints!r}")
        meta = checkpoint_meta(ladder, task)
        if self.checkpoints == "final" or (self.checkpoints == "auto" and self.x != "loss"):
            meta = final_checkpoints(meta)  # an intermediate checkpoint is off the compute-efficient frontier
        n_ladder = len(meta)
        traj = choice_trajectories(items, task, meta["checkpoint"].tolist(), metric)
        meta = meta.set_index("checkpoint").loc[traj.checkpoints].reset_index()
        self.x_ = resolve_x(self.x, meta)
        z_raw, meta = self._scale_values(ladder, meta, task, loss, loss_task)
        if len(meta) < len(traj.checkpoints):
            traj = choice_trajectories(items, task, meta["checkpoint"].tolist(), metric)
        if len(np.unique(z_raw)) < 2:
            raise CapscaleError(f"task {task!r}: the ladder has one {self.x_} value; a trend needs two")
        t = z_raw if self.x_ == "loss" else np.log(z_raw)  # losses are standardised, scales enter as centred logs
        self.reference_ = (float(np.mean(t)), float(np.std(t)) if self.x_ == "loss" else 1.0)
        z = (t - self.reference_[0]) / self.reference_[1]
        pairs = margin_pairs(traj)
        modelled = ~pairs.tied
        self.meta_, self.z_, self.items_ = meta, z, traj.items
        self.pairs_, self.modelled_, self.raw_ = pairs, modelled, SCORE_OF[metric] == "raw"
        self.extent_ = {k: float(meta[k].max()) for k in SCALE_INPUTS if meta[k].notna().all()}
        self._count(traj, pairs)
        self.counts_["ladder_checkpoints_without_rows"] = n_ladder - len(traj.checkpoints)
        if not modelled.any():
            raise CapscaleError(f"task {task!r}: no item has an incorrect choice to model (all single-choice or tied)")

        n_items = len(traj.items)
        item = pairs.item[modelled]
        pair_weights = np.ones(modelled.sum())
        margins = pairs.margins[modelled]
        self.stats_ = pair_statistics(z, margins)
        pop = fit_population(self.stats_, pair_weights, noise_prior_df=self.noise_prior_df)
        means, _, _ = posterior(self.stats_, pop.mu, pop.tau, pop.sigma2)
        self.population_ = pop
        self.noise_ = noise_structure(z, margins, means, pop.sigma2, item, pair_weights)
        self.fit_warnings_ = self._warnings(pop)
        if self.noise_.shock_df == 1 and self.noise_.shock_var > 0:
            self.fit_warnings_.append("the checkpoint-shock variance rests on one residual checkpoint (3 sizes): the "
                                      "interval takes it at face value and may be too narrow or too wide")
        self.item_correlations_ = item_correlations(traj, t)
        self.observed_ = observed_accuracy(traj, pairs, meta)

        runs = run_keys(self.step1_data_) if self.x_ == "loss" else []
        columns = RunColumns(self.step1_data_, runs) if self.x_ == "loss" else None
        self.boot_fits_, self.n_boot_failed_ = [], 0
        for b in range(self.n_boot):
            counts = self._item_counts(b, n_items)
            weights = counts[item]
            try:
                mu, tau, _ = fit_pooling(self.stats_, weights, pop.sigma2, (pop.mu, pop.tau), pop.identified)
                m, _, _ = posterior(self.stats_, mu, tau, pop.sigma2)
                noise = noise_structure(z, margins, m, pop.sigma2, item, weights)
                step1 = self._refit_step1(b, runs, columns) if self.x_ == "loss" else None
            except FitError:
                self.n_boot_failed_ += 1
                continue
            self.boot_fits_.append({"replicate": b, "mu": mu, "tau": tau, "noise": noise, "step1": step1})
            if (b + 1) % REPORT_EVERY == 0:
                report_refits(REPORT_EVERY)
        report_refits(self.n_boot % REPORT_EVERY)
        self.n_runs_ = int(meta[["family", "model"]].drop_duplicates().shape[0]) if "model" in meta else len(meta)
        self.form_used_ = f"choice-mass in {self.x_}"
        self._calibrate(ladder, task, metric, loss, loss_task, items)
        return self

    def _scale_values(self, ladder, meta, task, loss, loss_task):
        """Each checkpoint's x (raw units); with x="loss" also fits step 1 (TwoStepPredictor's forms)."""
        if self.x_ != "loss":
            return meta[self.x_].to_numpy(float), meta
        if loss is None:
            raise CapscaleError("x='loss' needs a loss metric (e.g. bpb_correct or nll_correct)")
        from capscale.ladder import metric_series

        series = metric_series(ladder, loss_task or task, loss)
        if "checkpoint" not in series:
            raise CapscaleError("x='loss' needs a checkpoint column in the ladder to join losses to per-choice rows")
        joined = meta.merge(series[["checkpoint", "value"]], on="checkpoint", how="inner")
        if len(joined) < 2:
            raise CapscaleError(f"task {task!r}: fewer than two checkpoints have the loss {loss!r}")
        finals = final_checkpoints(series.rename(columns={"value": "loss"}))
        two_step = TwoStepPredictor(step1=self.step1, n_origins=self.n_origins)
        self.step1_form_ = two_step.choose_step1(finals, finals["loss"].to_numpy(float))
        self.step1_data_ = finals
        self.step1_fit_ = fit_step1(self.step1_form_, finals, finals["loss"].to_numpy(float))
        self.extent_step1_ = {k: float(finals[k].max()) for k in self.step1_fit_.form.inputs}
        return joined["value"].to_numpy(float), joined.drop(columns="value")

    def _refit_step1(self, b: int, runs, columns) -> FitResult:
        rng = np.random.default_rng([self.seed, b, 2])
        sample = rng.integers(0, len(runs), len(runs))
        if len(np.unique(sample)) < self.step1_fit_.n_free:
            raise FitError("too few distinct runs in this resample for step 1")
        finals = self.step1_data_
        base = {k: finals[k].to_numpy(float) for k in ("params", "tokens", "flops", "loss")}
        data = columns.take(base, sample)
        return fit_step1(self.step1_form_, pd.DataFrame(data), data["loss"], warm=self.step1_fit_)

    def _item_counts(self, b: int, n_items: int) -> np.ndarray:
        """Replicate b's item multiplicities, regenerated from (seed, b): a saved fit needs not store them."""
        rng = np.random.default_rng([self.seed, b])
        return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items)).astype(float)

    def _count(self, traj: ChoiceTrajectories, pairs: MarginPairs) -> None:
        seen_item = np.isfinite(traj.scores).any(1)  # [I, K]
        self.counts_ = {
            "items": int(len(traj.items)),
            "checkpoints": int(len(traj.checkpoints)),
            "pairs_modelled": int((~pairs.tied).sum()),
            "single_choice_items": int((traj.n_choices == 1).sum()),
            "tied_pairs": int(pairs.tied.sum()),
            "items_with_missing_checkpoints": int((~seen_item.all(1)).sum()),
            "missing_item_checkpoints": int((~seen_item).sum()),
            "pairs_seen_once": int((np.isfinite(pairs.margins[~pairs.tied]).sum(1) == 1).sum()),
            "gold_labels_moved_at_ties": int(traj.relabelled),
        }

    def _warnings(self, pop: Population) -> list[str]:
        out = []
        c = self.counts_
        if not pop.identified:
            out.append("every item-distractor line has at most two points: noise cannot be told from trend, so the "
                       "lines interpolate and the interval covers only item sampling")
        if c.get("ladder_checkpoints_without_rows"):
            out.append(f"{c['ladder_checkpoints_without_rows']} of the ladder's checkpoints have no per-choice rows "
                       "for this task; fitted on the others")
        if c["items_with_missing_checkpoints"]:
            out.append(f"{c['items_with_missing_checkpoints']} of {c['items']} items are missing at some checkpoints "
                       f"({c['missing_item_checkpoints']} item-checkpoints); they are fitted on what exists")
        if c["pairs_seen_once"]:
            out.append(f"{c['pairs_seen_once']} item-distractor pairs were seen at one checkpoint only: their slope is "
                       "the population's")
        return out

    # -- forecasting ----------------------------------------------------------------------

    def _z_target(self, target: dict, step1: FitResult | None = None) -> tuple[float, float | None]:
        if self.x_ == "loss":
            loss = predict_loss(target, step1 or self.step1_fit_)
            return (loss - self.reference_[0]) / self.reference_[1], loss
        value = target.get(self.x_)
        if value is None or not np.isfinite(float(value)) or float(value) <= 0:
            raise CapscaleError(f"this choice-mass fit is in {self.x_}: give the target's {self.x_}")
        return float(np.log(float(value)) - self.reference_[0]), None

    def _draw(self, rng, zt, mu, tau, noise, n_draws, common=True):
        means, covs, _ = posterior(self.stats_, mu, tau, self.population_.sigma2)
        item = self.pairs_.item[self.modelled_]
        return draw_margins(rng, zt, means, covs, self.population_.sigma2, noise, item, len(self.items_), n_draws,
                            common)

    def _outcomes(self, draws):
        return item_outcomes(draws, self.pairs_, self.modelled_, len(self.items_), self.raw_)

    def _metric_draws(self, target: dict) -> tuple[dict, dict, float | None, list]:
        """Point values and bootstrap draws of every metric the margin model gives at the target."""
        zt, loss = self._z_target(target)
        pop = self.population_
        rng = np.random.default_rng([self.seed, 1])
        won, pc, br = self._outcomes(self._draw(rng, zt, pop.mu, pop.tau, self.noise_, self.n_draws, common=False))
        accuracy = "acc" if self.raw_ else self.metric_
        values = {accuracy: float(won.mean())}
        if self.raw_:
            values |= {"p_correct": float(pc.mean()), "brier": float(br.mean())}
        boot = {k: [] for k in values}
        boot_loss = []
        n_items = len(self.items_)
        for fit in self.boot_fits_:
            try:
                zb, lb = self._z_target(target, fit["step1"]) if self.x_ == "loss" else (zt, None)
            except CapscaleError:
                continue
            counts = self._item_counts(fit["replicate"], n_items)
            rng_b = np.random.default_rng([self.seed, fit["replicate"], 1])
            w_b, pc_b, br_b = self._outcomes(self._draw(rng_b, zb, fit["mu"], fit["tau"], fit["noise"], 1))
            boot[accuracy].append(float(counts @ w_b[0]) / n_items)
            if self.raw_:
                boot["p_correct"].append(float(counts @ pc_b[0]) / n_items)
                boot["brier"].append(float(counts @ br_b[0]) / n_items)
            if lb is not None:
                boot_loss.append(lb)
        return values, {k: np.array(v) for k, v in boot.items()}, loss, boot_loss

    def _main_metric(self, values: dict) -> str:
        return self.metric_ if self.metric_ in values else ("acc" if self.raw_ else self.metric_)

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        values, draws, _, _ = self._metric_draws(target_scale(params, tokens, flops))
        main = self._main_metric(values)
        return values[main], draws[main]

    def predict_metrics(self, params=None, tokens=None, flops=None, level: float | None = None) -> dict[str, Forecast]:
        """Forecasts of every metric the margin model gives: the fitted accuracy (calibrated), and p_correct
        and brier when the margins are raw log-likelihoods (acc / p_correct / brier fits)."""
        target = target_scale(params, tokens, flops)
        values, draws, loss, boot_loss = self._metric_draws(target)
        level_ = self.level if level is None else level
        loss_lower, loss_upper = self._loss_interval(loss, np.array(boot_loss), level_) if boot_loss else (None, None)
        main = self._main_metric(values)
        return {name: self._forecast(value, draws[name], target, level, metric=name, calibrated=name == main,
                                     loss=loss, loss_lower=loss_lower, loss_upper=loss_upper,
                                     **self._forecast_fields(target, level))
                for name, value in values.items()}

    def predict(self, params=None, tokens=None, flops=None, level: float | None = None) -> Forecast:
        forecasts = self.predict_metrics(params, tokens, flops, level)
        return forecasts[self._main_metric(forecasts)]

    def expected_curve(self, values) -> np.ndarray:
        """Expected accuracy of the full fit at scale (or loss) ``values``: for plots, no interval."""
        pop = self.population_
        out = []
        for v in np.atleast_1d(np.asarray(values, float)):
            zt = (v - self.reference_[0]) / self.reference_[1] if self.x_ == "loss" else np.log(v) - self.reference_[0]
            rng = np.random.default_rng([self.seed, 1])
            won, _, _ = self._outcomes(self._draw(rng, zt, pop.mu, pop.tau, self.noise_, min(self.n_draws, 200),
                                                        common=False))
            out.append(won.mean())
        return np.array(out)

    # -- diagnostics ----------------------------------------------------------------------

    def distractor_table(self, params=None, tokens=None, flops=None) -> pd.DataFrame:
        """Which distractors gain mass with scale: one row per modelled (item, incorrect choice) with its
        slope (margin change per decade of x, or per standard deviation the loss falls; negative = the
        distractor gains on the gold choice as models improve), the margin observed at the largest checkpoint where the
        item was seen, the predicted margin at the target, P(this margin < 0) and P(item wrong) there,
        and whether the item flips from right to wrong (> 50%). Sorted by slope, most-gaining first."""
        target = target_scale(params, tokens, flops)
        zt, _ = self._z_target(target)
        pop = self.population_
        means, covs, _ = posterior(self.stats_, pop.mu, pop.tau, pop.sigma2)
        rng = np.random.default_rng([self.seed, 1])
        draws = self._draw(rng, zt, pop.mu, pop.tau, self.noise_, self.n_draws, common=False)
        won, _, _ = self._outcomes(draws)
        pairs, m = self.pairs_, self.modelled_
        margins = pairs.margins[m]
        order = np.argsort(self.z_)
        last = np.full(len(margins), np.nan)
        for k in order:  # the last seen value along increasing scale
            last = np.where(np.isfinite(margins[:, k]), margins[:, k], last)
        item = pairs.item[m]
        correct_last = self.observed_["item_correct_last"][item]
        per_decade = np.log(10.0) if self.x_ != "loss" else -1.0  # a better model has a lower loss
        p_wrong = 1 - won.mean(0)[item]
        table = pd.DataFrame({
            "item": self.items_[item], "choice": pairs.choice[m], "gold": self.observed_["gold"][item],
            "n_points": self.stats_[:, 6].astype(int), "slope": means[:, 1] * per_decade,
            "margin_last": last, "margin_target": means[:, 0] + means[:, 1] * zt,
            "p_margin_negative": (draws < 0).mean(0), "p_item_wrong": p_wrong,
            "correct_last": correct_last, "flips_wrong": correct_last & (p_wrong > 0.5),
        })
        table["gains_mass"] = table["slope"] < 0
        return table.sort_values(["slope", "item"], kind="stable").reset_index(drop=True)

    def describe(self) -> str:
        pop, c = self.population_, self.counts_
        unit = "per decade" if self.x_ != "loss" else "per sd of loss decrease"
        per = np.log(10.0) if self.x_ != "loss" else -1.0
        return (f"choice-mass in {self.x_}: {c['pairs_modelled']} item-distractor lines over {c['items']} items x "
                f"{c['checkpoints']} checkpoints; population slope {pop.mu[1] * per:.3g} {unit} "
                f"(sd {np.sqrt(pop.tau[1, 1]) * abs(per):.3g}), noise sd {np.sqrt(pop.s2):.3g}, checkpoint shock sd "
                f"{np.sqrt(self.noise_.shock_var):.3g}, within-item rho {self.noise_.rho:.2f}; "
                f"{c['single_choice_items']} single-choice items, {c['tied_pairs']} tied pairs")

    # -- persistence (capscale fit / predict) ------------------------------------------------

    def state_dict(self) -> dict:
        """What predict needs, as JSON-able data: pair statistics and noise, the pooling of each replicate."""
        pop, pairs = self.population_, self.pairs_
        state = {
            "task_": self.task_, "metric_": self.metric_, "loss_metric_": self.loss_metric_, "x_": self.x_,
            "reference_": list(self.reference_), "extent_": self.extent_, "fit_warnings_": self.fit_warnings_,
            "counts_": self.counts_, "n_boot_failed_": self.n_boot_failed_, "raw_": self.raw_,
            "items": [str(i) for i in self.items_], "stats": self.stats_.tolist(), "sigma2": pop.sigma2.tolist(),
            "population": {"mu": pop.mu.tolist(), "tau": pop.tau.tolist(), "s2": pop.s2},
            "noise": noise_to_dict(self.noise_),
            "pairs": {"item": pairs.item.tolist(), "choice": pairs.choice.tolist(),
                      "gold_first": pairs.gold_first.tolist(), "tied": pairs.tied.tolist()},
            "boot": [{"replicate": f["replicate"], "mu": f["mu"].tolist(), "tau": f["tau"].tolist(),
                      "noise": noise_to_dict(f["noise"]), "step1": fit_dict(f["step1"])} for f in self.boot_fits_],
        }
        if self.x_ == "loss":
            state["step1"] = fit_dict(self.step1_fit_)
        return state

    @classmethod
    def from_state(cls, hyper: dict, state: dict) -> "ChoiceMassPredictor":
        self = cls(**hyper)
        for key in ("task_", "metric_", "loss_metric_", "x_", "extent_", "fit_warnings_", "counts_",
                    "n_boot_failed_", "raw_"):
            setattr(self, key, state[key])
        self.reference_ = tuple(state["reference_"])
        self.items_ = np.asarray(state["items"], dtype=object)
        self.stats_ = np.asarray(state["stats"], float).reshape(-1, 7)
        p = state["pairs"]
        n_pairs = len(p["item"])
        self.pairs_ = MarginPairs(np.asarray(p["item"], int), np.asarray(p["choice"], int),
                                  np.asarray(p["gold_first"], bool), np.empty((n_pairs, 0)), np.empty((n_pairs, 0)),
                                  np.asarray(p["tied"], bool))
        self.modelled_ = ~self.pairs_.tied
        pop = state["population"]
        self.population_ = Population(np.asarray(pop["mu"]), np.asarray(pop["tau"]), pop["s2"],
                                      np.asarray(state["sigma2"], float), 0, True)
        self.noise_ = noise_from_dict(state["noise"])
        self.boot_fits_ = [{"replicate": f["replicate"], "mu": np.asarray(f["mu"]), "tau": np.asarray(f["tau"]),
                            "noise": noise_from_dict(f["noise"]), "step1": fit_from(f["step1"])} for f in state["boot"]]
        if "step1" in state:
            self.step1_fit_ = fit_from(state["step1"])
        return self


def noise_to_dict(noise: NoiseStructure) -> dict:
    return {"shocks": noise.shocks.tolist(), "shock_var": noise.shock_var, "rho": noise.rho,
            "trend_cov": noise.trend_cov.tolist(), "shock_df": noise.shock_df}


def noise_from_dict(d: dict) -> NoiseStructure:
    return NoiseStructure(np.asarray(d["shocks"], float), float(d["shock_var"]), float(d["rho"]),
                          np.asarray(d["trend_cov"], float), int(d["shock_df"]))


def fit_dict(fit: FitResult | None):
    return None if fit is None else fit.to_dict()


def fit_from(d):
    return None if d is None else fit_from_dict(d)


def checkpoint_meta(ladder: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per checkpoint of the task in the ladder (its scale metadata); one family only."""
    if "checkpoint" not in ladder.columns:
        raise CapscaleError("choice-mass joins per-choice rows to the ladder by checkpoint: the ladder needs a "
                            "checkpoint column (a results store, or `capscale summary --csv`, has one)")
    rows = ladder[ladder["task"] == task]
    if rows.empty:
        raise CapscaleError(f"the ladder has no rows for task {task!r}")
    families = sorted(rows["family"].unique())
    if len(families) > 1:
        raise CapscaleError(f"task {task!r}: the ladder has families {families}; fit one family at a time")
    meta = rows.reindex(columns=META_COLUMNS).drop_duplicates("checkpoint")
    return meta.assign(checkpoint=meta["checkpoint"].astype(str)).reset_index(drop=True)


def resolve_x(x: str, meta: pd.DataFrame) -> str:
    """x="auto": flops when every checkpoint has it, else params (e.g. GPT-2, whose tokens are unknown)."""
    def usable(column):
        values = meta[column].to_numpy(float)
        return bool(np.all(np.isfinite(values) & (values > 0)))

    if x == "auto":
        for column in ("flops", "params"):
            if usable(column):
                return column
        raise CapscaleError("no scale column (flops or params) is known for every checkpoint")
    if x != "loss" and not usable(x):
        raise CapscaleError(f"x={x!r}: not every checkpoint has a positive {x}; try x='params'")
    return x
