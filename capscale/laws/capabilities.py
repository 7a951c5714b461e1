"""Capability measures shared by model families: the task-independent half of observational scaling.

Observational scaling laws (Ruan, Maddison & Hashimoto 2024, "Observational Scaling Laws and the
Predictability of Language Model Performance", arXiv:2405.10938) and Sloth (Maia Polo et al. 2024,
"Sloth: scaling laws for LLM skills to predict multi-benchmark performance across families",
arXiv:2412.06540) explain the benchmark scores of many model families by a few latent capability
dimensions, each linear in log compute with a family-specific efficiency. This module builds that
shared scale from a ladder table; ``capscale.laws.observational`` links it back to one benchmark.

1. **Benchmark matrix** (``benchmark_matrix``): one row per model (its final checkpoint), one column
   per task of the metric that at least ``min_families`` families and ``min_share`` of the models
   report. Everything else stays out of the capability scale (a target task outside it is still
   forecast: its link is fitted on the models that have it), and so does a task with several
   final rows for one model (e.g. 0- and 5-shot under one name), with a warning.
2. **Imputation** (``impute_low_rank``): public tables are block-missing (one family ran MMLU,
   another the multilingual suite). Missing cells are filled by regularised iterative PCA (Josse &
   Husson 2012, "Handling missing values in exploratory multivariate data analysis methods"):
   start from column means; repeat {standardise the completed matrix with its *current* means and
   standard deviations, take the rank-k SVD with each singular value shrunk by the noise variance
   (s -> s - sigma^2 / s, sigma^2 = mean of the discarded eigenvalues), write the reconstruction
   into the missing cells only} until the cells stop moving. Re-estimating the scale every round
   matters: a column observed only for strong families would otherwise be standardised against
   the wrong population.
3. **Capabilities** (``pca_fit``): PCA of the completed matrix standardised per benchmark, each
   benchmark of a suite (name up to the first '-' or '_': hendrycksTest-*, xnli_*) weighted by
   1 / sqrt(suite size) so that 57 MMLU subjects weigh one benchmark. With ``within`` (the
   default) the axes are the principal components of each model's deviation from its family's
   mean (the within level of a multilevel PCA, Di et al. 2009): with a handful of families the
   largest variation in a table is *between* families (one family multilingual, another
   English-only), which is not what grows with scale; the within axes are how benchmarks move
   together as a family scales, and every model's capability is its projection on them. The first
   k scores are the capability measures (PC1 points towards more compute within families).
4. **Family lines** (``fit_family_lines``): capability_j = beta_j (ln C - c0) + u_{family, j} + e.
   The shared slope beta_j is the pooled within-family slope (family efficiency differences cannot
   bias it); the family offsets u are random effects with population mean mu_j and variance tau_j^2
   estimated by the method of moments (DerSimonian & Laird 1986) from each family's offset estimate
   and its sampling variance sigma_j^2 / n_family: empirical Bayes. A family's offset is then
   shrunk towards mu_j by B = tau^2 / (tau^2 + sigma^2 / n) (``Lines.family_line``): a family with
   few models borrows from the others, one with none gets mu_j and the offsets' spread (the larger
   of tau^2 and their sample variance: a handful of families cannot tell a small tau^2 from 0).
   ``random_slopes`` pools each family's own slope the same way (off by default).
5. **Bootstrap** (``CapabilityModel.boot``): families resampled with replacement, then models
   within each drawn family (a family drawn twice counts as two); with fewer than
   ``FAMILY_RESAMPLE_MIN`` families a resample of families is mostly one family repeated, so models
   are resampled within every family instead and the family-level spread comes from tau^2 alone.
   Each resample refits the standardisation, the PCA (rotated onto the full-data axes by
   orthogonal Procrustes, so that its scores mean the same) and the lines; the imputed cells are
   those of the full fit (imputation is refitted once, not per resample).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints

MIN_SHARE = 0.5  # a benchmark enters the capability scale when at least half the models report it
MIN_FAMILIES = 2  # ... and at least two families do (a benchmark of one family says nothing shared)
MAX_COMPONENTS = 3
FAMILY_RESAMPLE_MIN = 4  # fewer families: resample models within families only (see the module docstring)
IMPUTE_MAX_ITER = 2000
IMPUTE_TOL = 1e-10
CACHE_SIZE = 64


class ObservationalError(CapscaleError):
    """A table that cannot give a shared capability scale; the message says what is missing."""


# --- the benchmark matrix ---------------------------------------------------------------------

@dataclass
class BenchmarkMatrix:
    models: pd.DataFrame  # one row per model: family, model, params, tokens, flops
    tasks: list[str]
    values: np.ndarray  # [n_models, n_tasks], NaN where a model did not report the task
    chance: np.ndarray  # [n_tasks], NaN where unknown
    ambiguous: list = field(default_factory=list)  # tasks left out: several final rows for one model

    def row(self, family: str, model: str) -> int | None:
        hit = np.flatnonzero((self.models["family"].to_numpy() == family) & (self.models["model"].to_numpy() == model))
        return int(hit[0]) if len(hit) else None


def model_finals(ladder: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each model's final-checkpoint rows of ``metric`` (all tasks)."""
    rows = ladder[ladder["metric"] == metric]
    if rows.empty:
        raise ObservationalError(f"the table has no rows with metric {metric!r}")
    return final_checkpoints(rows)


