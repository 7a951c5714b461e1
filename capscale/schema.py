"""The contracts as data: what each metric is, and how a forecast target's scale is read.

Metric kinds decide how the forecasting side treats a metric: whether higher is better, whether
it is a probability (forecasts and draws live in [0, 1]), and whether guessing has a level
(``chance``) that a curve should not fall below. Names are matched exactly first, then by prefix,
so ``acc_norm`` and ``acc_bytes`` are accuracies and ``err`` (top-1 error) is one minus one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capscale.errors import CapscaleError


@dataclass(frozen=True)
class MetricKind:
    higher_is_better: bool
    probability: bool  # a share of items in [0, 1]: forecasts are clipped there
    has_chance: bool  # random guessing scores a known level (1 / n_choices)
    upper: float = 1.0  # the largest possible value of a bounded metric (brier reaches 2)


ACCURACY = MetricKind(higher_is_better=True, probability=True, has_chance=True)
ERROR = MetricKind(higher_is_better=False, probability=True, has_chance=True)
PROBABILITY = MetricKind(higher_is_better=True, probability=True, has_chance=False)
LOSS = MetricKind(higher_is_better=False, probability=False, has_chance=False, upper=math.inf)
BRIER = MetricKind(higher_is_better=False, probability=False, has_chance=False, upper=2.0)
UNKNOWN = MetricKind(higher_is_better=True, probability=False, has_chance=False, upper=math.inf)

# exact names, then prefixes (longest first wins); anything else is UNKNOWN: no clipping, no floor
METRIC_KINDS: dict[str, MetricKind] = {
    "acc": ACCURACY, "acc_norm": ACCURACY, "acc_bytes": ACCURACY, "greedy_acc": ACCURACY,
    "multiple_choice_grade": ACCURACY, "em": PROBABILITY, "exact_match": PROBABILITY,
    "err": ERROR, "p_correct": PROBABILITY, "pass_until": PROBABILITY, "pass_at_1": PROBABILITY,
    "exact_p": PROBABILITY, "brier": BRIER, "nll_correct": LOSS, "bpb_correct": LOSS, "loss": LOSS,
    "ppl": LOSS, "perplexity": LOSS,
}
METRIC_PREFIXES: dict[str, MetricKind] = {
    "acc": ACCURACY, "err": ERROR, "pass_at_": PROBABILITY, "p_": PROBABILITY, "nll": LOSS, "bpb": LOSS,
    "loss": LOSS, "brier": BRIER,
}
OWN_LOSSES = ("bpb_correct", "nll_correct")
"""Losses of the task's own correct continuation: at 0 the model puts all mass on the answer."""


def metric_kind(metric: str) -> MetricKind:
    if metric in METRIC_KINDS:
        return METRIC_KINDS[metric]
    for prefix in sorted(METRIC_PREFIXES, key=len, reverse=True):
        if metric.startswith(prefix):
            return METRIC_PREFIXES[prefix]
    return UNKNOWN


def to_goodness(metric: str, values):
    """A probability metric on the scale where higher is better (err -> 1 - err); others unchanged."""
    kind = metric_kind(metric)
    return 1.0 - values if kind.probability and not kind.higher_is_better else values


from_goodness = to_goodness  # the flip is its own inverse


def known(value) -> bool:
    """A scale value the user gave: not None and not NaN (tables carry NaN for 'unknown')."""
    return value is not None and not math.isnan(float(value))


def target_scale(params=None, tokens=None, flops=None) -> dict:
    """The target of a forecast as {params, tokens, flops}, unknown entries None.

    NaN counts as unknown (a ladder table has NaN where a source did not say); flops is filled as
    6·N·D only where both are known. Non-positive values are an error: laws live in log scale."""
    target = {"params": params if known(params) else None, "tokens": tokens if known(tokens) else None,
              "flops": flops if known(flops) else None}
    for key, value in target.items():
        if value is not None:
            value = float(value)
            if not value > 0:
                raise CapscaleError(f"the target's {key} must be positive, got {value:g}")
            target[key] = value
    if target["flops"] is None and target["params"] is not None and target["tokens"] is not None:
        target["flops"] = 6.0 * target["params"] * target["tokens"]
    if all(v is None for v in target.values()):
        raise CapscaleError("give the target as params and tokens, or as flops")
    return target


def require_inputs(target: dict, inputs, what: str) -> None:
    """Raise, naming what is missing, when a fit needs scale inputs the target does not have."""
    missing = [k for k in inputs if k in target and target.get(k) is None]
    if missing:
        given = [k for k, v in target.items() if v is not None]
        raise CapscaleError(f"{what} needs the target's {' and '.join(missing)} (given: {', '.join(given)})")


def jsonable(obj):
    """Strict JSON values for records and reports: NaN and inf -> null, numpy scalars -> Python, recursively
    through dicts, lists and tuples."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
