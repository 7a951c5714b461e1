"""Per-item choice-mass predictor: forecast accuracy from how each item's margins move with scale.

Schaeffer et al. 2024 ("Why Has Predicting Downstream Capabilities of Frontier AI Models with
Scale Remained Elusive?", arXiv:2406.04391) trace multiple-choice accuracy back through a chain
log p(correct) -> p(correct) -> p normalised over the offered choices -> accuracy / Brier, and
show that predictability is lost along it because accuracy depends on how probability mass
moves on each item's *specific incorrect choices*. They propose no predictor; this is one.

Model. For item i with gold choice g and every incorrect choice j, the margin
m_ij(k) = s_ig(k) - s_ij(k) at checkpoint k (s = the metric's score: raw log-likelihood for
acc / p_correct / brier, per character for acc_norm, per byte for acc_bytes, lm-eval's
definitions as in capscale.metrics) is a line in z = centred ln(scale) (or the standardised task
loss, x="loss"), one line per item-distractor pair:

    m_p(k) = a_p + b_p z_k + e_pk,   (a_p, b_p) ~ N(mu, Tau),   e_pk ~ N(0, sigma_p^2).

Scale x uses each run's final checkpoint (an intermediate checkpoint is off the compute-efficient
frontier, as for DirectPredictor and step 1 of TwoStepPredictor); x="loss" uses every checkpoint
(the loss -> metric link holds along training, as step 2 of the OLMo ladder recipe).

Partial pooling. The pairs' lines are random effects of one population per task (the linear
mixed model of Laird & Ware 1982, "Random-effects models for longitudinal data"); (mu, Tau) are
fitted by type-II maximum likelihood, so a pair's line is a precision-weighted compromise between
its own least-squares line and the population: a pair seen at one checkpoint, or at a few noisy
ones, takes its slope mostly from the population, a pair with many clean points keeps its own.
We pool rather than fit pairs separately because public ladders have 2-5 sizes per family:
separate lines through 3 noisy points extrapolate wildly, and a single task-level curve is what
already fails (Schaeffer et al.). Each pair's noise is its own residual variance moderated toward
the pooled one with ``noise_prior_df`` pseudo degrees of freedom (Smyth 2004, "Linear models and
empirical Bayes methods for assessing differential expression", SAGMB 3:3): items differ a lot in
how much their margins jump between checkpoints, but 1-3 residual degrees of freedom per pair
(public ladders) cannot estimate that alone.

Residual structure (noise_structure). A checkpoint shock shared by every pair (a checkpoint
better or worse than the trend overall) leaves a common error in every fitted line, which an
item bootstrap cannot see; the forecast draws it, and the target's own shock, from their
estimated variance. That variance rests on K - 2 checkpoints and is used as a plug-in (normal
draws), like the residual the other predictors add: drawing it from its sampling distribution
(Student-t draws) made the interval [0, 1] on 6 of the 19 backtests in
results/backtests/choice_mass.md, saturated tasks included. The rest of the noise is
equicorrelated within an item (its margins share the gold choice's score).

Forecast. At the target the margins have a Gaussian predictive distribution (posterior of the
line + noise); an item is won when every margin is positive (an exact zero goes to the lower
choice index, as capscale.metrics' first-argmax rule), so accuracy = the expected share of items
won, by seeded Monte Carlo; p_correct and brier come from the same draws (softmax of the raw
margins). Interval: a seeded bootstrap over items refits the pooling (mu, Tau; pair noise kept)
on each resample and draws one realisation of the target, shocks included, so it is a prediction
interval for the measured value on a benchmark of this size (item sampling included, as the other
predictors' item resampling). With x="loss" the target's loss comes from step 1 of
TwoStepPredictor (Bhagia et al. 2024), refitted on resampled runs in every replicate.

Special items: one choice -> always correct (counted, never modelled); a pair whose margin is
exactly 0 at every checkpoint (duplicate choices) -> decided by index, never modelled; an item
missing at some checkpoints -> fitted on the checkpoints it has (counted in ``counts_``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import final_checkpoints
from capscale.laws.fitting import FitError, FitResult, one_blas_thread
from capscale.laws.forms import SCALE_INPUTS
from capscale.laws.base import REPORT_EVERY, Forecast, RunColumns, run_keys
from capscale.progress import report_refits
from capscale.laws.calibration import DEFAULT_GROWTH
from capscale.laws.predictors import STEP1_FORMS, TaskPredictor, TwoStepPredictor, fit_step1, n_free, predict_loss
from capscale.schema import target_scale

SCORE_OF = {"acc": "raw", "p_correct": "raw", "brier": "raw", "acc_norm": "chars", "acc_bytes": "bytes"}
LENGTH_COLUMN = {"chars": "n_chars", "bytes": "n_bytes"}
ROW_COLUMNS = ("checkpoint", "task", "item", "choice", "gold", "logprob")
X_CHOICES = ("auto", "flops", "params", "tokens", "loss")
META_COLUMNS = ["checkpoint", "family", "model", "params", "tokens", "flops", "step"]


# --- per-choice rows -> per-item trajectories ------------------------------------------------


def load_choice_rows(path: str | Path) -> pd.DataFrame:
    """Per-choice rows from a results store (folder) or a CSV / CSV.gz / Parquet file."""
    from capscale.ladder import read_table
    from capscale.store import ResultsStore

    path = Path(path)
    if path.is_dir():
        rows = ResultsStore(path).read_choices()
    elif not path.exists():
        raise CapscaleError(f"{path}: no such per-choice rows file or results store")
    else:
        rows = read_table(path, "a per-choice rows file (or a results store folder)")
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise CapscaleError(f"{path}: per-choice rows lack columns {missing} (DESIGN.md: checkpoint, task, item, "
                            "choice, gold, logprob, n_tokens, n_chars, n_bytes, greedy)")
    return rows


def choice_scores(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The score each choice is ranked by for ``metric`` (lm-eval's acc / acc_norm / acc_bytes)."""
    if metric not in SCORE_OF:
        raise CapscaleError(f"choice-mass forecasts one of {', '.join(SCORE_OF)}, not {metric!r}")
    logprob = rows["logprob"].to_numpy(float)
    if not np.all(np.isfinite(logprob)):
        raise CapscaleError(f"{int((~np.isfinite(logprob)).sum())} per-choice logprob(s) are NaN or infinite")
    kind = SCORE_OF[metric]
    if kind == "raw":
        return logprob
    column = LENGTH_COLUMN[kind]
    lengths = rows[column].to_numpy(float) if column in rows else np.full(len(rows), -1.0)
    if np.any(~np.isfinite(lengths) | (lengths < 0)):
        raise CapscaleError(f"{metric} divides by {column}, which is unknown (-1 or missing) for "
                            f"{int((~(lengths >= 0)).sum())} row(s); forecast acc (raw log-likelihood) instead")
    return logprob / np.maximum(lengths, 1.0)  # capscale.metrics clips lengths at 1 the same way


