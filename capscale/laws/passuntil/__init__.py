"""The PassUntil scaling law (Hu et al. 2023, "Unlock Predictable Scaling from Emergent Abilities",
arXiv 2310.03262): forecast tiny pass rates of generative tasks across scale.

PassUntil samples every item until it is solved K times, so even pass rates of 1e-5 get a
finite estimate with a relative error of about 1/sqrt(K), whatever the rate. The paper's task
law is

    PU(N) = exp(-c * N^-alpha)   <=>   log(-log PU) = log c - alpha * ln N,

a straight line in ln N (``forms.pass_until_power``; N = params by default, or tokens / flops),
and its per-item form PU(N) = mean_i exp(-c_i * N^-alpha_i).

Task law. Fitted by weighted least squares on log(-log PU) against ln N, in closed form: the law
is linear there (the paper's own procedure), a closed form has no starting points, local minima or
convergence failures (a bootstrap refit cannot fail except for lack of distinct sizes), and
``accelerated_emergence`` tests curvature in the same space, so its slope is the predictor's alpha.
The weights come from the delta method,

    var(log(-log p)) = var(p) / (p log p)^2 = rel_var / (log p)^2,   rel_var = var(p) / p^2,

so a point's weight is (log p)^2 / rel_var. For a task value rel_var is taken from the ladder
(``pass_until_lower``/``pass_until_upper`` rows: (ln(upper/lower))^2; else a ``stderr`` column:
(stderr/value)^2) and is otherwise constant (PassUntil's error is relative). This is what makes
the linearised fit robust where a naive one is not: a value near 1 has log(-log PU) -> -inf, but
(log p)^2 -> 0 gives it no pull (a value of exactly 1 is clipped to 1 - 1e-9 and has weight ~1e-18),
and to first order the fit is the same as least squares on log PU, the space in which PassUntil's
noise is homoscedastic (the space of ``pass_until_power`` for ``fit_form``).

Per-item form (``per_item=True``; needs per-item sample counts). Item i's law is fitted to its raw
counts by maximum likelihood: successes c_ij in n_ij draws at p_ij = exp(-exp(a_i - alpha_i z_j)) is a
binomial GLM with the complementary log-log link, and the likelihood is the same under PassUntil's
stopping rule (sample until K successes or the budget) as under fixed n. Fitting the counts rather
than log(-log) of each estimate matters: with K = 4 a per-point transform is biased by ~20% (Jensen),
while the likelihood's bias shrinks with all of the item's successes together, and an unsolved size
(c = 0) enters as what it is, n failures, not as a Jeffreys pseudo-value. Half a success and half a
failure per item (Jeffreys, spread over its sizes) keep never-solved and never-failed items finite.
Weighted least squares on log(-log) of the estimates (weights from the delta method with
rel_var = max(1 - p, 0.5/(n+1)) / (c + 1/2)) gives the starting point.

Many items are degenerate: never solved at most sizes, never failed, or solved at one size only. Their
slopes are pooled: the item slopes are treated as draws from N(alpha_pool, tau^2) (a random-effects
meta-analysis; DerSimonian & Laird 1986 moment estimate of tau^2 from the items' own maximum-likelihood
slopes and their variances), and every item is refitted with that prior on its slope, i.e. its slope
is a precision-weighted compromise between its own and the pool's. An item measured uncensored
(0 < n_correct < n_drawn) at fewer than two sizes has no slope of its own and takes alpha_pool; only
its level c_i is fitted. If no item has a slope of its own, alpha_pool is the task-level slope.
Well-measured items keep their own slope, noisy ones are shrunk toward the pool in proportion to
their noise, and tau = 0 (no spread beyond noise) gives one common slope with item levels.

Intervals: a seeded bootstrap over runs (and, with per-item data, over items, the same draw at
every size) refits the law on each resample, plus one resampled residual (in log(-log PU)) of the
ladder's task values around the fit, so the interval is for the measured value.

The paper's "accelerated emergence" test (whether log(-log PU) bends away from the straight line, a
quadratic term in ln N) is a shape test of a curve and lives with the trends:
:func:`capscale.trends.emergence.accelerated_emergence`.

Modules: ``law`` (the task-level law), ``items`` (per-item data and laws), ``predictor``.
"""

from capscale.laws.passuntil.items import ItemLaw
from capscale.laws.passuntil.law import fit_law, law_parameters
from capscale.laws.passuntil.predictor import PassUntilPredictor

__all__ = ["PassUntilPredictor", "ItemLaw", "fit_law", "law_parameters"]