def benchmark_matrix(ladder: pd.DataFrame, metric: str, min_share: float = MIN_SHARE,
                     min_families: int = MIN_FAMILIES) -> BenchmarkMatrix:
    """Models x shared benchmarks of ``metric`` (see the module docstring for the rule)."""
    finals = model_finals(ladder, metric)
    families = sorted(finals["family"].unique())
    if len(families) < 2:
        raise ObservationalError(f"observational scaling pools model families; the table has {len(families)} "
                                 f"({', '.join(families) or 'none'}): use a per-family method (direct, two-step, "
                                 "carry-forward)")
    repeated = finals.duplicated(["family", "model", "task"], keep=False)
    ambiguous = sorted(finals.loc[repeated, "task"].unique())  # e.g. 0- and 5-shot rows under one name
    finals = finals[~finals["task"].isin(ambiguous)]
    per_task = finals.groupby("task").agg(n_models=("model", "size"), n_families=("family", "nunique"))
    n_models = finals[["family", "model"]].drop_duplicates().shape[0]
    keep = per_task[(per_task["n_families"] >= min_families) & (per_task["n_models"] >= min_share * n_models)]
    if keep.empty:
        best = per_task.sort_values(["n_families", "n_models"], ascending=False).head(3)
        shown = ", ".join(f"{t} ({r.n_models} models, {r.n_families} families)" for t, r in best.iterrows())
        raise ObservationalError(f"no {metric!r} benchmark is shared by {min_families} families and "
                                 f"{min_share:.0%} of the {n_models} models (best: {shown}); the families have no "
                                 "common benchmarks to place them on one capability scale")
    tasks = sorted(keep.index)
    shared = finals[finals["task"].isin(tasks)]
    wide = shared.pivot_table(index=["family", "model"], columns="task", values="value", aggfunc="first")
    wide = wide.reindex(columns=tasks)
    meta = shared.groupby(["family", "model"], sort=True)[["params", "tokens", "flops"]].first()
    meta = meta.reindex(wide.index).reset_index()
    if "chance" in shared:
        chance = shared.groupby("task")["chance"].median().reindex(tasks).to_numpy(float)
    else:
        chance = np.full(len(tasks), np.nan)
    return BenchmarkMatrix(meta, tasks, wide.to_numpy(float), chance, ambiguous)


# --- imputation ---------------------------------------------------------------------------------

def suite_of(task: str) -> str:
    """The suite a task belongs to: its name up to the first '-' or '_' (hendrycksTest-anatomy ->
    hendrycksTest, xnli_fr -> xnli, arc_easy -> arc)."""
    return re.split(r"[-_]", task, maxsplit=1)[0]