@dataclass
class ChoiceTrajectories:
    """Every item's choice scores across checkpoints: ``scores[i, c, k]`` (NaN = not scored)."""

    task: str
    items: np.ndarray  # item ids, [I]
    checkpoints: list[str]  # [K]
    scores: np.ndarray  # [I, C, K] in the metric's normalisation
    logprob: np.ndarray  # [I, C, K] raw log-likelihoods (p_correct, brier, choice mass)
    gold: np.ndarray  # gold choice index per item, [I]
    present: np.ndarray  # [I, C] the choice exists for the item (at some checkpoint)
    relabelled: int = 0  # (checkpoint, item) gold labels moved across an exact tie (settle_gold)

    @property
    def n_choices(self) -> np.ndarray:
        return self.present.sum(1)


def choice_trajectories(rows: pd.DataFrame, task: str, checkpoints: list[str],
                        metric: str = "acc") -> ChoiceTrajectories:
    """Per-choice rows of one task at the given checkpoints -> :class:`ChoiceTrajectories`."""
    rows = rows[(rows["task"].astype(str) == task) & rows["checkpoint"].astype(str).isin(checkpoints)]
    if rows.empty:
        raise CapscaleError(f"task {task!r}: no per-choice rows at the ladder's checkpoints "
                            f"({', '.join(checkpoints[:4])}{' ...' if len(checkpoints) > 4 else ''})")
    scored = set(rows["checkpoint"].astype(str))
    checkpoints = [c for c in checkpoints if c in scored]  # a checkpoint without rows is counted by the caller
    if rows.duplicated(["checkpoint", "item", "choice"]).any():
        first = rows[rows.duplicated(["checkpoint", "item", "choice"])].iloc[0]
        raise CapscaleError(f"task {task!r}: checkpoint {first['checkpoint']!r} item {first['item']!r} has "
                            f"choice {first['choice']!r} twice")
    gold_flags = rows["gold"].astype(bool).to_numpy()
    golds = rows.loc[gold_flags].groupby(["checkpoint", "item"])["choice"]
    per_item = rows.groupby(["checkpoint", "item"]).size()
    n_gold = golds.size().reindex(per_item.index, fill_value=0)
    if (n_gold != 1).any():
        bad = n_gold[n_gold != 1].index[0]
        raise CapscaleError(f"task {task!r}: item {bad[1]!r} at {bad[0]!r} has {int(n_gold[bad])} gold choices; "
                            "exactly one is required")
    rows, relabelled = settle_gold(rows, golds.first(), task)
    gold_by_item = rows.loc[rows["gold"].astype(bool)].groupby("item")["choice"].min()
    item_codes, items = pd.factorize(rows["item"], sort=True)
    k_codes = pd.Index(checkpoints).get_indexer(rows["checkpoint"].astype(str))
    choice = rows["choice"].to_numpy()
    if not np.issubdtype(choice.dtype, np.integer) or choice.min() < 0:
        raise CapscaleError(f"task {task!r}: choice indices must be non-negative integers")
    shape = (len(items), int(choice.max()) + 1, len(checkpoints))
    scores, logprob = np.full(shape, np.nan), np.full(shape, np.nan)
    scores[item_codes, choice, k_codes] = choice_scores(rows, metric)
    logprob[item_codes, choice, k_codes] = rows["logprob"].to_numpy(float)
    gold = gold_by_item.reindex(items).to_numpy(int)
    present = np.isfinite(scores).any(2)
    return ChoiceTrajectories(task, np.asarray(items), list(checkpoints), scores, logprob, gold, present, relabelled)


