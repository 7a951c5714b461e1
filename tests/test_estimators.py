"""PassUntil estimators, allocation policy and simulation: exact and Monte Carlo checks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from capscale.scoring.allocation import plan_round, uniform_allocation
from capscale.estimators import (
    TaskEstimate,
    item_interval,
    pass_at_k,
    pass_until_estimate,
    task_estimate,
    unbiased_p,
)
from capscale.scoring.simulate import simulate_sampling

P_GRID = [1e-4, 0.003, 0.05, 0.2, 0.5, 0.83, 0.999]


def outcomes(K, B, p):
    """Every stopping point of min(T_K, B) with its exact probability (negative binomial / binomial)."""
    reached_n = np.arange(K, B + 1)
    budget_c = np.arange(0, min(K, B + 1))
    n = np.concatenate([reached_n, np.full(budget_c.size, B)])
    c = np.concatenate([np.full(reached_n.size, K), budget_c])
    prob = np.concatenate([stats.nbinom.pmf(reached_n - K, K, p), stats.binom.pmf(budget_c, B, p)])
    return n, c, prob


@pytest.mark.parametrize("K,B", [(1, 1), (1, 9), (2, 2), (2, 15), (3, 12), (5, 30), (4, 3)])
def test_unbiased_p_exact_expectation(K, B):
    for p in P_GRID:
        n, c, prob = outcomes(K, B, p)
        assert prob.sum() == pytest.approx(1.0, abs=1e-12)
        assert float(np.dot(prob, unbiased_p(n, c, K))) == pytest.approx(p, abs=1e-10)


@pytest.mark.parametrize("K,B", [(1, 8), (2, 15), (3, 12), (6, 25), (4, 3)])
def test_pass_at_k_exact_expectation(K, B):
    for p in P_GRID:
        n, c, prob = outcomes(K, B, p)
        for k in range(0, B + 1):
            expected = 1.0 - (1.0 - p) ** k
            assert float(np.dot(prob, pass_at_k(n, c, k, K))) == pytest.approx(expected, abs=1e-10)


def test_k1_unbiased_p_is_first_trial_indicator():
    # K = 1: the first trial succeeded iff the first success was at trial 1
    assert unbiased_p(1, 1, 1) == 1.0
    assert unbiased_p(7, 1, 1) == 0.0
    assert unbiased_p(10, 3, 3) == pytest.approx(2 / 9)
    assert unbiased_p(50, 2, 3) == pytest.approx(2 / 50)  # budget ran out: c/n
    assert np.isnan(unbiased_p(0, 0, 3))


def chen_pass_at_k(n, c, k):
    return 1.0 - float(Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_fixed_n_matches_chen():
    for n in [1, 5, 20, 200]:
        for c in range(0, n + 1, max(1, n // 7)):
            for k in [1, 2, 5, n]:
                if k > n:
                    continue
                got = pass_at_k(n, c, k, np.inf)
                assert got == pytest.approx(chen_pass_at_k(n, c, k), abs=1e-12)
                if c < 3:  # also as a budget-stopped PassUntil record with until = 3
                    assert pass_at_k(n, c, k, 3) == pytest.approx(got, abs=1e-15)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6, 3)


def test_pass_at_k_k1_and_until1():
    n = np.arange(1, 30)
    for k in [1, 3, 10]:
        assert np.array_equal(pass_at_k(n, 1, k, 1), (n <= k).astype(float))
    # pass@1 is unbiased_p
    n, c = np.array([4, 9, 40, 40]), np.array([3, 3, 1, 0])
    assert np.allclose(pass_at_k(n, c, 1, 3), unbiased_p(n, c, 3))


def test_pass_at_k_stable_for_large_n():
    n, K, k = 10**6, 4, 3
    exact = 1 - Fraction(math.comb(n - 1 - k, K - 1), math.comb(n - 1, K - 1))
    got = pass_at_k(n, K, k, K)
    assert abs(got - float(exact)) / float(exact) < 1e-12
    exact_fixed = 1 - Fraction(math.comb(n - 2, k), math.comb(n, k))
    assert abs(pass_at_k(n, 2, k, np.inf) - float(exact_fixed)) / float(exact_fixed) < 1e-12


def test_pass_until_estimate_never_zero():
    for K, B in [(1, 50), (3, 200), (2, 5)]:
        n, c, _ = outcomes(K, B, 0.1)
        est = pass_until_estimate(n, c, K)
        assert (est > 0).all() and np.isfinite(est).all()
    assert pass_until_estimate(1000, 0, 3) == pytest.approx(0.5 / 1001)
    assert pass_until_estimate(21, 3, 3) == pytest.approx(0.1)
    assert pass_until_estimate(4, 1, 1) == pytest.approx(1.5 / 5)  # K = 1: Jeffreys
    assert pass_until_estimate(0, 0, 3) == 0.5  # never sampled: prior mean


def test_item_interval_exact_coverage():
    """Exact coverage under min(T_K, B): ~0.89 on average at level 0.9 (see docstring)."""
    K, B = 3, 400
    grid = np.geomspace(1e-3, 0.9, 200)
    n, c, _ = outcomes(K, B, 0.5)
    lo, hi = item_interval(n, c, 0.9)
    assert (lo < hi).all() and (lo > 0).all()
    cover = np.array([outcomes(K, B, p)[2][(lo <= p) & (p <= hi)].sum() for p in grid])
    assert cover.mean() > 0.87
    assert cover.min() > 0.74
    lo1, hi1 = item_interval(10, 0)
    assert 0 < lo1 < 0.001 and hi1 == pytest.approx(stats.beta.ppf(0.95, 0.5, 10.5))


def chisquare_pvalue(n, c, en, ec, prob):
    """Pearson chi-square of simulated records against the exact outcome probabilities."""
    counts = np.array([np.sum((n == a) & (c == b)) for a, b in zip(en, ec)])
    assert counts.sum() == n.size
    keep = prob * n.size >= 5
    obs, exp = counts[keep], prob[keep] * n.size
    if (~keep).any() and prob[~keep].sum() * n.size >= 5:
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, prob[~keep].sum() * n.size)
    else:
        exp = exp * obs.sum() / exp.sum()  # rare cells dropped: renormalise
    return stats.chisquare(obs, exp).pvalue


def test_simulated_records_match_exact_distribution():
    rng = np.random.default_rng(1)
    K, B, p, m = 3, 60, 0.05, 40_000
    n, c = simulate_sampling(np.full(m, p), until=K, max_samples=B, total_budget=10**9,
                             strategy="adaptive", round_size=10**9, rng=rng)
    assert (c <= K).all() and (n <= B).all()
    assert ((c == K) | (n == B)).all()  # stopped at the K-th success or on the cap, nothing else
    # Monte Carlo: unbiased within 4 standard errors
    for est, truth in [(unbiased_p(n, c, K), p), (pass_at_k(n, c, 7, K), 1 - (1 - p) ** 7)]:
        assert abs(est.mean() - truth) < 4 * est.std() / math.sqrt(m)
    # and the whole (n, c) distribution matches the exact one (chi-square)
    en, ec, prob = outcomes(K, B, p)
    assert chisquare_pvalue(n, c, en, ec, prob) > 1e-3


def literal_bernoulli_passuntil(p, K, B, round_size, rng):
    """Reference sampler: draws every Bernoulli sample of every chunk and truncates at the K-th."""
    n = np.zeros(p.size, dtype=np.int64)
    c = np.zeros(p.size, dtype=np.int64)
    while True:
        alloc = plan_round(n, c, K, B, round_size)
        if alloc.sum() == 0:
            return n, c
        width = int(alloc.max())
        draws = (rng.random((p.size, width)) < p[:, None]) & (np.arange(width) < alloc[:, None])
        total = c[:, None] + np.cumsum(draws, axis=1)
        hit = (total >= K) & (np.arange(width) < alloc[:, None])
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, alloc)
        c = np.where(hit.any(axis=1), K, c + draws.sum(axis=1))
        n = n + first


def test_literal_bernoulli_sampler_agrees_with_simulation():
    K, B, p, m = 2, 40, 0.08, 20_000
    n, c = literal_bernoulli_passuntil(np.full(m, p), K, B, 10**9, np.random.default_rng(2))
    en, ec, prob = outcomes(K, B, p)
    assert chisquare_pvalue(n, c, en, ec, prob) > 1e-3
    est = unbiased_p(n, c, K)
    assert abs(est.mean() - p) < 4 * est.std() / math.sqrt(m)


def test_task_estimate_coverage_and_single_item():
    rng = np.random.default_rng(3)
    hits, reps = 0, 80
    for rep in range(reps):
        p = 10 ** rng.uniform(-3, -0.5, size=20)
        n, c = simulate_sampling(p, until=3, max_samples=3000, total_budget=10**9,
                                 strategy="adaptive", round_size=10**9, rng=rng)
        est = task_estimate(n, c, 3, n_boot=400, seed=rep)
        hits += est.lower <= p.mean() <= est.upper
    assert hits / reps >= 0.85
    # many items: draws centred on the unbiased per-item value, so the shrinking interval
    # does not drift away from the truth (Jeffreys draws for K-stopped items gave 0% here)
    hits, reps = 0, 30
    for rep in range(reps):
        p = 10 ** rng.uniform(-2, -0.5, size=500)
        n, c = simulate_sampling(p, until=3, max_samples=10**4, total_budget=10**9,
                                 strategy="adaptive", round_size=10**9, rng=rng)
        est = task_estimate(n, c, 3, n_boot=200, seed=rep)
        hits += est.lower <= p.mean() <= est.upper
        assert est.n_reached == int((c == 3).sum())
    assert hits / reps >= 0.85
    one = task_estimate(200, 0, 3)
    assert isinstance(one, TaskEstimate) and one.n_items == 1 and one.n_reached == 0
    assert 0 < one.lower < one.value < one.upper < 0.05
    assert one.unbiased == 0.0
    again = task_estimate(200, 0, 3)
    assert again == one  # seeded
    certain = task_estimate([3, 3], [3, 3], 3)  # n == K: estimate 1, point-mass draws
    assert certain.value == certain.lower == certain.upper == 1.0


def test_plan_round_properties():
    rng = np.random.default_rng(4)
    for trial in range(300):
        m = int(rng.integers(1, 60))
        K = int(rng.integers(1, 6))
        B = int(rng.integers(1, 500))
        n = rng.integers(0, B + 1, size=m)
        c = np.minimum(rng.binomial(n, rng.uniform(0, 1, size=m)), K)
        reached = rng.random(m) < 0.2
        c = np.where(reached & (n >= K), K, np.minimum(c, K - 1))
        round_size = int(rng.integers(1, 400))
        alloc = plan_round(n, c, K, B, round_size)
        active = (c < K) & (n < B)
        assert alloc.dtype == np.int64 and (alloc >= 0).all()
        assert (alloc[~active] == 0).all()
        assert alloc.sum() <= round_size
        assert (n + alloc <= B).all()
        assert (alloc[active] <= np.maximum(n[active], 4)).all()  # at most doubling
        if active.sum() <= round_size:
            assert (alloc[active] >= 1).all()
        else:
            assert alloc.sum() == round_size
            assert (alloc[np.flatnonzero(active)[:round_size]] == 1).all()
        assert np.array_equal(alloc, plan_round(n, c, K, B, round_size))
        unlimited = plan_round(n, c, K, B, 10**9)
        assert (alloc <= unlimited).all()
        if unlimited.sum() > round_size:
            assert alloc.sum() == round_size
    assert not plan_round([5, 10], [3, 0], 3, 10, 100).any()


def test_plan_round_chunk_rule():
    # fresh item: Jeffreys p = 0.5, needs 6, capped at min_chunk = 4
    assert plan_round([0], [0], 3, 1000, 100).tolist() == [4]
    # n = 100, c = 0: p = 0.5/101, need 606 -> capped at doubling (100)
    assert plan_round([100], [0], 3, 1000, 1000).tolist() == [100]
    # n = 100, c = 2: p = 2.5/101, need ceil(40.4) = 41
    assert plan_round([100], [2], 3, 1000, 1000).tolist() == [41]
    # never past the budget
    assert plan_round([990], [0], 3, 1000, 1000).tolist() == [10]
    # proportional split: every active item keeps at least 1
    assert plan_round([1000, 0, 0], [0, 0, 0], 3, 10**6, 12).tolist() == [10, 1, 1]
    assert uniform_allocation(3, 10).tolist() == [3, 3, 3]


def test_simulate_sampling_truncation_and_budget():
    rng = np.random.default_rng(5)
    p = 10 ** rng.uniform(-4, -0.3, size=200)
    n, c = simulate_sampling(p, until=4, max_samples=5000, total_budget=10**9,
                             strategy="adaptive", round_size=2048, rng=rng)
    reached = c == 4
    assert (c <= 4).all() and (n[~reached] == 5000).all() and (n <= 5000).all()
    assert (n[reached] >= 4).all()
    n2, c2 = simulate_sampling(p, until=4, max_samples=5000, total_budget=30_000,
                               strategy="adaptive", round_size=2048, rng=np.random.default_rng(6))
    assert n2.sum() <= 30_000 and (c2 <= 4).all()
    nu, cu = simulate_sampling(p, until=4, max_samples=5000, total_budget=30_050,
                               strategy="uniform", round_size=2048, rng=np.random.default_rng(6))
    assert (nu == 150).all() and (cu <= nu).all()
    # same seed -> same per-item sequence: the uniform record agrees with the adaptive one
    # wherever both saw the same draws
    both = (n2 >= 150) & (c2 < 4)
    first150 = cu[both]  # successes among the first 150 draws
    assert (first150 <= c2[both]).all()