def suite_weights(tasks: list[str]) -> np.ndarray:
    """1 / sqrt(suite size) per task: in the PCA a suite of 57 subjects weighs what one benchmark
    weighs (its columns' variance adds up to one column's), so it cannot become capability 1 alone."""
    suites = [suite_of(t) for t in tasks]
    sizes = {s: suites.count(s) for s in set(suites)}
    return np.array([1.0 / np.sqrt(sizes[s]) for s in suites])


def _standardise(X: np.ndarray, scale: bool, weights: np.ndarray | None = None):
    """(Z, mean, effective scale): columns centred, divided by their sd (``scale``) and multiplied by
    ``weights``; Z = (X - mean) / effective scale."""
    mean = X.mean(axis=0)
    sd = X.std(axis=0) if scale else np.ones(X.shape[1])
    sd = np.where(sd > 1e-12, sd, 1.0)
    if weights is not None:
        sd = sd / weights
    return (X - mean) / sd, mean, sd


def shrunk_reconstruction(Z: np.ndarray, rank: int) -> np.ndarray:
    """Rank-``rank`` SVD reconstruction with singular values shrunk by the noise variance
    (Josse & Husson 2012): s_j -> s_j - sigma^2 / s_j, sigma^2 = mean of the discarded s^2."""
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    rank = min(rank, len(S))
    rest = S[rank:] ** 2
    sigma2 = float(rest.mean()) if len(rest) else 0.0
    kept = S[:rank]
    shrunk = np.where(kept > 0, np.maximum(kept - sigma2 / np.maximum(kept, 1e-300), 0.0), 0.0)
    return (U[:, :rank] * shrunk) @ Vt[:rank]


def impute_low_rank(values: np.ndarray, rank: int, scale: bool = True, max_iter: int = IMPUTE_MAX_ITER,
                    tol: float = IMPUTE_TOL, weights: np.ndarray | None = None) -> np.ndarray:
    """Missing cells (NaN) filled by regularised iterative PCA; observed cells are returned unchanged.
    ``weights``: column weights of the PCA (``suite_weights``). A column with no observed value
    cannot be imputed and is an error."""
    X = np.asarray(values, dtype=float)
    missing = ~np.isfinite(X)
    if not missing.any():
        return X.copy()
    observed_any = (~missing).any(axis=0)
    if not observed_any.all():
        raise ObservationalError(f"{int((~observed_any).sum())} benchmark column(s) have no observed value")
    col_mean = np.nanmean(np.where(missing, np.nan, X), axis=0)
    filled = np.where(missing, col_mean, X)
    for _ in range(max_iter):
        Z, mean, sd = _standardise(filled, scale, weights)
        new = shrunk_reconstruction(Z, rank) * sd + mean
        change = float(np.mean((new[missing] - filled[missing]) ** 2))
        filled[missing] = new[missing]
        if change <= tol * max(float(np.mean(filled ** 2)), 1e-12):
            break
    return filled


# --- PCA and family lines -------------------------------------------------------------------