def settle_gold(rows: pd.DataFrame, gold: pd.Series, task: str) -> tuple[pd.DataFrame, int]:
    """One gold index per item. A checkpoint whose gold index differs from the item's usual one is
    accepted only where the two choices are exactly tied there (a converter that does not know the
    option order can only place the gold by the tie-break, as the inverse-scaling pilot files do): the
    margin is 0 either way, so the label moves to the usual index (and the tie there is broken by that
    index, which may differ from the source's own count by those items). Any other change is an error.
    Returns the rows and the number of (checkpoint, item) labels moved."""
    usual = gold.groupby(level="item").agg(lambda g: g.value_counts().sort_index().idxmax())
    odd = gold[gold.to_numpy() != usual.reindex(gold.index.get_level_values("item")).to_numpy()]
    if odd.empty:
        return rows, 0
    lookup = rows.set_index(["checkpoint", "item", "choice"])["logprob"]
    for (checkpoint, item), choice in odd.items():
        other = usual[item]
        tied = (checkpoint, item, other) in lookup.index and lookup[(checkpoint, item, choice)] == lookup[
            (checkpoint, item, other)]
        if not tied:
            raise CapscaleError(f"task {task!r}: item {item!r} has gold choice {choice} at {checkpoint!r} but {other} "
                                "elsewhere (the item changed between runs)")
    rows = rows.copy()
    keys = pd.MultiIndex.from_arrays([rows["checkpoint"], rows["item"]])
    moved = keys.isin(odd.index)
    rows.loc[moved, "gold"] = rows.loc[moved, "choice"].to_numpy() == usual.reindex(rows.loc[moved, "item"]).to_numpy()
    return rows, int(len(odd))


@dataclass
class MarginPairs:
    """One row per (item, incorrect choice), sorted by item: the margins s_gold - s_j over checkpoints."""

    item: np.ndarray  # item index per pair [P]
    choice: np.ndarray  # the incorrect choice [P]
    gold_first: np.ndarray  # gold index < choice: an exact tie goes to gold [P]
    margins: np.ndarray  # [P, K] NaN where either choice is missing
    raw: np.ndarray  # [P, K] raw log-likelihood margins (for softmax quantities)
    tied: np.ndarray  # margin exactly 0 at every checkpoint where seen: decided by index, not modelled [P]


def margin_pairs(traj: ChoiceTrajectories) -> MarginPairs:
    idx = np.arange(len(traj.items))
    gold_scores = traj.scores[idx, traj.gold][:, None, :]
    gold_raw = traj.logprob[idx, traj.gold][:, None, :]
    is_gold = np.arange(traj.scores.shape[1])[None, :] == traj.gold[:, None]
    item, choice = np.nonzero(traj.present & ~is_gold)  # row-major: sorted by item
    margins = (gold_scores - traj.scores)[item, choice]
    raw = (gold_raw - traj.logprob)[item, choice]
    seen = np.isfinite(margins)
    tied = seen.any(1) & np.all(np.where(seen, margins == 0.0, True), axis=1)
    return MarginPairs(item, choice, traj.gold[item] < choice, margins, raw, tied)


# --- the pooled linear model (pure numpy, vectorised over pairs) -------------------------------


def pair_statistics(z: np.ndarray, margins: np.ndarray, precision: np.ndarray | None = None) -> np.ndarray:
    """Sufficient statistics of each pair's line, [P, 7]: sums of w, wz, wz^2, wy, wzy, wy^2 and the
    count of points; w = ``precision`` of each checkpoint (1 / its relative noise variance; default 1)."""
    seen = np.isfinite(margins)
    w = seen * (np.ones(margins.shape[1]) if precision is None else np.asarray(precision, float))[None, :]
    y = np.where(seen, margins, 0.0)
    wy = w * y
    return np.column_stack([w.sum(1), w @ z, w @ z**2, wy.sum(1), wy @ z, (wy * y).sum(1), seen.sum(1)])


