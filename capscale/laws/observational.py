"""Forecast a model of one family from its compute, its family's other models and every other family.

``ObservationalPredictor`` (``--method observational``) follows observational scaling laws (Ruan,
Maddison & Hashimoto 2024, arXiv:2405.10938) and Sloth (Maia Polo et al. 2024, arXiv:2412.06540):
a few capability dimensions shared by all families (``capscale.laws.capabilities``: PCA over the
benchmarks the families share, missing cells imputed), each linear in log compute with a shared
slope and a family offset (the family's compute efficiency, partially pooled), and per benchmark a
sigmoid link from the capabilities back to the score:

    score = b + (1 - b) * h * sigmoid(a + sum_j w_j * capability_j),

b = the benchmark's chance level (0 where unknown), h the share of the room above chance that can
be reached (1, or from the table's ``ceiling`` column), (a, w) fitted across every model that
reports the benchmark; or a linear link (the default: over every family's largest model of the public
tables, lm_eval_2023, opt_bloom and Pythia, 480 targets, the linear link's mean |error| is 0.024, the
sigmoid's 0.042 and a per-task choice by internal backtests 0.025: a sigmoid fitted to a benchmark near
chance explodes when extrapolated, e.g. OPT-66B's logiqa 0.79 for 0.23). A target
of family F at compute C is placed at capability slope * (ln C - c0) + offset_F, offset_F being
F's empirical-Bayes offset (its models' mean offset shrunk towards the population's). The forecast
adds F's own effect on this benchmark: the residuals of F's models against the pooled forecast of
F's line, a line in log compute whose intercept and slope are shrunk towards 0 by how much such
effects vary between families (``capabilities.family_effect``). With many models of its own a
family's forecast tends to its own trend, with one or two it borrows the other families' shape,
and a family with no models of its own gets the population offset and its spread: a wider,
honest interval.

The pooled forecast is then blended with the family's previous model (its carry-forward):
w * pooled + (1 - w) * previous, w in [0, 1] chosen per benchmark by the table's own internal
backtests (``blend="auto"``: the w with the lowest mean |error| over every family's held-out largest
models). Forecast combination (Bates & Granger 1969) of the two strongest forecasts of a family's next
model: over the public tables' 480 loflo targets the learnt blend's mean |error| is 0.022, the pooled
forecast alone 0.024, carry-forward 0.025 and a per-family line 0.029 (evals/backtests/observational.py).

Predictive draws: one per bootstrap resample of families and models (capabilities, lines, link
and family effect refitted), with the target's capability drawn from its family's offset
posterior, the family effect from its posterior, and one resampled residual of a model around its
family's forecast. Intervals are calibrated by the table's own internal backtests (``_calibrate``):
each family's k largest models held out in turn (k = 1..n_origins), fitted on everything else,
forecast; for a target of a new family, each family held out whole. A held-out model's rows are removed from the table for every task before
the fit, so its own scores never enter the capability scale.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints, metric_series
from capscale.laws.base import RUN_KEYS, chance_level, deviation_quantiles, extrapolation_distance, ladder_extent
from capscale.laws.calibration import DEFAULT_GROWTH, calibrate
from capscale.laws.capabilities import (
    MAX_COMPONENTS,
    MIN_FAMILIES,
    MIN_SHARE,
    ObservationalError,
    capability_model,
    family_effect,
    table_fingerprint,
)
from capscale.laws.fitting import FitError, FitResult, fit_form, refit_many
from capscale.laws.forms import Form, _sigmoid, normalise_inputs
from capscale.laws.predictors import TaskPredictor
from capscale.laws.rolling import ORIGIN_LEVELS, OriginPoint, choose, model_target, origin_splits
from capscale.schema import from_goodness, metric_kind, require_inputs, target_scale, to_goodness

DEFAULT_COMPONENTS = 1
BLEND_GRID = np.round(np.linspace(1.0, 0.0, 11), 2)  # weights of the pooled forecast tried, ties to the pooled
ANALYTIC_DRAWS = 400  # draws from the full fit alone when n_boot = 0 (internal backtests without a bootstrap)
_POINTS_CACHE: "OrderedDict[tuple, list]" = OrderedDict()
POINTS_CACHE_SIZE = 512


# --- the link from capabilities to one benchmark ----------------------------------------------

def link_form(k: int) -> Form:
    """score = b + (1 - b) h sigmoid(a + sum_j w_j c_j): b (chance) and h (reachable share) fixed."""
    inputs = tuple(f"c{j + 1}" for j in range(k))
    weights = tuple(f"w{j + 1}" for j in range(k))

    def linear(t, z):
        return t["a"] + sum(t[w] * z[c] for w, c in zip(weights, inputs))

    def formula(t, z):
        return t["b"] + (1.0 - t["b"]) * t["h"] * _sigmoid(linear(t, z))

    def gradient(t, z):
        s = _sigmoid(linear(t, z))
        slope = (1.0 - t["b"]) * t["h"] * s * (1.0 - s)
        out = {"a": slope, "b": 1.0 - t["h"] * s, "h": (1.0 - t["b"]) * s}
        out.update({w: slope * z[c] for w, c in zip(weights, inputs)})
        return out

    grid = {"a": (-3.0, -1.0, 0.0, 1.0, 3.0), weights[0]: (-0.5, 0.3, 1.0, 3.0)}
    grid.update({w: (-1.0, 0.0, 1.0) for w in weights[1:]})
    bounds = {"a": (-30.0, 30.0), "b": (0.0, 1.0), "h": (0.0, 1.0), **{w: (-10.0, 10.0) for w in weights}}
    return Form(name=f"capability_link_{k}", inputs=inputs, param_names=("a", *weights, "b", "h"), formula=formula,
                bounds=bounds, start_grid=grid, space="linear", gradient=gradient,
                description="score = chance + (1 - chance) h sigmoid(a + w . capabilities)")


def linear_link_form(k: int) -> Form:
    """score = a + sum_j w_j c_j (clipped to the metric's range when forecast): no saturation and no
    explosion, the safer extrapolation for a benchmark whose sigmoid the data cannot locate."""
    inputs = tuple(f"c{j + 1}" for j in range(k))
    weights = tuple(f"w{j + 1}" for j in range(k))
    return Form(name=f"capability_linear_{k}", inputs=inputs, param_names=("a", *weights),
                formula=lambda t, z: t["a"] + sum(t[w] * z[c] for w, c in zip(weights, inputs)),
                bounds={"a": (-10.0, 10.0), **{w: (-10.0, 10.0) for w in weights}},
                start_grid={"a": (0.3, 0.6), **{w: (-0.05, 0.05) for w in weights}}, space="linear",
                gradient=lambda t, z: {"a": np.ones_like(z[inputs[0]]), **{w: z[c] for w, c in zip(weights, inputs)}},
                description="score = a + w . capabilities")


LINKS = ("auto", "sigmoid", "linear")
AXES = ("within", "total")


def link_inputs(scores: np.ndarray) -> dict:
    """{c1: scores[..., 0], ...} for a form's inputs ([n, k] or batched [B, n, k])."""
    return {f"c{j + 1}": scores[..., j] for j in range(scores.shape[-1])}


def choose_blend(blend, points: list[OriginPoint] | None) -> float:
    """w: ``blend`` as given, or the grid's w with the lowest mean |error| of the blended forecast on
    the held-out points that have a previous model (1 where there are none)."""
    if blend != "auto":
        return float(blend)
    usable = [p for p in points or [] if np.isfinite(p.previous) and np.isfinite(p.predicted)]
    if not usable:
        return 1.0
    predicted, previous, actual = (np.array([getattr(p, a) for p in usable]) for a in ("predicted", "previous", "actual"))
    errors = [np.mean(np.abs(w * predicted + (1.0 - w) * previous - actual)) for w in BLEND_GRID]
    return float(BLEND_GRID[int(np.argmin(errors))])


# --- the predictor --------------------------------------------------------------------------

def stacked(links: list[FitResult], lines: list[dict]) -> tuple[dict, dict]:
    """The resamples' link parameters and target lines as arrays [B] / [B, k] (one vectorised draw)."""
    params = {p: np.array([link.params[p] for link in links]) for p in links[0].params}
    return params, {key: np.stack([np.atleast_1d(np.asarray(line[key], dtype=float)) for line in lines])
                    for key in lines[0]}


class ObservationalPredictor(TaskPredictor):
    """Cross-family forecast through shared capability dimensions (see the module docstring).

    ``family``: the target's family (None, or a family absent from the table: a new family, placed
    by the population offset). ``n_components``: capability dimensions (default 1; at most 3).
    ``min_share`` / ``min_families``: the rule for a benchmark to enter the capability scale
    (capscale.laws.capabilities). ``scale``: standardise each benchmark before the PCA (True) or
    only centre it. ``suites``: a suite of benchmarks (hendrycksTest-*, xnli_*) weighs one benchmark's
    worth in the PCA. ``family_effects``: add the target family's own departure from the pooled
    forecast on this benchmark (its models' residuals as a line in log compute, intercept and slope
    partially pooled: ``capabilities.family_effect``).
    ``axes``: "within" (the capability axes are the principal components of each model's deviation
    from its family's mean: how benchmarks move together as a family scales; multilevel PCA) or
    "total" (of all the variation, as Ruan et al. with many families). ``family_slopes``: each
    family's slope partially pooled too (random slopes), not one shared slope. ``score_link``: "linear"
    (default, see the module docstring), "sigmoid" or "auto" (the one with the lower error on the
    table's internal backtest of the target's regime, as ``direct`` chooses its form; ~20x the time). ``blend``: the weight w of the pooled
    forecast against the family's previous model, "auto" (learnt per benchmark from the table's internal
    backtests) or a number in [0, 1] (1: the pooled forecast alone).

    Fitted attributes: ``capabilities_`` (the CapabilityModel), ``family_`` (the target family),
    ``n_own_`` (its models with compute), ``link_name_``, ``link_`` (full-data link FitResult),
    ``target_line_`` (the target family's line and benchmark effect), ``boot_lines_`` and
    ``boot_links_`` (one per kept resample), ``noise_`` (residuals of one new model), ``previous_`` (the
    target family's largest model's score, None without one), ``blend_`` (w), plus the common
    ``data_``, ``extent_``, ``n_runs_``, ``form_used_``, ``fit_warnings_``, ``n_boot_failed_``."""

    method_name = "observational"

    def __init__(self, family: str | None = None, n_components: int = DEFAULT_COMPONENTS, min_share: float = MIN_SHARE,
                 min_families: int = MIN_FAMILIES, scale: bool = True, suites: bool = True, score_link: str = "linear",
                 family_effects: bool = True, axes: str = "within", family_slopes: bool = False, blend="auto", level=0.9,
                 n_boot=1000, seed=0, calibrate=True, n_origins=3, growth=DEFAULT_GROWTH, n_boot_origin=100):
        super().__init__(level, n_boot, seed, calibrate, n_origins, growth, n_boot_origin)
        self.family = family
        self.n_components = n_components
        self.min_share = min_share
        self.min_families = min_families
        self.scale = scale
        self.suites = suites
        self.score_link = score_link
        self.family_effects = family_effects
        self.axes = axes
        self.family_slopes = family_slopes
        self.blend = blend

    # --- fit ------------------------------------------------------------------------------
    def _check(self, metric: str) -> None:
        if not metric_kind(metric).probability:
            raise CapscaleError(f"observational forecasts a probability metric (acc, err, ...), not {metric!r}")
        if not 1 <= int(self.n_components) <= MAX_COMPONENTS:
            raise CapscaleError(f"n_components must be 1..{MAX_COMPONENTS}, got {self.n_components}")
        if self.score_link not in LINKS:
            raise CapscaleError(f"score_link must be one of {', '.join(LINKS)}, got {self.score_link!r}")
        if self.axes not in AXES:
            raise CapscaleError(f"axes must be one of {', '.join(AXES)}, got {self.axes!r}")
        if self.blend != "auto" and not (isinstance(self.blend, (int, float)) and 0.0 <= float(self.blend) <= 1.0):
            raise CapscaleError(f"blend must be 'auto' or a weight in [0, 1], got {self.blend!r}")

    def fit(self, ladder: pd.DataFrame, task: str, metric: str = "acc", loss=None, loss_task=None,
            items=None) -> "ObservationalPredictor":
        """``ladder``: the whole table, every family (the target's held-out rows already removed).
        ``loss``, ``loss_task`` and ``items`` are accepted for the common signature and ignored."""
        self._fit(ladder, task, metric, table_fingerprint(ladder, metric))
        points = None
        if self.calibrate or (self.blend == "auto" and self.previous_ is not None):
            points = self.regime_points(ladder, task, metric, self.n_boot_origin if self.calibrate else 0,
                                        score_link=self.link_name_)
        self.blend_ = 1.0 if self.previous_ is None else choose_blend(self.blend, points)
        if self.blend_ < 1.0:
            self.form_used_ += f"; {self.blend_:.1f} x pooled + {1 - self.blend_:.1f} x its previous model"
        self._calibrate(points)
        return self

    def _fit(self, ladder, task: str, metric: str, fingerprint: str, task_rows: pd.DataFrame | None = None) -> None:
        """The fit without calibration. ``fingerprint`` names the table's content (capability cache);
        ``ladder`` may be a function returning the table (built only when that cache misses), and
        ``task_rows`` the table's rows of the task and metric."""
        self._check(metric)
        self.task_, self.metric_, self.loss_metric_ = task, metric, None
        self.fingerprint_ = fingerprint
        cap = capability_model(ladder, metric, int(self.n_components), bool(self.scale), self.min_share,
                               self.min_families, int(self.n_boot), int(self.seed), fingerprint=self.fingerprint_,
                               suites=bool(self.suites), within=self.axes == "within",
                               random_slopes=bool(self.family_slopes))
        self.capabilities_, self.c0_ = cap, cap.c0
        families = sorted(set(cap.families))
        self.family_ = self.family
        notes = list(cap.warnings)
        if self.family is None:
            notes.append("no target family given: forecasting a new family from the population offset")
        elif self.family not in families:
            notes.append(f"family {self.family!r} has no model in the table: forecast from the population offset")
        own = cap.family_rows(self.family)
        self.n_own_ = len(own)
        if self.n_own_ == 0:
            notes.append("no model of the target family with a known compute: the interval includes the spread of "
                         "family efficiencies")

        if task_rows is None:
            task_rows = ladder[(ladder["task"] == task) & (ladder["metric"] == metric)]
        points = self._task_points(task_rows, task, metric, cap)
        if len(points) < cap.k + 2:
            raise CapscaleError(f"task {task!r}: {len(points)} model(s) on the capability scale report it; the link "
                                f"needs {cap.k + 2}")
        rows = points["row"].to_numpy(int)
        y = to_goodness(metric, points["value"].to_numpy(float))
        mine = points[points["family"] == self.family].sort_values("flops", kind="stable")
        self.previous_ = float(mine["value"].iloc[-1]) if self.family is not None and len(mine) else None
        self.blend_ = 1.0
        self.chance_ = chance_level(points) if metric_kind(metric).has_chance else None
        if self.score_link == "auto":
            self.link_name_ = self._choose_link(ladder() if callable(ladder) else ladder, task, metric)
        else:
            self.link_name_ = self.score_link
        form, fixed = self._link_spec(points, cap.k)
        scores = cap.scores()
        self.data_ = points.assign(**{f"c{j + 1}": scores[rows, j] for j in range(cap.k)})
        try:
            self.link_ = fit_form(form, link_inputs(scores[rows]), y, fixed=fixed)
        except FitError as e:
            raise CapscaleError(f"task {task!r}: the capability link did not fit ({e})") from e
        effect = self._effect(None, self.link_, rows, y)
        self.noise_ = effect.within
        self.target_line_ = self._target_line(cap.full, scores, own, effect)
        self._bootstrap_links(cap, rows, y, own)
        self.n_runs_ = len(points)
        self.extent_ = ladder_extent(cap.matrix.models.iloc[own] if len(own) else cap.matrix.models)
        floor = fixed.get("b", 0.0)
        self.form_used_ = (f"{cap.k} capabilit{'y' if cap.k == 1 else 'ies'} from {len(cap.matrix.tasks)} benchmarks "
                           f"of {len(families)} families -> {self.link_name_} link"
                           + (f" (floor {floor:.2f})" if floor else "")
                           + f"; {self.family_ or 'new family'}: {self.n_own_} own model(s)")
        self.fit_warnings_ = notes

    def _link_spec(self, points: pd.DataFrame, k: int) -> tuple[Form, dict]:
        """The link form and its fixed parameters: the sigmoid's floor (chance, 0 where unknown) and
        height (the ``ceiling`` column's share of the room above chance, 1 without one)."""
        if self.link_name_ == "linear":
            return linear_link_form(k), {}
        floor = 0.0 if self.chance_ is None else float(to_goodness(self.metric_, self.chance_))
        ceiling = points["ceiling"].dropna().median() if "ceiling" in points and points["ceiling"].notna().any() else None
        height = 1.0
        if ceiling is not None and floor < 1.0:
            height = float(np.clip((to_goodness(self.metric_, ceiling) - floor) / (1.0 - floor), 0.0, 1.0))
        return link_form(k), {"b": floor, "h": height}

    @staticmethod
    def _task_points(rows: pd.DataFrame, task: str, metric: str, cap) -> pd.DataFrame:
        """The task's final value (``rows``: the table's rows of task and metric) for each model on the
        capability scale, with its matrix row."""
        if rows.empty:
            raise CapscaleError(f"task {task!r} has no rows with metric {metric!r}")
        finals = final_checkpoints(metric_series(rows, task, metric))  # several rows per model: an error
        lookup = {key: i for i, key in enumerate(zip(cap.matrix.models["family"], cap.matrix.models["model"]))}
        at = np.array([lookup.get(key, -1) for key in zip(finals["family"], finals["model"])], dtype=int)
        out = finals.assign(row=at)[at >= 0]
        return out.sort_values("row", kind="stable").reset_index(drop=True)

    def _target_line(self, fit, scores: np.ndarray, own: np.ndarray, effect) -> dict:
        """What a forecast of the target family needs from one fit: its capability line (slope, offset
        mean and variance) and its effect on this benchmark (a line in x around ``centre``)."""
        x = self.capabilities_.x
        slope, mean, var = fit.lines.family_line(scores[own], x[own])
        return {"slope": slope, "offset": mean, "offset_var": var, "effect0": effect.intercept,
                "effect1": effect.slope, "centre": effect.centre, "effect_var0": effect.var_intercept,
                "effect_var1": effect.var_slope}

    def _effect(self, b: int | None, link: FitResult, rows: np.ndarray, y: np.ndarray):
        """The target family's effect on the benchmark from the residuals of every reporting model
        against the pooled forecast of its own family's line at its compute (so the residuals hold
        what a new model of a family adds to that forecast: link misfit, line misfit, noise).
        ``b``: the resample (None: the full fit)."""
        cap = self.capabilities_
        x, families = cap.x[rows], cap.families[rows]
        capability = np.full((len(rows), cap.k), np.nan)
        for family, (slope, offset, _) in cap.family_lines(b).items():
            at = np.flatnonzero((families == family) & np.isfinite(x))
            if len(at):
                capability[at] = np.outer(x[at], slope) + offset
        ok = np.isfinite(capability[:, 0])
        forecast = np.full(len(rows), np.nan)
        forecast[ok] = self.link_curve(capability[ok], link)
        target = self.family if self.family_effects else None
        return family_effect(y[ok] - forecast[ok], x[ok], families[ok], target)

    def _bootstrap_links(self, cap, rows: np.ndarray, y: np.ndarray, own: np.ndarray) -> None:
        """One link refit and one target line per capability resample (batched refits); a resample
        with fewer distinct models reporting the task than the link has parameters counts as failed."""
        self.boot_lines_, self.boot_links_ = [], []
        self.n_boot_failed_ = cap.n_boot_failed
        if not cap.boot:
            return
        all_scores = cap.boot_scores  # [B, n, k]
        weights = cap.boot_counts[:, rows]
        n_free = len(self.link_.params) - len(self.link_.fixed)
        keep = np.flatnonzero((weights > 0).sum(axis=1) >= n_free + 1)
        refits = refit_many(self.link_, link_inputs(all_scores[keep][:, rows, :]), y, weights[keep])
        for b, link in zip(keep, refits):
            if link is not None:
                effect = self._effect(b, link, rows, y)
                self.boot_links_.append(link)
                self.boot_lines_.append(self._target_line(cap.boot[b], all_scores[b], own, effect))
        self.n_boot_failed_ = self.n_boot - len(self.boot_links_)

    # --- predict ---------------------------------------------------------------------------
    def capability_at(self, flops: float, line: dict | None = None) -> np.ndarray:
        """The target's expected capabilities [k] at compute ``flops`` (of the full fit's line)."""
        line = line or self.target_line_
        return np.asarray(line["slope"]) * (np.log(float(flops)) - self.c0_) + np.asarray(line["offset"])

    def link_curve(self, capabilities, link: FitResult | None = None) -> np.ndarray:
        """The fitted benchmark score (goodness) at capabilities [n, k]."""
        return (link or self.link_).predict(**link_inputs(np.atleast_2d(np.asarray(capabilities, dtype=float))))

    def predictive_draws(self, params=None, tokens=None, flops=None) -> tuple[float, np.ndarray]:
        target = target_scale(params, tokens, flops)
        require_inputs(target, ("flops",), "observational (capabilities are lines in log compute)")
        x = np.log(target["flops"]) - self.c0_
        line = self.target_line_
        d = x - float(line["centre"])
        point = float(self.link_curve(self.capability_at(target["flops"]))[0]) + float(line["effect0"] + line["effect1"] * d)
        rng = np.random.default_rng(self.seed)
        if self.boot_links_:
            params_, lines = stacked(self.boot_links_, self.boot_lines_)
        else:  # no bootstrap: the full fit's spread alone
            params_ = {p: np.full(ANALYTIC_DRAWS, v) for p, v in self.link_.params.items()}
            lines = {key: np.tile(np.atleast_1d(np.asarray(v, dtype=float)), (ANALYTIC_DRAWS, 1))
                     for key, v in self.target_line_.items()}
        n = len(lines["slope"])
        spread = np.sqrt(lines["offset_var"])
        capability = lines["slope"] * x + lines["offset"] + spread * rng.standard_normal(spread.shape)
        z, _ = normalise_inputs(self.link_.form, link_inputs(capability), self.link_.reference)
        draws = np.asarray(self.link_.form(params_, z), dtype=float).reshape(n)
        d = x - lines["centre"].reshape(n)
        effect = lines["effect0"].reshape(n) + lines["effect1"].reshape(n) * d
        effect_var = lines["effect_var0"].reshape(n) + lines["effect_var1"].reshape(n) * d * d
        draws = draws + effect + np.sqrt(effect_var) * rng.standard_normal(n)
        noise = np.asarray(self.noise_, dtype=float)
        draws = draws + (rng.choice(noise, n) if len(noise) else 0.0)
        w, previous = getattr(self, "blend_", 1.0), getattr(self, "previous_", None)
        if previous is not None and w < 1.0:
            anchor = float(to_goodness(self.metric_, previous))
            point, draws = w * point + (1.0 - w) * anchor, w * draws + (1.0 - w) * anchor
        return float(from_goodness(self.metric_, point)), from_goodness(self.metric_, draws)

    # --- internal backtests ------------------------------------------------------------------
    def family_points(self, ladder: pd.DataFrame, task: str, metric: str, family: str, new_family: bool = False,
                      n_boot: int | None = None, min_train_sizes: int = 1,
                      fingerprint: str | None = None) -> list[OriginPoint]:
        """Held-out points of ``family`` inside ``ladder``: origin k holds out its runs of the k largest
        sizes (of the runs that report the task), fits on every other family plus its smaller runs, and
        forecasts the held-out ones; ``new_family``: one origin holding out the whole family. Runs of
        the family that lack the task are removed too, so a fold sees what a per-family method sees.
        The probes use this predictor's link (the sigmoid where it is "auto": no nested choice).
        ``fingerprint``: the table's (``table_fingerprint``), when the caller has it."""
        n_boot = self.n_boot_origin if n_boot is None else n_boot
        link = "sigmoid" if self.score_link == "auto" else self.score_link
        fingerprint = fingerprint or table_fingerprint(ladder, metric)
        key = (fingerprint, task, metric, family, new_family, n_boot, min_train_sizes,
               self.n_origins, self.n_components, self.scale, self.suites, self.min_share, self.min_families, link,
               self.family_effects, self.axes, self.family_slopes, self.seed)
        if key in _POINTS_CACHE:
            _POINTS_CACHE.move_to_end(key)
            return _POINTS_CACHE[key]
        own = ladder[(ladder["family"] == family) & (ladder["task"] == task) & (ladder["metric"] == metric)]
        finals = final_checkpoints(own).drop_duplicates(RUN_KEYS) if len(own) else own
        if finals.empty:
            splits = []
        elif new_family:
            splits = [(1, [], list(finals[RUN_KEYS].itertuples(index=False, name=None)))]
        else:
            splits = origin_splits(finals, self.n_origins, min_train_sizes)
        points: list[OriginPoint] = []
        task_rows = ladder[(ladder["task"] == task) & (ladder["metric"] == metric)]
        task_keys = list(zip(task_rows["family"], task_rows["model"]))
        for k, train_runs, test_runs in splits:
            kept = set(train_runs)

            def table(kept=kept):
                keys = zip(ladder["family"], ladder["model"])
                return ladder[[f != family or (f, m) in kept for f, m in keys]].reset_index(drop=True)

            fold_rows = task_rows[[f != family or (f, m) in kept for f, m in task_keys]]
            probe = self.clone(family=family, n_boot=n_boot, calibrate=False, score_link=link, blend=1.0)
            fold = f"{fingerprint}|{family}|{sorted(map(str, train_runs))}"  # the fold's table, named by what it keeps
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probe._fit(table, task, metric, fold, task_rows=fold_rows)
            except (CapscaleError, ValueError, np.linalg.LinAlgError):
                continue
            wanted = set(test_runs)
            held = finals[[key in wanted for key in zip(finals["family"], finals["model"])]]
            fitting = finals[[key in kept for key in zip(finals["family"], finals["model"])]]
            previous = float(fitting.sort_values("flops", kind="stable")["value"].iloc[-1]) if len(fitting) else np.nan
            for _, row in held.iterrows():
                target = {"params": row["params"], "tokens": row["tokens"], "flops": row["flops"]}
                try:
                    value, draws = probe.predictive_draws(**target)
                except (CapscaleError, ValueError):
                    continue
                deviations = {lv: deviation_quantiles(draws, lv) for lv in ORIGIN_LEVELS}
                points.append(OriginPoint(k, str(row["model"]), float(row["value"]), float(value),
                                          extrapolation_distance(probe.extent_, model_target(target)), deviations,
                                          previous))
        _POINTS_CACHE[key] = points
        while len(_POINTS_CACHE) > POINTS_CACHE_SIZE:
            _POINTS_CACHE.popitem(last=False)
        return points

    def regime_points(self, ladder: pd.DataFrame, task: str, metric: str, n_boot: int, **changes) -> list[OriginPoint]:
        """Held-out points of every family in the target's regime: families keep their smaller models
        (k largest held out), or, for a target of a new family, whole families are held out."""
        probe = self.clone(**changes) if changes else self
        new_family = self.family is None or self.family not in set(ladder["family"])
        points: list[OriginPoint] = []
        for family in sorted(ladder["family"].unique()):
            points += probe.family_points(ladder, task, metric, family, new_family=new_family, n_boot=n_boot,
                                          fingerprint=getattr(self, "fingerprint_", None))
        return points

    def _choose_link(self, ladder, task, metric) -> str:
        """The link with the lower mean |error| of point forecasts on the regime's held-out points
        (the sigmoid on ties and where neither could be scored)."""
        scored = {name: self.regime_points(ladder, task, metric, 0, score_link=name) for name in ("sigmoid", "linear")}
        best, self.link_errors_ = choose(scored)
        return best or "sigmoid"

    def blended(self, points: list[OriginPoint]) -> list[OriginPoint]:
        """The held-out points as the blended forecast (w = ``blend_``) would have forecast them."""
        w = self.blend_
        if w >= 1.0:
            return list(points)
        return [replace(p, predicted=w * p.predicted + (1.0 - w) * p.previous) if np.isfinite(p.previous) else p
                for p in points]

    def _calibrate(self, points: list[OriginPoint] | None) -> None:
        """Widening factors from the regime's held-out points (``regime_points``, of the chosen link),
        as the blended forecast made them."""
        self.calibration_ = None
        if not self.calibrate:
            return
        points = self.blended(points)
        self.calibration_ = calibrate(points, self.growth)
        self.origin_points_ = points

    def own_points(self, ladder: pd.DataFrame, task: str, metric: str) -> list[OriginPoint]:
        """Point forecasts of the target family's own rolling origins (its k largest held out, as
        ``capscale.laws.rolling`` splits a family's ladder): what ``--method auto`` compares with the
        per-family candidates. The link is chosen on the whole table first."""
        self._check(metric)
        link = self.score_link
        if link == "auto":
            self.link_name_ = link = self._choose_link(ladder, task, metric)
        if self.family is None or self.family not in set(ladder["family"]):
            return []
        fingerprint = getattr(self, "fingerprint_", None) or table_fingerprint(ladder, metric)
        probe = self.clone(score_link=link)
        own = probe.family_points(ladder, task, metric, self.family, n_boot=0, fingerprint=fingerprint)
        probe.fingerprint_ = fingerprint
        points = probe.regime_points(ladder, task, metric, 0) if self.blend == "auto" else None
        probe.blend_ = choose_blend(self.blend, points)
        return probe.blended(own)

    # --- persistence (capscale.laws.persist: own_state) -----------------------------------------
    def state_dict(self) -> dict:
        def line(d):
            return {k: np.asarray(v, dtype=float).tolist() for k, v in d.items()}

        return {"task": self.task_, "metric": self.metric_, "family": self.family_, "n_own": self.n_own_,
                "k": self.capabilities_.k, "c0": self.c0_, "chance": self.chance_, "link_name": self.link_name_,
                "previous": self.previous_, "blend": self.blend_,
                "extent": self.extent_, "n_runs": self.n_runs_, "form_used": self.form_used_,
                "fit_warnings": list(self.fit_warnings_), "n_boot_failed": self.n_boot_failed_,
                "link": {**self.link_.to_dict(), "fixed": self.link_.fixed}, "target_line": line(self.target_line_),
                "boot_links": [b.params for b in self.boot_links_],
                "boot_lines": [line(b) for b in self.boot_lines_], "noise": np.asarray(self.noise_).tolist()}

    @classmethod
    def from_state(cls, hyper_parameters: dict, state: dict) -> "ObservationalPredictor":
        predictor = cls(**hyper_parameters)
        k = int(state["k"])
        form = link_form(k) if state["link_name"] == "sigmoid" else linear_link_form(k)
        reference = {name: tuple(v) for name, v in state["link"]["reference"].items()}

        def link(params):
            return FitResult(form=form, params=params, reference=reference, objective=float("nan"),
                             n_points=state["link"]["n_points"], n_starts=0, n_converged=0,
                             fixed=state["link"]["fixed"])

        predictor.task_, predictor.metric_, predictor.loss_metric_ = state["task"], state["metric"], None
        predictor.family_, predictor.n_own_, predictor.c0_ = state["family"], state["n_own"], float(state["c0"])
        predictor.chance_, predictor.link_name_ = state["chance"], state["link_name"]
        predictor.previous_, predictor.blend_ = state.get("previous"), float(state.get("blend", 1.0))
        predictor.extent_, predictor.n_runs_ = state["extent"], state["n_runs"]
        predictor.form_used_, predictor.fit_warnings_ = state["form_used"], state["fit_warnings"]
        predictor.n_boot_failed_ = state["n_boot_failed"]
        predictor.link_ = link(state["link"]["params"])
        predictor.target_line_ = {name: np.asarray(v) for name, v in state["target_line"].items()}
        predictor.boot_links_ = [link(params) for params in state["boot_links"]]
        predictor.boot_lines_ = [{name: np.asarray(v) for name, v in b.items()} for b in state["boot_lines"]]
        predictor.noise_ = np.asarray(state["noise"], dtype=float)
        return predictor

    # --- what the fit says about the families ------------------------------------------------
    @property
    def boot_fits_(self) -> list:
        """The bootstrap's link refits (what ``capscale fit`` counts)."""
        return self.boot_links_

    def describe(self) -> str:
        """A few lines for ``capscale fit``: the scale, the target family's line, the link."""
        line = self.target_line_
        out = [f"{self.form_used_} ({self.n_runs_} models report {self.task_})",
               f"target family {self.family_ or '(new)'}: capability = {np.round(line['slope'], 4).tolist()} * "
               f"(ln C - {self.c0_:.2f}) + {np.round(line['offset'], 4).tolist()} "
               f"(offset sd {np.round(np.sqrt(line['offset_var']), 4).tolist()})",
               f"{self.link_.form.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in self.link_.params.items())]
        if getattr(self, "previous_", None) is not None:
            w = getattr(self, "blend_", 1.0)
            out.append(f"blend: {w:.1f} x pooled + {1 - w:.1f} x the family's previous model ({self.previous_:.4g})")
        if hasattr(self, "capabilities_"):
            eff = self.efficiencies()
            out.append("compute efficiency (e-folds vs the population): "
                       + ", ".join(f"{f} {v:+.2f}" for f, v in eff.items()))
        return "\n".join(out)

    def efficiencies(self) -> pd.Series:
        """Each family's compute efficiency on capability 1, in e-folds of compute relative to the
        population: (offset_F - mu) / slope (a family at +1 reaches a capability with e times less
        compute). Shrunk offsets (empirical Bayes), from the full fit."""
        cap = self.capabilities_
        lines = cap.full.lines
        scores = cap.scores()
        out = {}
        for family in sorted(set(cap.families)):
            rows = cap.family_rows(family)
            mean, _ = lines.offset_posterior(scores[rows], cap.x[rows])
            out[family] = float((mean[0] - lines.mu[0]) / lines.slope[0])
        return pd.Series(out, name="efficiency")


__all__ = ["ObservationalPredictor", "ObservationalError", "link_form", "linear_link_form", "LINKS"]
