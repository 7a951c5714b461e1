"""Per-item and per-task estimators for PassUntil sampling records.

PassUntil (Hu et al. 2023, "Unlock Predictable Scaling from Emergent Abilities",
arXiv:2310.03262) samples an item until it has been solved ``until`` = K times, with a cap of
``max_samples`` = B samples. The record of one item is ``(n_drawn, n_correct)``:
``n_correct == K`` when the K-th success came at trial ``n_drawn <= B`` (samples after it are
discarded), else ``n_correct < K`` and sampling stopped on the budget. Fixed-n sampling (no
early stop) is the special case ``until > n_drawn`` (e.g. ``until=np.inf``).

Under the stopping time min(T_K, B) every path of Bernoulli outcomes that ends at the same
boundary point (n, c) has the same probability p^c (1-p)^(n-c), so conditional on the point the
path is uniform over those paths. Rao-Blackwellising any observable unbiased indicator therefore
reduces to counting paths (Girshick, Mosteller & Savage 1946, Ann. Math. Stat. 17:13-23):

- stopped at the K-th success at trial n: C(n-1, K-1) paths (K-1 successes among the first n-1);
- stopped by the budget at (B, c), c < K: C(B, c) paths (none of them hits K earlier).

Numbers returned for scalar inputs are numpy scalars; arrays broadcast elementwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "TaskEstimate",
    "unbiased_p",
    "pass_until_estimate",
    "item_interval",
    "pass_at_k",
    "task_estimate",
    "beta_prior",
]

JEFFREYS = (0.5, 0.5)


def _records(n_drawn, n_correct, until=np.inf):
    """Broadcast and validate one or many records; returns (n, c, K, reached) as float arrays."""
    n = np.asarray(n_drawn, dtype=float)
    c = np.asarray(n_correct, dtype=float)
    K = np.asarray(until, dtype=float)
    n, c, K = np.broadcast_arrays(n, c, K)
    if np.isnan(n).any() or np.isnan(c).any() or np.isnan(K).any():
        raise ValueError("records contain NaN")
    if (n != np.round(n)).any() or (c != np.round(c)).any() or np.isinf(n).any():
        raise ValueError("n_drawn and n_correct must be whole numbers")
    if (c < 0).any() or (c > n).any():
        raise ValueError("need 0 <= n_correct <= n_drawn")
    if (K < 1).any():
        raise ValueError("until must be >= 1 (use np.inf for fixed-n sampling)")
    if (c > K).any():
        raise ValueError("n_correct > until: a PassUntil record stops at the until-th success "
                         "(pass until=np.inf for fixed-n records)")
    reached = c >= K
    return n, c, K, reached


def _out(x):
    """Return a numpy scalar for 0-d results, else the array."""
    return x[()] if np.ndim(x) == 0 else x


def unbiased_p(n_drawn, n_correct, until):
    """Exactly unbiased estimate of the per-sample success rate p under the stop min(T_K, B).

    Rao-Blackwell of the first trial's indicator (path counting, see module docstring):
    stopped at the K-th success at trial n -> C(n-2, K-2) / C(n-1, K-1) = (K-1)/(n-1)
    (Haldane 1945, Biometrika 33:222 for pure inverse sampling); for K = 1 this is 1{n == 1}
    (the first trial succeeded iff the first success came at trial 1), unbiased but useless.
    Stopped on the budget (or fixed n) -> c/n. NaN for an item that was never sampled.
    """
    n, c, K, reached = _records(n_drawn, n_correct, until)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(K > 1, (K - 1) / (n - 1), (n == 1).astype(float))
        fixed = np.where(n > 0, c / n, np.nan)
    return _out(np.where(reached, inverse, fixed))


def beta_prior(n_drawn, n_correct) -> tuple[float, float]:
    """Empirical-Bayes Beta(a, b) prior for the items of one task, by maximum marginal likelihood.

    Why: an item whose budget ran out with c = 0 says only "p is below ~1/B". Jeffreys' prior
    (mean 1/2) then puts it at 0.5/(B+1) -- for B = 1000 a floor of 5e-4 that can double a task
    mean of 5e-4. The other items of the same task say how small such items' rates usually are;
    a Beta prior fitted to all items of the task (the beta-binomial marginal likelihood, whose
    kernel is the same under PassUntil's stopping rule) borrows that strength. With no success in
    the whole task the fit is degenerate (a -> 0): Jeffreys is returned instead.
    """
    n = np.ravel(np.asarray(n_drawn, dtype=float))
    c = np.ravel(np.asarray(n_correct, dtype=float))
    if c.sum() == 0 or c.sum() == n.sum():
        return JEFFREYS

    def neg_loglik(theta):
        a, b = np.exp(theta)
        return -np.sum(special.betaln(c + a, n - c + b) - special.betaln(a, b))

    mean = (c.sum() + 0.5) / (n.sum() + 1.0)
    start = np.log([mean * 2.0, (1 - mean) * 2.0])
    res = optimize.minimize(neg_loglik, start, method="L-BFGS-B", bounds=[(np.log(1e-3), np.log(1e6))] * 2)
    a, b = np.exp(res.x)
    return float(a), float(b)


def pass_until_estimate(n_drawn, n_correct, until, prior: tuple[float, float] = JEFFREYS):
    """PassUntil point estimate of p for log-scale use; never 0.

    (K-1)/(n-1) -- the unbiased inverse-sampling estimate -- when K >= 2 successes were reached;
    otherwise (budget ran out, fixed n, or K = 1, where the unbiased value is 0 or 1) the
    posterior mean (c + a)/(n + a + b) under a Beta(a, b) prior: Jeffreys (1/2, 1/2) by default,
    or the task's empirical-Bayes prior (:func:`beta_prior`). It stays positive for c = 0 so that
    log p and the PassUntil scaling law of Hu et al. 2023 remain defined.
    """
    n, c, K, reached = _records(n_drawn, n_correct, until)
    a, b = prior
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = (K - 1) / (n - 1)
    posterior = (c + a) / (n + a + b)
    return _out(np.where(reached & (K >= 2), inverse, posterior))


def item_interval(n_drawn, n_correct, level=0.9):
    """Jeffreys equal-tailed interval for p: quantiles of Beta(c + 1/2, n - c + 1/2).

    Brown, Cai & DasGupta (2001, Stat. Sci. 16:101) recommend it for fixed-n binomial data.
    The Bernoulli likelihood does not depend on the stopping rule, so the same posterior is used
    for PassUntil records, but the interval ignores the stopping rule and its frequentist
    coverage is only approximate -- not conservative. Exact coverage at level 0.9 under
    min(T_K, B) with K=3, B=400, averaged over p log-uniform in [1e-3, 0.9], is 0.888 (min 0.76,
    near p ~ K/B where budget stops and K-stops mix); in the inverse-sampling regime the lower end
    is the one that misses (~9.5% vs ~3% above). Fixed n=400 for comparison: mean 0.906, min
    0.81. tests/test_estimators.py recomputes this. Returns (lower, upper); the lower end is kept
    (not set to 0 for c = 0) so that it can be used on log scales.
    """
    n, c, _, _ = _records(n_drawn, n_correct)
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    tail = (1.0 - level) / 2.0
    a, b = c + 0.5, n - c + 0.5
    return _out(stats.beta.ppf(tail, a, b)), _out(stats.beta.ppf(1.0 - tail, a, b))


def _log_prod_one_minus(k, m, terms):
    """log C(m-k, t)/C(m, t) = log prod_{j<t} (1 - k/(m-j)), elementwise; -inf when it is 0.

    The ratio is symmetric in k and t (C(m-k, t)/C(m, t) = C(m-t, k)/C(m, k)), so the shorter
    product of min(k, t) factors is used. Summing log1p terms keeps 1 - ratio accurate when the
    ratio is close to 1 (large n, small k), where log-gamma differences would lose most digits.
    """
    k, m, terms = np.broadcast_arrays(k, m, terms)
    short, long = np.minimum(k, terms), np.maximum(k, terms)
    dead = (m - k) < terms  # C(m-k, t) = 0: some factor is 0 (or the count of paths is empty)
    total = np.zeros(k.shape)
    top = int(short[~dead].max()) if (~dead).any() else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(top):
            use = (j < short) & ~dead
            total = total + np.where(use, np.log1p(-long / np.where(use, m - j, 1.0)), 0.0)
    return np.where(dead, -np.inf, total)


def pass_at_k(n_drawn, n_correct, k, until):
    """Unbiased pass@k = 1 - (1-p)^k from one PassUntil record (valid for k <= B).

    Rao-Blackwell of 1{first k trials all fail}, which is observed on every path when k <= B
    (a path that stopped early at its K-th success before trial k has a success among them):
    - budget ran out / fixed n: C(n-c, k)/C(n, k) -- Chen et al. 2021 (arXiv:2107.03374);
      ValueError when k > n_drawn, since then the event is not observed;
    - K-th success at trial n: the K-1 earlier successes lie uniformly in the first n-1 trials,
      so the probability is C(n-1-k, K-1)/C(n-1, K-1) for k <= n-1 and 0 for k >= n.
      For K = 1 this gives pass@k = 1{n <= k}.
    Both ratios are computed as products of min(k, c or K-1) factors (1 - a/(m-j)) in log space.
    """
    n, c, K, reached = _records(n_drawn, n_correct, until)
    n, c, K, reached, k = np.broadcast_arrays(n, c, K, reached, np.asarray(k, dtype=float))
    if (k < 0).any() or (k != np.round(k)).any():
        raise ValueError("k must be a non-negative whole number")
    if (~reached & (k > n)).any():
        raise ValueError("k > n_drawn for a fixed-n (budget-stopped) record: pass@k is not "
                         "estimable without bias")
    # fixed n: C(n-c, k)/C(n, k) = C(n-k, c)/C(n, c) = prod_{j<c} (1 - k/(n-j))
    # reached: C(n-1-k, K-1)/C(n-1, K-1) = prod_{j<K-1} (1 - k/(n-1-j))
    m = np.where(reached, n - 1, n)
    terms = np.where(reached, K - 1, c)
    log_fail = _log_prod_one_minus(k, m, terms)
    return _out(-np.expm1(log_fail))


@dataclass(frozen=True)
class TaskEstimate:
    """Task-level PassUntil estimate: mean over items, with a bootstrap-posterior interval."""

    value: float  # mean of pass_until_estimate over items, with the same prior (never 0)
    unbiased: float  # mean of unbiased_p over items (exactly unbiased, may be 0)
    lower: float
    upper: float
    n_items: int
    n_reached: int  # items that reached `until` successes


def task_estimate(n_drawn, n_correct, until, *, level=0.9, n_boot=2000, seed=0,
                  prior: str | tuple[float, float] = "empirical") -> TaskEstimate:
    """Mean pass rate of a task with an interval that also works for a task of one item.

    Each bootstrap replicate resamples items with replacement (between-item spread, Efron's
    bootstrap) and draws every resampled item's p from a Beta distribution (within-item noise,
    which the item bootstrap alone misses when items are few or all have c = 0), then averages.

    The Beta for each item has mean equal to its pass_until_estimate, so the bootstrap is centred
    on ``value``: Jeffreys Beta(c + 1/2, n - c + 1/2) for budget-stopped records (and K = 1),
    and Beta(K - 1, n - K) -- mean (K-1)/(n-1), the posterior under the improper prior
    p^-2 (1-p)^-1 -- for records stopped at their K-th success, K >= 2 (a point mass at 1 when
    n = K). Drawing Jeffreys Beta(K + 1/2, n - K + 1/2) there instead would centre those items
    at (K + 1/2)/(n + 1), about (K + 1/2)/(K - 1) times the unbiased value under inverse
    sampling (1.75x for K = 3); the bias adds up over items while the width shrinks, and in
    simulation (K = 3) the interval's coverage of the true mean fell to 0.45 at 100 items and 0
    at 300. With the centred draws it is 0.87-1.0 for 5 to 1000 items at level 0.9 (K = 2..10;
    conservative: the item bootstrap already contains within-item noise), but only 0.76-0.86 for
    a single item, where a calibrated interval cannot also be mean-centred -- use item_interval
    for one item. Seeded, so repeat calls agree.

    ``prior`` for budget-stopped items: "empirical" (default; :func:`beta_prior` fitted to this
    task's items; its mean follows each bootstrap resample's pooled rate), "jeffreys", or an explicit (a, b). On the toy ladder's
    untrained checkpoints (every item out of budget, B = 1000) Jeffreys put the task mean at
    ~2x the exact probability; the empirical prior agrees with it (results/toy/passuntil.md).
    """
    n, c, K, reached = _records(np.ravel(n_drawn), np.ravel(n_correct), np.ravel(until))
    if n.size == 0:
        raise ValueError("task_estimate needs at least one item")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    rng = np.random.default_rng(seed)
    empirical = prior == "empirical"
    if isinstance(prior, str):
        if prior not in ("empirical", "jeffreys"):
            raise ValueError(f"prior must be 'empirical', 'jeffreys' or (a, b), got {prior!r}")
        prior = beta_prior(n, c) if empirical else JEFFREYS
    inverse = reached & (K >= 2)
    certain = inverse & (n <= K)  # n == K: every draw succeeded, estimate (K-1)/(n-1) = 1

    def beta_params(pa, pb):
        a = np.where(inverse, K - 1.0, c + pa)
        b = np.where(inverse, np.maximum(n - K, 1.0), n - c + pb)
        return a, b

    n_items = n.size
    refit = empirical and prior != JEFFREYS
    pa, pb = prior
    pooled = c.sum() / n.sum() if n.sum() > 0 else 0.0
    per_chunk = max(1, 2_000_000 // n_items)  # bound memory at ~2M draws per chunk
    means = []
    for start in range(0, n_boot, per_chunk):
        size = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n_items, size=(size, n_items))
        if refit:
            # The prior is estimated from the items too. Keep its concentration a + b, but move its
            # mean with each resample's pooled rate; with the prior fixed the interval ignored how
            # uncertain the population's typical rate is and came out ~10x too narrow on the toy.
            ratio = (c[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1.0)) / pooled
            mean = np.clip(pa / (pa + pb) * ratio, 1e-12, 1 - 1e-12)[:, None]
            a_r, b_r = mean * (pa + pb), (1 - mean) * (pa + pb)
        else:
            a_r, b_r = pa, pb
        a = np.where(inverse[idx], K[idx] - 1.0, c[idx] + a_r)
        b = np.where(inverse[idx], np.maximum(n[idx] - K[idx], 1.0), n[idx] - c[idx] + b_r)
        draws = np.where(certain[idx], 1.0, rng.beta(a, b))
        means.append(draws.mean(axis=1))
    boot = np.concatenate(means)
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(boot, [tail, 1.0 - tail])
    return TaskEstimate(
        value=float(np.mean(pass_until_estimate(n, c, K, prior))),
        unbiased=float(np.mean(unbiased_p(n, c, K))),
        lower=float(lower),
        upper=float(upper),
        n_items=int(n_items),
        n_reached=int(reached.sum()),
    )