def posterior(stats: np.ndarray, mu: np.ndarray, tau: np.ndarray, sigma2: np.ndarray):
    """Posterior of every pair's (intercept, slope) given the population N(mu, tau) and its noise:
    means [P, 2], covariances [P, 3] (V00, V01, V11), and E[residual sum of squares] [P]."""
    n, sz, szz, sy, szy, syy = stats[:, :6].T
    ti = np.linalg.inv(tau)
    prior = ti @ mu
    a, b, d = ti[0, 0] + n / sigma2, ti[0, 1] + sz / sigma2, ti[1, 1] + szz / sigma2
    det = a * d - b * b
    v00, v01, v11 = d / det, -b / det, a / det
    r0, r1 = prior[0] + sy / sigma2, prior[1] + szy / sigma2
    m0, m1 = v00 * r0 + v01 * r1, v01 * r0 + v11 * r1
    rss = (syy - 2 * (m0 * sy + m1 * szy) + m0**2 * n + 2 * m0 * m1 * sz + m1**2 * szz
           + n * v00 + 2 * sz * v01 + szz * v11)
    return np.column_stack([m0, m1]), np.column_stack([v00, v01, v11]), np.maximum(rss, 0.0)


def least_squares(stats: np.ndarray):
    """Each pair's own (weighted) least-squares line where it has two distinct z: (ok, intercept, slope,
    rss, df)."""
    n, sz, szz, sy, szy, syy, count = stats.T
    sxx = szz - sz**2 / np.maximum(n, 1e-300)
    ok = (count >= 2) & (sxx > 1e-12 * np.maximum(szz, 1e-300))
    slope = np.where(ok, (szy - sz * sy / np.maximum(n, 1e-300)) / np.where(ok, sxx, 1.0), np.nan)
    intercept = np.where(ok, (sy - slope * sz) / np.maximum(n, 1e-300), np.nan)
    rss = np.where(ok, np.maximum(syy - intercept * sy - slope * szy, 0.0), 0.0)
    return ok, intercept, slope, rss, np.where(ok, count - 2, 0.0)


def moderated_variances(stats: np.ndarray, weights: np.ndarray, prior_df: float):
    """Each pair's noise variance, its own residual variance (df = n - 2) moderated toward the pooled
    one with ``prior_df`` pseudo degrees of freedom (Smyth 2004): (d0 s0^2 + d s^2) / (d0 + d).
    Returns (sigma2 [P], pooled s0^2, identified); not identified when no pair has a residual df."""
    _, _, _, rss, df = least_squares(stats)
    total_df = float(weights @ df)
    scale = float(np.var(stats[:, 3] / np.maximum(stats[:, 0], 1))) + 1e-12
    if total_df <= 0:  # two points per line at most: noise cannot be told from trend; lines interpolate
        s0 = 1e-12 * scale
        return np.full(len(stats), s0), s0, False
    s0 = max(float(weights @ rss) / total_df, 1e-12 * scale)
    return np.maximum((prior_df * s0 + rss) / (prior_df + df), 1e-12 * scale), s0, True


def marginal_loglik(stats: np.ndarray, weights: np.ndarray, mu, tau, sigma2):
    """Weighted log-likelihood of every pair's margins with its line integrated out,
    y_p ~ N(X_p mu, X_p tau X_p' + sigma_p^2 I), from the sufficient statistics (Woodbury), and its
    gradient in (mu, tau) by Fisher's identity (the expected complete-data score, as in EM)."""
    n, sz, szz, sy, szy, syy, count = stats.T
    means, covs, _ = posterior(stats, mu, tau, sigma2)
    ry0, ry1 = sy - (n * mu[0] + sz * mu[1]), szy - (sz * mu[0] + szz * mu[1])  # X'r, r = y - X mu
    rr = syy - 2 * (mu[0] * sy + mu[1] * szy) + n * mu[0] ** 2 + 2 * sz * mu[0] * mu[1] + szz * mu[1] ** 2
    quad = rr / sigma2 - (covs[:, 0] * ry0**2 + 2 * covs[:, 1] * ry0 * ry1 + covs[:, 2] * ry1**2) / sigma2**2
    logdet_v = np.log(covs[:, 0] * covs[:, 2] - covs[:, 1] ** 2)
    logdet = count * np.log(sigma2) + np.linalg.slogdet(tau)[1] - logdet_v  # + sum log(1/precision): constant
    value = -0.5 * float(weights @ (quad + logdet + count * np.log(2 * np.pi)))
    ti = np.linalg.inv(tau)
    d = means - mu
    total = weights.sum()
    grad_mu = ti @ (weights @ d)
    spread = np.array([[weights @ (d[:, 0] ** 2 + covs[:, 0]), weights @ (d[:, 0] * d[:, 1] + covs[:, 1])],
                       [0.0, weights @ (d[:, 1] ** 2 + covs[:, 2])]])
    spread[1, 0] = spread[0, 1]
    grad_tau = 0.5 * (ti @ spread @ ti - total * ti)
    return value, grad_mu, grad_tau


