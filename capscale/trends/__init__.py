"""Shapes of a metric along compute, with statistical evidence: improving, flat, inverse, u_shaped,
inverted_u, emergent — and "hidden progress" of a continuous metric where accuracy shows none.

Why: users want to know which tasks get worse with scale (inverse scaling; McKenzie et al. 2023,
"Inverse Scaling: When Bigger Isn't Better"), which turn around later (U-shaped; Wei et al. 2022,
"Inverse scaling can become U-shaped"), which jump suddenly (emergent; Wei et al. 2022, "Emergent
Abilities of Large Language Models"; BIG-bench's breakthroughness, Srivastava et al. 2022), and whether
a smooth metric of the same items already moves before the jump (Schaeffer et al. 2023, "Are Emergent
Abilities of Large Language Models a Mirage?"; Hu et al. 2023, PassUntil).

Points. One value per model: each (family, model)'s final checkpoint, ordered by t = log10(compute),
compute = FLOPs, or parameters where a family's FLOPs are missing (the axis is reported). Families are
never pooled: a curve is one family's models. Values are turned into "goodness" g (the metric, negated
for lower-is-better metrics such as bpb, nll, brier), so that "improving" always means the metric gets
better.

Noise. A covariance Σ of the points: from per-item data (the item bootstrap: resampling the same items
for every model, whose covariance of task means is the plug-in item covariance / n_items, used in that
closed form — it keeps the pairing of items across models), else a ``stderr`` column (diagonal), else
``n_items`` for 0/1 metrics (binomial), else none: then a nominal noise (1% of the metric's scale) gives
shapes without confidence (no p-values). Scatter beyond Σ — a model that is off the curve for reasons
item sampling cannot see — is absorbed as an extra variance τ² (see step 5).

Fits, all weighted by w = 1 / diag(Σ + τ²I): constant; isotonic non-decreasing / non-increasing
(pool-adjacent-violators, via the min-max formula so that thousands of simulated curves are fitted at
once; Robertson, Wright & Dykstra 1988); unimodal ("peak": rises then falls) and anti-unimodal
("valley") as the best split into two isotonic pieces (Stout 2008); concave non-decreasing (a
diminishing-returns increase: non-negative least squares on hinge functions).

Decision rule (α = 0.05; every p-value is a parametric bootstrap: the null curve plus draws from
N(0, Σ + τ²I), ``n_sim`` of them, seeded per curve):
1. Trend. H0: constant. Statistics: RSS(const) − RSS(best monotone) and RSS(const) − RSS(best
   unimodal); the two are combined by their minimum p-value, itself calibrated on the same draws.
   p ≥ α → ``flat``.
2. Turning point. H0: the best monotone fit. Statistic RSS(best monotone) − RSS(best unimodal or
   anti-unimodal). p < α → ``inverted_u`` (peak) or ``u_shaped`` (valley); the turning point is the
   extreme block of that fit, inside the ladder by construction.
3. Otherwise monotone: non-increasing → ``inverse``; non-decreasing → step 4.
4. Emergence. H0: concave non-decreasing (gradual, diminishing returns). Statistic RSS(concave) −
   RSS(isotonic). ``emergent`` when p < α *and* the isotonic fit has a floor then a jump: the first
   k ≥ 2 points rise by at most 20% of the total rise (after a noise allowance of 2 standard errors),
   the next step rises by at least 25% of it and by at least 3× the floor's rise, and, when the
   ``chance`` column is known, the floor lies in the lowest quarter between chance and the curve's top
   (near or below chance). Else ``improving``.
5. Excess scatter. The chosen fit's weighted residuals are compared with what Σ predicts (scaled
   chi-square on n − #blocks dof); if they are too large (p < 0.05), τ² is set so that they match
   (Paule–Mandel style) and steps 1–4 are redone; τ² only grows, at most 4 rounds.

``p_value`` reports the chosen class against its simpler alternative: flat → the trend test's p (large
= no evidence of any trend); improving / inverse → the trend test; u_shaped / inverted_u → the
turning-point test; emergent → the emergence test. Evidence reported with it: Kendall's τ and
Spearman's ρ against t (with their textbook p-values, which ignore Σ), a weighted quadratic's
curvature and vertex (inside the ladder or not), the turning point, the floor (models, level, near
chance), and BIG-bench's scores (Srivastava et al. 2022, appendix "linearity and breakthroughness";
on goodness g along t): I(g) = sign(argmax g − argmin g)·(max g − min g), linearity
L = I(g) / RMS(Δg), breakthroughness B = I(g) / root-median-square(Δg), Δg the consecutive differences.

Hidden progress (early warning). Where the metric is flat (all points), emergent (the floor points) or
has a leading run of ≥ 2 points near chance (within 0.05 of chance or below it), each continuous
metric of the same items that exists (p_correct, bpb_correct, nll_correct, pass_until) is tested on
those models for a significant improvement (H0 constant, statistic RSS(const) − RSS(isotonic
improving), the same bootstrap and excess-scatter guard); ``hidden_progress`` is True when one of them
has p < α / (number of metrics tested).

Modules: ``classes`` (the classes, metric kinds, thresholds), ``shapes`` (the fits), ``evidence``
(descriptive scores), ``decide`` (the tests above), ``noise`` (Σ of a curve), ``analysis`` (a whole
ladder), ``emergence`` (Hu et al. 2023's accelerated-emergence test of a PassUntil curve).
"""

from capscale.trends.analysis import TrendReport, TrendResult, analyse_ladder
from capscale.trends.classes import CLASSES, TrendError
from capscale.trends.decide import decide_shape
from capscale.trends.emergence import accelerated_emergence

__all__ = ["analyse_ladder", "TrendReport", "TrendResult", "TrendError", "CLASSES", "decide_shape",
           "accelerated_emergence"]


