"""The pooled linear model of margin pairs (pure numpy, vectorised over pairs): sufficient statistics,
type-II maximum-likelihood pooling, moderated noise, the residual structure and predictive draws."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capscale.laws.choicemass.rows import MarginPairs
from capscale.laws.fitting import FitError, one_blas_thread


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