def _unpack(theta):
    mu = theta[:2]
    chol = np.array([[np.exp(theta[2]), 0.0], [theta[3], np.exp(theta[4])]])
    return mu, chol


def moment_pooling(stats: np.ndarray, weights: np.ndarray):
    """Mean and covariance of the pairs' own least-squares lines: the population's maximum likelihood
    when the lines are exact (no residual degrees of freedom), and the optimiser's start otherwise."""
    ok, intercept, slope, _, _ = least_squares(stats)
    ok &= weights > 0
    if not ok.any():
        raise FitError("choice-mass: no item-distractor pair was seen at two different scales; no slope can be fitted")
    line, w = np.vstack([intercept[ok], slope[ok]]), weights[ok]
    mu = line @ w / w.sum()
    tau = np.atleast_2d(np.cov(line, aweights=w, bias=True)) if ok.sum() > 2 else np.eye(2)
    return mu, tau + 1e-3 * np.diag(np.diag(tau) + 1e-6)


def fit_pooling(stats: np.ndarray, weights: np.ndarray, sigma2: np.ndarray, start: tuple | None = None,
                identified: bool = True):
    """Type-II maximum likelihood of the population (mu, tau) with each pair's noise fixed, by L-BFGS-B
    on (mu, Cholesky factor of tau with log diagonal). ``start``: (mu, tau) to warm-start from.
    Without residual degrees of freedom the lines are exact and the moments are the answer."""
    from scipy.optimize import minimize

    if not identified:
        return (*moment_pooling(stats, weights), 0)
    active = weights > 0
    s, w, s2 = stats[active], weights[active], sigma2[active]
    mu0, tau0 = moment_pooling(s, w) if start is None else start
    chol0 = np.linalg.cholesky(tau0)
    theta0 = np.array([mu0[0], mu0[1], np.log(chol0[0, 0]), chol0[1, 0], np.log(chol0[1, 1])])
    size = np.sqrt(np.diag(tau0)).max() + np.sqrt(np.median(s2))
    # the spread of intercepts / slopes is kept above 1e-3 of the pairs' least-squares spread: the optimum
    # is often tau singular (all pairs' slopes alike), at infinity in log-Cholesky coordinates, where the
    # line search stalls; the bound puts it at a finite corner that barely changes a forecast
    sd0 = np.sqrt(np.diag(tau0))
    bounds = [(None, None), (None, None), (np.log(1e-3 * sd0[0]), np.log(1e4 * size)), (-1e4 * size, 1e4 * size),
              (np.log(1e-3 * sd0[1]), np.log(1e4 * size))]
    theta0[[2, 4]] = np.clip(theta0[[2, 4]], [bounds[2][0], bounds[4][0]], [bounds[2][1], bounds[4][1]])

    def objective(theta):
        mu, chol = _unpack(theta)
        tau = chol @ chol.T
        try:
            with np.errstate(all="ignore"):
                value, g_mu, g_tau = marginal_loglik(s, w, mu, tau, s2)
        except np.linalg.LinAlgError:
            value = np.nan
        if not np.isfinite(value):
            return 1e300, np.zeros(5)
        g_chol = 2 * g_tau @ chol
        grad = np.array([g_mu[0], g_mu[1], g_chol[0, 0] * chol[0, 0], g_chol[1, 0], g_chol[1, 1] * chol[1, 1]])
        return -value / w.sum(), -grad / w.sum()

    with one_blas_thread():  # L-BFGS-B's tiny BLAS calls cost milliseconds each when multi-threaded
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8})
    if not result.success:  # a line search stalled by rounding is fine if the quasi-Newton step left is tiny
        _, grad = objective(result.x)
        step = np.abs(result.hess_inv.dot(grad)) / np.array([size, size, 1.0, size, 1.0])
        if not (np.all(np.isfinite(step)) and step.max() < 1e-4):
            raise FitError(f"choice-mass: the pooled model did not converge ({result.message})")
    mu, chol = _unpack(result.x)
    return mu, chol @ chol.T, int(result.nit)