@dataclass
class Lines:
    """capability_j = slope_j * x + offset_{family, j} + e, x = ln C - c0; random family offsets, and
    with ``slope_tau2`` random family slopes too (partially pooled towards the shared ``slope``)."""
    slope: np.ndarray  # [k] shared (population) slope
    sigma2: np.ndarray  # [k] variance of a model around its family's line
    mu: np.ndarray  # [k] population mean of the family offsets
    tau2: np.ndarray  # [k] between-family variance of the offsets (method of moments, >= 0)
    spread2: np.ndarray  # [k] offset variance a new family gets: max(tau2, sample variance of the offsets)
    n_families: int
    slope_tau2: np.ndarray | None = None  # [k] between-family variance of the slopes; None: one shared slope

    def family_slope(self, scores: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The slope of a family with models ``scores`` [n, k] at ``x`` [n]: the shared slope, or with
        random slopes its own least-squares slope shrunk towards it by tau2 / (tau2 + sigma2 / Sxx)."""
        dx = x - x.mean() if len(x) else x
        sxx = float(dx @ dx)
        if self.slope_tau2 is None or sxx <= 1e-12:
            return self.slope.copy()
        own = dx @ (scores - scores.mean(axis=0)) / sxx
        shrink = np.where(self.slope_tau2 > 0, self.slope_tau2 / (self.slope_tau2 + self.sigma2 / sxx), 0.0)
        return self.slope + shrink * (own - self.slope)

    def family_line(self, scores: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slope [k], offset mean [k], offset variance [k]) of a family given its models' capabilities
        ``scores`` [n, k] at ``x`` [n]; with no models the population's (slope, mu, spread2)."""
        if len(x) == 0:
            return self.slope.copy(), self.mu.copy(), self.spread2.copy()
        slope = self.family_slope(scores, x)
        alpha = np.mean(scores - np.outer(x, slope), axis=0)
        noise = self.sigma2 / len(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            shrink = np.where(self.tau2 + noise > 0, self.tau2 / (self.tau2 + noise), 1.0)
        return slope, self.mu + shrink * (alpha - self.mu), shrink * noise

    def offset_posterior(self, scores: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean [k], variance [k]) of a family's offset (``family_line`` without the slope)."""
        return self.family_line(scores, x)[1:]


def fit_family_lines(scores: np.ndarray, x: np.ndarray, groups: np.ndarray, random_slopes: bool = False) -> Lines:
    """Pooled within-family slope, residual variance, and DerSimonian-Laird offsets (module docstring).
    ``groups``: a family label per row (a resampled family drawn twice carries two labels).
    ``random_slopes``: each family's own slope too, partially pooled (DerSimonian-Laird on the
    family slopes with sampling variance sigma2 / Sxx); one shared slope where too few models."""
    scores = np.asarray(scores, dtype=float)
    labels, g = np.unique(groups, return_inverse=True)
    m = len(labels)
    counts = np.bincount(g, minlength=m).astype(float)
    x_mean = np.bincount(g, weights=x, minlength=m) / counts
    s_mean = np.stack([np.bincount(g, weights=scores[:, j], minlength=m) for j in range(scores.shape[1])], 1) / counts[:, None]
    dx = x - x_mean[g]
    sxx = float(dx @ dx)
    if sxx <= 1e-12:
        raise ObservationalError("no family has two models of different compute: the shared slope of "
                                 "capability in log compute cannot be determined")
    ds = scores - s_mean[g]
    slope = dx @ ds / sxx
    resid = ds - np.outer(dx, slope)
    dof = len(x) - m - 1
    if dof < 1:
        raise ObservationalError(f"{len(x)} models in {m} families leave no degree of freedom for the spread of "
                                 "models around their family's line")
    sigma2 = np.maximum(np.sum(resid ** 2, axis=0) / dof, 1e-12)
    slopes = np.tile(slope, (m, 1))  # [m, k] each family's slope (the shared one without random slopes)
    slope_tau2 = None
    if random_slopes:
        fitted = random_slope_fit(dx, ds, g, m, slope, len(x))
        if fitted is not None:
            slope, sigma2, slope_tau2, slopes = fitted
    alpha = s_mean - x_mean[:, None] * slopes  # [m, k] each family's offset estimate
    mu, tau2 = dersimonian_laird(alpha, counts, sigma2)
    sample = alpha.var(axis=0, ddof=1) if m > 1 else np.zeros_like(tau2)
    spread2 = np.maximum(tau2, sample)
    return Lines(slope, sigma2, mu, tau2, spread2, m, slope_tau2)


def random_slope_fit(dx: np.ndarray, ds: np.ndarray, g: np.ndarray, m: int, shared: np.ndarray, n: int):
    """(population slope, sigma2, slope tau2, each family's shrunk slope [m, k]) of random family slopes,
    or None where the families leave no degree of freedom for them."""
    sxx_g = np.bincount(g, weights=dx * dx, minlength=m)
    spread = sxx_g > 1e-12
    dof = n - m - int(spread.sum())
    if spread.sum() < 2 or dof < 1:
        return None
    sxy_g = np.stack([np.bincount(g, weights=dx * ds[:, j], minlength=m) for j in range(ds.shape[1])], 1)
    own = np.where(spread[:, None], sxy_g / np.where(spread, sxx_g, 1.0)[:, None], shared[None, :])
    sigma2 = np.maximum(np.sum((ds - dx[:, None] * own[g]) ** 2, axis=0) / dof, 1e-12)
    slope, tau2 = dersimonian_laird(own[spread], sxx_g[spread], sigma2)
    shrink = np.where(tau2[None, :] > 0, tau2[None, :] / (tau2[None, :] + sigma2[None, :] / np.maximum(sxx_g, 1e-12)[:, None]), 0.0)
    slopes = np.where(spread[:, None], slope + shrink * (own - slope), slope)
    return slope, sigma2, tau2, slopes


def dersimonian_laird(means: np.ndarray, counts: np.ndarray, sigma2: np.ndarray, mu: np.ndarray | None = None):
    """(mu [k], tau2 [k]) of group means [m, k] with sampling variances sigma2 / counts: the
    method-of-moments between-group variance of DerSimonian & Laird (1986), truncated at 0, and the
    precision-weighted population mean (``mu`` given: fixed there, e.g. 0 for residuals)."""
    m = len(counts)
    w = counts[:, None] / sigma2[None, :]
    centre = np.sum(w * means, 0) / np.sum(w, 0) if mu is None else mu
    q = np.sum(w * (means - centre) ** 2, 0)
    dof = m - 1 if mu is None else m
    denominator = np.sum(w, 0) - (np.sum(w ** 2, 0) / np.sum(w, 0) if mu is None else 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau2 = np.where(denominator > 0, np.maximum((q - dof) / denominator, 0.0), 0.0)
    if mu is None:
        w_random = 1.0 / (tau2[None, :] + sigma2[None, :] / counts[:, None])
        mu = np.sum(w_random * means, 0) / np.sum(w_random, 0)
    return mu, tau2


@dataclass
class FamilyEffect:
    """A family's own departure from the pooled forecast on one benchmark, a line in log compute,
    partially pooled: its models' mean residual and residual slope, each shrunk towards 0 by
    tau2 / (tau2 + sampling variance), tau2 by DerSimonian-Laird across families."""
    intercept: float = 0.0  # at the family's mean x
    slope: float = 0.0
    centre: float = 0.0  # the family's mean x
    var_intercept: float = 0.0
    var_slope: float = 0.0
    within: np.ndarray = field(default_factory=lambda: np.zeros(0))  # noise of one new model (residuals)

    def at(self, x: float) -> tuple[float, float]:
        """(mean, variance) of the effect at x = ln C - c0."""
        d = x - self.centre
        return self.intercept + self.slope * d, self.var_intercept + self.var_slope * d * d


def _shrink(tau2: float, sampling: float) -> float:
    return float(tau2 / (tau2 + sampling)) if tau2 > 0 and np.isfinite(sampling) else 0.0


def family_effect(residuals: np.ndarray, x: np.ndarray, groups: np.ndarray, family: str | None) -> FamilyEffect:
    """``residuals`` [n] of the models reporting a benchmark against their family's pooled forecast,
    at ``x`` [n], ``groups`` their families. A family not among them gets no effect and the raw
    residuals as noise (they include the spread of family effects)."""
    labels, g = np.unique(groups, return_inverse=True)
    m = len(labels)
    counts = np.bincount(g, minlength=m).astype(float)
    centre = np.bincount(g, weights=x, minlength=m) / counts
    means = np.bincount(g, weights=residuals, minlength=m) / counts
    dx = x - centre[g]
    sxx = np.bincount(g, weights=dx * dx, minlength=m)
    spread = sxx > 1e-12
    slopes = np.where(spread, np.bincount(g, weights=dx * residuals, minlength=m) / np.where(spread, sxx, 1.0), 0.0)
    within = residuals - means[g] - slopes[g] * dx
    dof = len(residuals) - m - int(spread.sum())
    if dof < 1 or family not in set(labels):
        return FamilyEffect(within=residuals.copy())
    sigma2 = np.array([max(float(np.sum(within ** 2) / dof), 1e-12)])
    tau2_intercept = dersimonian_laird(means[:, None], counts, sigma2, mu=np.zeros(1))[1][0]
    tau2_slope = dersimonian_laird(slopes[spread][:, None], sxx[spread], sigma2, mu=np.zeros(1))[1][0]
    i = list(labels).index(family)
    b0 = _shrink(tau2_intercept, sigma2[0] / counts[i])
    b1 = _shrink(tau2_slope, sigma2[0] / sxx[i]) if spread[i] else 0.0
    return FamilyEffect(b0 * means[i], b1 * slopes[i], float(centre[i]), b0 * sigma2[0] / counts[i],
                        b1 * sigma2[0] / sxx[i] if spread[i] else 0.0, within * np.sqrt(len(residuals) / dof))


@dataclass
class CapabilityFit:
    """One fit of the capability scale: standardisation, axes, and the family lines on them."""
    mean: np.ndarray  # [p]
    sd: np.ndarray  # [p]
    loadings: np.ndarray  # [p, k]
    explained: np.ndarray  # [k] share of the variance of each component
    lines: Lines

    def scores(self, completed: np.ndarray) -> np.ndarray:
        return ((completed - self.mean) / self.sd) @ self.loadings


def group_centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row minus the mean of its group's rows (NaN-free input)."""
    _, g = np.unique(groups, return_inverse=True)
    counts = np.bincount(g).astype(float)
    if values.ndim == 1:
        return values - (np.bincount(g, weights=values) / counts)[g]
    means = np.stack([np.bincount(g, weights=values[:, j]) for j in range(values.shape[1])], 1) / counts[:, None]
    return values - means[g]


def pca_fit(completed: np.ndarray, k: int, scale: bool = True, weights: np.ndarray | None = None,
            groups: np.ndarray | None = None):
    """(mean, effective scale, loadings [p, k], explained share [k]) of the completed matrix; with
    ``groups``, the axes are those of the within-group deviations (multilevel PCA, within level)."""
    Z, mean, sd = _standardise(completed, scale, weights)
    _, S, Vt = np.linalg.svd(Z if groups is None else group_centred(Z, groups), full_matrices=False)
    total = float(np.sum(S ** 2)) or 1.0
    return mean, sd, Vt[:k].T.copy(), S[:k] ** 2 / total


def orient(loadings: np.ndarray, scores: np.ndarray, x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Signs of the axes: PC1 grows with compute within families, the others have a positive loading sum."""
    out = loadings.copy()
    known = np.isfinite(x)
    for j in range(out.shape[1]):
        sign = 0.0
        if j == 0 and known.sum() > 1:
            dx = group_centred(x[known], groups[known])
            sign = np.sign(dx @ group_centred(scores[known, 0], groups[known]))
        out[:, j] *= sign or (np.sign(out[:, j].sum()) or 1.0)
    return out


def procrustes(loadings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``loadings`` rotated (orthogonally) onto ``reference``: a resample's axes in the full fit's terms."""
    U, _, Vt = np.linalg.svd(loadings.T @ reference)
    return loadings @ (U @ Vt)


def fit_capabilities(completed: np.ndarray, x: np.ndarray, groups: np.ndarray, k: int, scale: bool,
                     reference: np.ndarray | None = None, weights: np.ndarray | None = None,
                     within: bool = True, random_slopes: bool = False) -> CapabilityFit:
    """Standardise, PCA (axes of the within-family deviations with ``within``; oriented, or rotated
    onto ``reference`` axes), family lines on the models with known compute."""
    mean, sd, loadings, explained = pca_fit(completed, k, scale, weights, groups if within else None)
    scores = ((completed - mean) / sd) @ loadings
    loadings = orient(loadings, scores, x, groups) if reference is None else procrustes(loadings, reference)
    scores = ((completed - mean) / sd) @ loadings
    known = np.isfinite(x)
    lines = fit_family_lines(scores[known], x[known], groups[known], random_slopes)
    return CapabilityFit(mean, sd, loadings, explained, lines)


# --- the model: full fit + bootstrap ------------------------------------------------------------

@dataclass
class CapabilityModel:
    matrix: BenchmarkMatrix
    k: int
    scale: bool
    completed: np.ndarray  # [n, p] the matrix with missing cells imputed
    x: np.ndarray  # [n] ln(flops) - c0, NaN where compute is unknown
    c0: float
    full: CapabilityFit
    weights: np.ndarray | None = None  # column weights of the PCA (suite_weights), None = equal
    within: bool = True  # axes from within-family variation (multilevel PCA) rather than all of it
    random_slopes: bool = False  # family slopes partially pooled (else one shared slope)
    boot: list = field(default_factory=list)  # CapabilityFit per resample
    boot_counts: np.ndarray | None = None  # [B, n] how often each model was drawn in each kept resample
    n_boot_failed: int = 0
    family_resampling: bool = True
    warnings: list = field(default_factory=list)
    _lines: dict = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def families(self) -> np.ndarray:
        return self.matrix.models["family"].to_numpy(dtype=object)

    @cached_property
    def boot_scores(self) -> np.ndarray:
        """[B, n, k] every model's capabilities under each resample's fit."""
        if not self.boot:
            return np.zeros((0, len(self.x), self.k))
        return np.stack([fit.scores(self.completed) for fit in self.boot])

    def family_lines(self, b: int | None = None) -> dict:
        """family -> (slope, offset mean, offset variance) under the full fit (``b`` None) or resample
        ``b``; the same for every task, so remembered."""
        if b not in self._lines:
            fit, scores = (self.full, self.scores()) if b is None else (self.boot[b], self.boot_scores[b])
            self._lines[b] = {f: fit.lines.family_line(scores[rows], self.x[rows]) for f, rows in self.members.items()}
        return self._lines[b]

    @cached_property
    def members(self) -> dict:
        """family -> rows of its models with known compute."""
        return {f: np.flatnonzero((self.families == f) & np.isfinite(self.x)) for f in np.unique(self.families)}

    def scores(self, fit: CapabilityFit | None = None) -> np.ndarray:
        return (fit or self.full).scores(self.completed)

    def family_rows(self, family: str | None) -> np.ndarray:
        """Rows of ``family``'s models with known compute (empty for a new family)."""
        return self.members.get(family, np.array([], dtype=int))


def resample_rows(groups: np.ndarray, rng: np.random.Generator, by_family: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, pseudo-family labels) of one resample: families with replacement, then models within
    each drawn family (``by_family``); or models within every family."""
    labels = np.unique(groups)
    members = {f: np.flatnonzero(groups == f) for f in labels}
    drawn = rng.choice(labels, size=len(labels), replace=True) if by_family else labels
    rows, pseudo = [], []
    for d, family in enumerate(drawn):
        idx = members[family]
        rows.append(rng.choice(idx, size=len(idx), replace=True))
        pseudo.append(np.full(len(idx), d))
    return np.concatenate(rows), np.concatenate(pseudo)


def build_capability_model(ladder: pd.DataFrame, metric: str, k: int, scale: bool = True, min_share: float = MIN_SHARE,
                           min_families: int = MIN_FAMILIES, suites: bool = True, within: bool = True,
                           random_slopes: bool = False) -> CapabilityModel:
    """The full-data capability scale (no bootstrap; see ``bootstrap_capabilities``). ``suites``:
    weight the benchmarks of a suite down to one benchmark's worth (``suite_weights``)."""
    matrix = benchmark_matrix(ladder, metric, min_share, min_families)
    flops = matrix.models["flops"].to_numpy(float)
    known = np.isfinite(flops) & (flops > 0)
    notes = []
    if matrix.ambiguous:
        notes.append(f"{len(matrix.ambiguous)} task(s) with several final rows per model ({', '.join(matrix.ambiguous[:4])}"
                     f"{', ...' if len(matrix.ambiguous) > 4 else ''}) left out of the capability scale: filter the "
                     "table (e.g. on num_fewshot) to use them")
    if not known.all():
        missing = matrix.models.loc[~known, "model"].tolist()
        notes.append(f"{len(missing)} model(s) without compute ({', '.join(missing[:5])}) shape the capability "
                     "scale but not the lines in log compute")
    if known.sum() < 3:
        raise ObservationalError(f"only {int(known.sum())} model(s) have a known compute (flops, or params and "
                                 "tokens): a capability-compute line needs at least 3")
    k = int(min(k, matrix.values.shape[1], len(flops) - 1))
    log_c = np.where(known, np.log(np.where(known, flops, 1.0)), np.nan)
    c0 = float(np.nanmean(log_c))
    x = log_c - c0
    weights = suite_weights(matrix.tasks) if suites else None
    completed = impute_low_rank(matrix.values, k, scale, weights=weights)
    groups = matrix.models["family"].to_numpy()
    full = fit_capabilities(completed, x, groups, k, scale, weights=weights, within=within, random_slopes=random_slopes)
    model = CapabilityModel(matrix, k, scale, completed, x, c0, full, weights, within, random_slopes, warnings=notes)
    model.family_resampling = len(np.unique(groups)) >= FAMILY_RESAMPLE_MIN
    model.boot_counts = np.zeros((0, len(groups)))
    return model


def bootstrap_capabilities(base: CapabilityModel, n_boot: int, seed: int) -> CapabilityModel:
    """``base`` with ``n_boot`` resamples of families and models refitted (module docstring, 5.)."""
    groups = base.families
    rng = np.random.default_rng(seed)
    fits, counts, failed = [], [], 0
    for _ in range(n_boot):
        rows, pseudo = resample_rows(groups, rng, base.family_resampling)
        try:
            fit = fit_capabilities(base.completed[rows], base.x[rows], pseudo, base.k, base.scale,
                                   reference=base.full.loadings, weights=base.weights, within=base.within,
                                   random_slopes=base.random_slopes)
        except (ObservationalError, np.linalg.LinAlgError):
            failed += 1
            continue
        fits.append(fit)
        counts.append(np.bincount(rows, minlength=len(groups)))
    return replace(base, boot=fits, boot_counts=np.array(counts, dtype=float).reshape(len(counts), len(groups)),
                   n_boot_failed=failed)


_CACHE: "OrderedDict[tuple, CapabilityModel]" = OrderedDict()


def table_fingerprint(ladder: pd.DataFrame, metric: str) -> str:
    """A digest of what the capability scale reads: every row of the metric (order included)."""
    rows = ladder.loc[ladder["metric"] == metric, ["family", "model", "step", "task", "value", "params", "tokens",
                                                    "flops"]]
    return hashlib.sha1(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()


def _remember(key: tuple, make) -> CapabilityModel:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def capability_model(ladder, metric: str, k: int, scale: bool = True, min_share: float = MIN_SHARE,
                     min_families: int = MIN_FAMILIES, n_boot: int = 0, seed: int = 0,
                     fingerprint: str | None = None, suites: bool = True, within: bool = True,
                     random_slopes: bool = False) -> CapabilityModel:
    """The capability scale of a table with ``n_boot`` resamples, remembered per table content: every
    task of a backtest (and every internal fold, which removes the same runs for every task) shares
    one scale, and the resamples are drawn once. ``ladder``: the table, or a function returning it
    (called only when the cache misses; ``fingerprint`` is then required)."""
    if fingerprint is None:
        fingerprint = table_fingerprint(ladder, metric)

    def build():
        return build_capability_model(ladder() if callable(ladder) else ladder, metric, k, scale, min_share,
                                      min_families, suites, within, random_slopes)

    base_key = (fingerprint, metric, k, scale, min_share, min_families, suites, within, random_slopes)
    base = _remember(base_key, build)
    if n_boot == 0:
        return base
    return _remember(base_key + (n_boot, seed), lambda: bootstrap_capabilities(base, n_boot, seed))
