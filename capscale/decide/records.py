"""One decision as a record: the call at the requested level, its score against the truth, and summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from capscale.decide.beliefs import Belief, interval_of, p_beats
from capscale.decide.methods import MethodSpec, RECORD_KEYS, TOO_CLOSE, sense
from capscale.decide.targets import Target


@dataclass
class DecisionRecord:
    task: str
    target: str
    method: str
    rank_metric: str
    recipe_a: str
    recipe_b: str
    value_a: float = math.nan
    value_b: float = math.nan
    lower_a: float = math.nan
    upper_a: float = math.nan
    lower_b: float = math.nan
    upper_b: float = math.nan
    p_a_beats_b: float | None = None
    diff: float = math.nan
    diff_lower: float = math.nan
    diff_upper: float = math.nan
    decision: str = ""
    called: bool = False
    paired: bool = False
    method_used_a: str = ""
    method_used_b: str = ""
    dropped: int = 0
    compute_a: float = math.nan
    compute_b: float = math.nan
    compute_fraction: float = math.nan
    actual_a: float | None = None
    actual_b: float | None = None
    actual_gap_se: float | None = None
    actual_winner: str | None = None
    correct: bool | None = None
    reason: str = ""

    def contract(self) -> dict:
        out = {}
        for key in RECORD_KEYS:
            value = getattr(self, key)
            if isinstance(value, (float, np.floating)):
                value = float(value) if np.isfinite(value) else None
            out[key] = value
        return out


def decide_pair(task: str, target: Target, spec: MethodSpec, metric: str, a: str, b: str, belief_a: Belief,
                belief_b: Belief, level: float, seed: int) -> DecisionRecord:
    rank = spec.ranked_by(metric)
    record = DecisionRecord(task, target.label, spec.label, rank, a, b, compute_a=belief_a.compute,
                            compute_b=belief_b.compute)
    flops = np.mean([target.scales[a].get("flops") or np.nan, target.scales[b].get("flops") or np.nan])
    record.compute_fraction = float(np.mean([belief_a.compute, belief_b.compute]) / flops) if flops else math.nan
    if not (belief_a.ok and belief_b.ok):
        record.reason = "; ".join(dict.fromkeys(x.reason or "no forecast" for x in (belief_a, belief_b) if not x.ok))
        return record
    p, diff, paired = p_beats(belief_a, belief_b, rank, seed)
    point = belief_a.value - belief_b.value
    lo, hi = (point, point) if len(diff) == 0 else interval_of(point, point + diff - np.median(diff), level)
    record.value_a, record.value_b = belief_a.value, belief_b.value
    record.lower_a, record.upper_a, record.lower_b, record.upper_b = belief_a.lower, belief_a.upper, belief_b.lower, belief_b.upper
    record.p_a_beats_b, record.diff, record.diff_lower, record.diff_upper = p, point, lo, hi
    record.paired = paired
    record.method_used_a, record.method_used_b = belief_a.method_used, belief_b.method_used
    # without draws on both sides (no noise estimate; every refit failed) P is a point comparison:
    # scored as a ranking, never called at a confidence level
    record.called = bool(len(belief_a.draws) and len(belief_b.draws)) and (p >= level or 1.0 - p >= level)  # 1 - 0.9 < 0.1 in floats
    record.decision = TOO_CLOSE if not record.called else a if p >= level else b
    return record


def score(record: DecisionRecord, truth_a: tuple, truth_b: tuple, metric: str) -> None:
    """Fill in the truth of a backtest: the actual winner by --metric (None on an exact tie) and whether
    the forced choice was right: the recipe with the better point forecast (DataDecide's decision
    accuracy ranks by the prediction), P(A beats B) breaking an exact tie."""
    (actual_a, se_a), (actual_b, se_b) = truth_a, truth_b
    record.actual_a, record.actual_b = actual_a, actual_b
    if se_a is not None and se_b is not None:
        record.actual_gap_se = float(math.hypot(se_a, se_b))
    if actual_a is None or actual_b is None:
        record.reason = record.reason or "no actual value for both recipes at this target"
        return
    gap = sense(metric) * (actual_a - actual_b)
    record.actual_winner = record.recipe_a if gap > 0 else record.recipe_b if gap < 0 else None
    if record.p_a_beats_b is None or record.actual_winner is None:
        return
    record.correct = forced_choice(record) == record.actual_winner


def forced_choice(record: DecisionRecord) -> str | None:
    """The recipe a ranking picks: better point value by the rank metric's sense, else by P."""
    edge = sense(record.rank_metric) * record.diff
    if edge == 0 or not np.isfinite(edge):
        edge = record.p_a_beats_b - 0.5
    return record.recipe_a if edge > 0 else record.recipe_b if edge < 0 else None


def gap_is_clear(record) -> bool:
    """The target runs differ by more than twice the standard error of their difference: a truth that
    another draw of the benchmark's items would not likely reverse."""
    se = record["actual_gap_se"]
    return se is not None and np.isfinite(se) and abs(record["actual_a"] - record["actual_b"]) > 2 * se


def summarise(records: list[dict], by: list[str]) -> list[dict]:
    """Decision accuracy per group: the share of pairs with a truth that the forced choice got right
    (and among the pairs whose target gap is clear, see gap_is_clear), the share called at the level,
    and the accuracy of the called ones; compute fraction (median)."""
    df = pd.DataFrame(records)
    if df.empty:
        return []
    scored = df[df["correct"].notna()].copy()
    out = []
    for key, group in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        right = scored.loc[group.index.intersection(scored.index)]
        called = right[right["called"].astype(bool)]
        clear = right[[gap_is_clear(r) for _, r in right.iterrows()]]
        out.append({**dict(zip(by, key)), "n_pairs": int(len(right)), "n_without_truth": int(len(group) - len(right)),
                    "accuracy": float(right["correct"].astype(float).mean()) if len(right) else None,
                    "n_clear": int(len(clear)),
                    "clear_accuracy": float(clear["correct"].astype(float).mean()) if len(clear) else None,
                    "called": float(len(called) / len(right)) if len(right) else None,
                    "called_accuracy": float(called["correct"].astype(float).mean()) if len(called) else None,
                    "compute_fraction": float(group["compute_fraction"].dropna().median())
                    if group["compute_fraction"].notna().any() else None})
    return out


def as_table(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=RECORD_KEYS)