@dataclass
class Population:
    mu: np.ndarray  # population mean (intercept, slope)
    tau: np.ndarray  # 2x2 covariance of the pairs' lines
    s2: float  # pooled noise variance
    sigma2: np.ndarray  # each pair's moderated noise variance [P]
    n_iter: int
    identified: bool  # False: no residual degrees of freedom, noise fixed at ~0


def fit_population(stats: np.ndarray, weights: np.ndarray, *, noise_prior_df: float = 4.0) -> Population:
    """Moderated noise per pair, then the population of lines by type-II maximum likelihood (module
    docstring). Direct maximisation rather than EM: EM creeps for thousands of iterations when tau
    nears singular (slopes and intercepts nearly collinear across pairs), which real tasks do."""
    sigma2, s0, identified = moderated_variances(stats, weights, noise_prior_df)
    mu, tau, n_iter = fit_pooling(stats, weights, sigma2, identified=identified)
    return Population(mu, tau, s0, sigma2, n_iter, identified)


@dataclass
class NoiseStructure:
    shocks: np.ndarray  # residual shock of each checkpoint (the mean residual over pairs) [K]
    shock_var: float  # variance of a checkpoint's shock, common to every pair
    rho: float  # within-item correlation of the remaining noise
    trend_cov: np.ndarray  # 2x2 covariance of the common (intercept, slope) error the shocks leave in every line
    shock_df: int = 0  # degrees of freedom behind shock_var (checkpoints - 2)

    def trend_error(self, rng: np.random.Generator, zt: float, n_draws: int) -> np.ndarray:
        """[n_draws, 1] draws of the error that the ladder's shocks put into every pair's line at zt."""
        if not np.any(self.trend_cov):
            return np.zeros((n_draws, 1))
        delta = rng.multivariate_normal(np.zeros(2), self.trend_cov, size=n_draws, method="eigh")
        return (delta[:, 0] + delta[:, 1] * zt)[:, None]


def noise_structure(z: np.ndarray, margins: np.ndarray, means: np.ndarray, sigma2: np.ndarray,
                    item: np.ndarray, weights: np.ndarray) -> NoiseStructure:
    """Split the residuals into a shock per checkpoint and within-item correlated noise (moments).

    A checkpoint's shock moves every pair's margin alike (the model is better or worse than the trend
    overall), so fitting the lines to K checkpoints leaves a common error in all of them, the least-
    squares fit of the shocks: covariance shock_var (X'X)^-1 over the K checkpoints' design [1, z_k].
    A bootstrap over items cannot see it (every resample shares the ladder's shocks); the forecast
    draws it. The residual shocks have K - 2 degrees of freedom left (none with two checkpoints).
    The noise is taken as constant across scale: a log-linear trend in its variance (margins do spread
    as models improve) was tried and hurt every toy task (copy / override 0.99 -> 0.65 against an
    actual 1.00): the extrapolated noise outgrows the linear margins."""
    seen = np.isfinite(margins) & (weights[:, None] > 0)
    resid = np.where(seen, margins - (means[:, :1] + means[:, 1:] * z[None, :]), 0.0)
    w = seen * weights[:, None]
    count = w.sum(0)
    used = count > 0
    shocks = np.where(used, (w * resid).sum(0) / np.maximum(count, 1e-300), 0.0)
    sampling = np.where(used, (w * sigma2[:, None]).sum(0) / np.maximum(count, 1e-300) ** 2, 0.0)
    k = int(used.sum())
    shock_var = max(float(np.sum(shocks[used] ** 2)) / (k - 2) - float(np.mean(sampling[used])), 0.0) if k > 2 else 0.0
    design = np.column_stack([np.ones(k), z[used]])
    trend_cov = shock_var * np.linalg.inv(design.T @ design) if k > 2 and shock_var > 0 else np.zeros((2, 2))
    # equicorrelated unit-variance residuals of one item: E[(sum r)^2 - sum r^2] = J (J - 1) rho, E[sum r^2] = J
    own = np.sqrt(np.maximum(sigma2 - shock_var, 0.0))
    usable = seen & (own[:, None] > 0)
    norm = np.where(usable, (resid - shocks[None, :]) / np.where(own > 0, own, 1.0)[:, None], 0.0)
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    s1 = np.add.reduceat(norm * np.sqrt(weights)[:, None], starts, axis=0)
    s2 = np.add.reduceat(norm**2 * weights[:, None], starts, axis=0)
    j = np.add.reduceat(usable.astype(float), starts, axis=0)
    denominator = float(((j - 1).clip(min=0) * s2).sum())
    rho = float(np.clip((s1**2 - s2).sum() / denominator, 0.0, 0.99)) if denominator > 0 else 0.0
    return NoiseStructure(shocks, shock_var, rho, trend_cov, max(k - 2, 0))


