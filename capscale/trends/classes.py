"""The six trend classes, the metric kinds the rule needs and its thresholds (the rule is in capscale.trends)."""

from __future__ import annotations

from capscale.errors import CapscaleError


CLASSES = ("improving", "flat", "inverse", "u_shaped", "inverted_u", "emergent")
LOWER_IS_BETTER = frozenset({"bpb_correct", "nll_correct", "brier", "loss", "mean_loss", "ppl", "err", "bpb",
                             "nll", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_bytes", "greedy_acc", "exact_match", "em"})
BOUNDED_METRICS = BINARY_METRICS | {"p_correct", "pass_until", "pass_at_1", "exact_p", "brier"}
CONTINUOUS_METRICS = ("p_correct", "bpb_correct", "nll_correct", "pass_until")

FLOOR_SHARE = 0.20     # the floor may rise by at most this share of the total rise
JUMP_SHARE = 0.25      # the step after the floor carries at least this share of the total rise
JUMP_RATIO = 3.0       # ... and at least this multiple of the floor's own rise
CHANCE_QUARTER = 0.25  # near chance: the floor is in this lowest share between chance and the top
NEAR_CHANCE = 0.05     # a point counts as near chance within this (absolute) margin above chance
NOMINAL_NOISE = 0.01   # without a noise source: 1% of the metric's scale


class TrendError(CapscaleError):
    """A trend analysis cannot run on the given input; the message says what to fix."""
