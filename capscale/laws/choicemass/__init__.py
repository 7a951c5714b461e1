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


from capscale.laws.choicemass.diagnostics import choice_mass_table, correlation_summary, item_compute_correlations
from capscale.laws.choicemass.predictor import ChoiceMassPredictor

__all__ = ["ChoiceMassPredictor", "choice_mass_table", "correlation_summary", "item_compute_correlations"]