def draw_margins(rng: np.random.Generator, zt: float, means, covs, sigma2, noise: NoiseStructure, item: np.ndarray,
                 n_items: int, n_draws: int, common: bool = True) -> np.ndarray:
    """[n_draws, P] draws of the margins at z = zt: posterior line + the common line error of the ladder's
    shocks + the target's own checkpoint shock (``common``) + item-correlated noise. Accuracy is monotone
    in a shift common to all margins, so its median over the common part is its value at 0: the point
    forecast leaves it out, the interval's draws keep it."""
    centre = means[:, 0] + means[:, 1] * zt
    line_var = np.maximum(covs[:, 0] + 2 * covs[:, 1] * zt + covs[:, 2] * zt**2, 0.0)
    own = np.maximum(sigma2 - noise.shock_var, 0.0)
    independent = np.sqrt(line_var + own * (1 - noise.rho))
    shared = rng.standard_normal((n_draws, n_items))[:, item] * np.sqrt(own * noise.rho)
    shift = noise.trend_error(rng, zt, n_draws) + rng.normal(0.0, np.sqrt(noise.shock_var), (n_draws, 1))
    return centre + (shift if common else 0.0) + shared + independent * rng.standard_normal((n_draws, len(centre)))


def item_outcomes(draws: np.ndarray, pairs: MarginPairs, modelled: np.ndarray, n_items: int, raw: bool):
    """Per draw and item: won (bool), and when the margins are raw log-likelihoods p_correct and brier.
    ``draws`` covers the modelled pairs; tied pairs are margin 0 decided by index; items without
    pairs (one choice) are always won with p_correct 1."""
    n_draws = draws.shape[0]
    full = np.zeros((n_draws, len(pairs.item)))
    full[:, modelled] = draws
    wins_pair = (full > 0) | ((full == 0) & pairs.gold_first[None, :])
    won = np.ones((n_draws, n_items), dtype=bool)
    p_correct = np.ones((n_draws, n_items)) if raw else None
    brier = np.zeros((n_draws, n_items)) if raw else None
    if len(pairs.item) == 0:
        return won, p_correct, brier
    starts = np.flatnonzero(np.r_[True, pairs.item[1:] != pairs.item[:-1]])
    owners = pairs.item[starts]
    won[:, owners] = np.logical_and.reduceat(wins_pair, starts, axis=1)
    if raw:
        group = np.searchsorted(starts, np.arange(len(pairs.item)), side="right") - 1  # pair -> its item's slot
        neg = -np.clip(full, -700, 700)  # log p_j - log p_gold
        top = np.maximum(np.maximum.reduceat(neg, starts, axis=1), 0.0)
        shifted = np.exp(neg - top[:, group])
        total = np.add.reduceat(shifted, starts, axis=1) + np.exp(-top)  # (p_gold + sum_j p_j) / p_gold, times e^-top
        pg = np.exp(-top) / total
        p_j = shifted / total[:, group]
        p_correct[:, owners] = pg
        brier[:, owners] = (1 - pg) ** 2 + np.add.reduceat(p_j**2, starts, axis=1)
    return won, p_correct, brier


# --- the predictor -------------------------------------------------------------------------


class ChoiceMassPredictor(TaskPredictor):
    """Per-item margins of the gold choice over each incorrect choice, pooled across items, extrapolated
    in scale; accuracy = expected share of items won (module docstring).

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
        if len(np.unique(sample)) < n_free(*STEP1_FORMS[self.step1_form_]):
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
    return None if d is None else FitResult.from_dict(d)


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


# --- diagnostics on the data -----------------------------------------------------------------


def softmax_gold(logprob: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """p_correct per item and checkpoint, [I, K]: softmax over the choices present (NaN = unscored)."""
    shifted = logprob - np.nanmax(np.where(np.isfinite(logprob), logprob, -np.inf), axis=1, keepdims=True)
    e = np.where(np.isfinite(shifted), np.exp(shifted), 0.0)
    total = e.sum(1)
    pg = e[np.arange(len(gold)), gold] / np.where(total > 0, total, 1.0)
    return np.where(np.isfinite(logprob[np.arange(len(gold)), gold]), pg, np.nan)


def item_correlations(traj: ChoiceTrajectories, x: np.ndarray) -> pd.DataFrame:
    """Per item: Pearson correlation of p_correct with ``x`` (log scale) across checkpoints, the statistic
    whose spread Schaeffer et al. 2024 show; NaN when p_correct does not vary or < 3 checkpoints."""
    with np.errstate(all="ignore"):
        p = softmax_gold(traj.logprob, traj.gold)
        seen = np.isfinite(p)
        n = seen.sum(1)
        xs = np.where(seen, x[None, :], np.nan)
        dx = xs - np.nanmean(xs, 1, keepdims=True)
        dp = p - np.nanmean(p, 1, keepdims=True)
        cov = np.nansum(dx * dp, 1)
        r = cov / np.sqrt(np.nansum(dx**2, 1) * np.nansum(dp**2, 1))
    r = np.where((n >= 3) & np.isfinite(r), r, np.nan)
    return pd.DataFrame({"item": traj.items, "n_checkpoints": n, "correlation": r})


def correlation_summary(corr: pd.DataFrame) -> dict:
    r = corr["correlation"].dropna().to_numpy()
    if not len(r):
        return {"n": 0, "undefined": int(len(corr))}
    q = np.quantile(r, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(len(r)), "undefined": int(len(corr) - len(r)), "mean": float(r.mean()),
            "q10": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4]),
            "share_positive": float((r > 0).mean()), "share_above_0.5": float((r > 0.5).mean()),
            "share_below_-0.5": float((r < -0.5).mean())}


def observed_accuracy(traj: ChoiceTrajectories, pairs: MarginPairs, meta: pd.DataFrame) -> dict:
    """Item correctness per checkpoint (first-argmax rule), and at each item's largest seen checkpoint."""
    n_items, n_k = len(traj.items), len(traj.checkpoints)
    won = np.ones((n_items, n_k), dtype=bool)
    margins = pairs.margins
    pair_won = np.where(np.isfinite(margins), (margins > 0) | ((margins == 0) & pairs.gold_first[:, None]), True)
    if len(pairs.item):
        starts = np.flatnonzero(np.r_[True, pairs.item[1:] != pairs.item[:-1]])
        won[pairs.item[starts]] = np.logical_and.reduceat(pair_won, starts, axis=0)
    seen = np.isfinite(traj.scores).any(1)
    scale = meta["flops"].to_numpy(float) if meta["flops"].notna().all() else meta["params"].to_numpy(float)
    last = np.full(n_items, False)
    for k in np.argsort(scale, kind="stable"):
        last = np.where(seen[:, k], won[:, k], last)
    acc = np.where(seen, won, np.nan)
    return {"accuracy": np.nanmean(acc, 0), "item_correct_last": last, "gold": traj.gold}


def choice_mass_table(rows: pd.DataFrame, meta: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per checkpoint of one task: accuracy, mean p_correct, and the mean unnormalised probability of
    the correct continuation, of all incorrect ones together and of the strongest one (Schaeffer et
    al.'s chain: p(correct) and p(incorrect) before the normalisation over choices)."""
    meta = meta.assign(checkpoint=meta["checkpoint"].astype(str)).drop_duplicates("checkpoint")
    traj = choice_trajectories(rows, task, meta["checkpoint"].tolist(), "acc")
    pairs = margin_pairs(traj)
    sub = meta.set_index("checkpoint").loc[traj.checkpoints].reset_index()
    idx = np.arange(len(traj.items))
    with np.errstate(all="ignore"):
        prob = np.exp(traj.logprob)
        gold = prob[idx, traj.gold]
        other = np.where(np.arange(prob.shape[1])[None, :, None] == traj.gold[:, None, None], np.nan, prob)
        incorrect = np.nansum(other, 1)
        strongest = np.nanmax(np.where(np.isfinite(other), other, -np.inf), 1)
        strongest = np.where(np.isfinite(strongest), strongest, np.nan)
        pc = softmax_gold(traj.logprob, traj.gold)
    seen = np.isfinite(gold)
    observed = observed_accuracy(traj, pairs, sub)
    return sub.assign(
        task=task, acc=observed["accuracy"], p_correct=np.nanmean(pc, 0),
        mass_correct=np.nanmean(gold, 0), mass_incorrect=np.nanmean(np.where(seen, incorrect, np.nan), 0),
        mass_top_incorrect=np.nanmean(strongest, 0), n_items=seen.sum(0),
    )


def item_compute_correlations(rows: pd.DataFrame, meta: pd.DataFrame, task: str, x: str = "flops") -> pd.DataFrame:
    """Schaeffer et al. 2024's statistic on the data: per item, the correlation of p_correct with log ``x``
    across the given checkpoints (``meta``: checkpoint + scale columns, e.g. a store's manifest)."""
    meta = meta.assign(checkpoint=meta["checkpoint"].astype(str)).drop_duplicates("checkpoint")
    meta = meta[np.isfinite(meta[x].to_numpy(float)) & (meta[x].to_numpy(float) > 0)]
    traj = choice_trajectories(rows, task, meta["checkpoint"].tolist(), "acc")
    scale = meta.set_index("checkpoint").loc[traj.checkpoints, x].to_numpy(float)
    return item_correlations(traj, np.log(scale))
