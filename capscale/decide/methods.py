"""The decision methods (``name`` or ``name:metric``), recipes as values of a column, and the record's constants."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from capscale.errors import CapscaleError
from capscale.schema import metric_kind


TOO_CLOSE = "too close to call"


OWN_METHODS = ("single-scale", "loss-law", "loss-to-loss")


CONTINUOUS = ("bpb_correct", "p_correct")


RECORD_KEYS = ["task", "target", "method", "rank_metric", "recipe_a", "recipe_b", "value_a", "value_b", "lower_a",
               "upper_a", "lower_b", "upper_b", "p_a_beats_b", "diff", "diff_lower", "diff_upper", "decision",
               "called", "paired", "method_used_a", "method_used_b", "dropped", "compute_a", "compute_b",
               "compute_fraction", "actual_a", "actual_b", "actual_gap_se", "actual_winner", "correct", "reason"]


class DecideError(CapscaleError):
    """A decision problem that cannot be posed as given (one recipe, no common size, no target)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    rank_metric: str | None = None  # None: the target metric

    @property
    def label(self) -> str:
        return self.name if self.rank_metric is None else f"{self.name}:{self.rank_metric}"

    def ranked_by(self, metric: str) -> str:
        return self.rank_metric or metric


def parse_method(text: str) -> MethodSpec:
    from capscale.laws.registry import METHODS

    name, _, metric = text.strip().partition(":")
    known = OWN_METHODS + tuple(METHODS)
    if name not in known:
        raise DecideError(f"--method {text!r}: the method must be one of {', '.join(known)} (optionally :METRIC)")
    return MethodSpec(name, metric or None)


def default_methods(metric: str, ladder: pd.DataFrame) -> list[MethodSpec]:
    """The baseline, the continuous rankings and the forecasts the ladder has metrics for."""
    have = set(ladder["metric"].unique())
    kind = metric_kind(metric)
    if not (kind.higher_is_better or kind.probability):  # a loss: rank it, or extrapolate it
        return [MethodSpec("single-scale"), MethodSpec("loss-law")]
    out = [MethodSpec("single-scale")]
    out += [MethodSpec("single-scale", m) for m in CONTINUOUS if m in have]
    if "bpb_correct" in have:
        out.append(MethodSpec("loss-law", "bpb_correct"))
    if "p_correct" in have:
        out.append(MethodSpec("direct", "p_correct"))
    out += [MethodSpec("two-step"), MethodSpec("direct"), MethodSpec("auto")]
    return out


def sense(metric: str) -> float:
    """+1 where higher is better, -1 for errors and losses: sense * value is 'goodness' to compare."""
    return 1.0 if metric_kind(metric).higher_is_better else -1.0


def recipes_of(ladder: pd.DataFrame, recipe_col: str) -> list[str]:
    if recipe_col not in ladder.columns:
        raise DecideError(f"--recipe-col {recipe_col!r} is not a column of the ladder "
                          f"(columns: {', '.join(map(str, ladder.columns))})")
    values = ladder[recipe_col]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        raise DecideError(f"--recipe-col {recipe_col!r} is empty on some rows; every run needs a recipe")
    recipes = sorted(values.astype(str).unique())
    if len(recipes) < 2:
        raise DecideError(f"--recipe-col {recipe_col!r} has one recipe only ({recipes[0]!r}); a decision needs two")
    return recipes


def rows_of(table: pd.DataFrame, recipe_col: str, recipe: str) -> pd.DataFrame:
    out = table[table[recipe_col].astype(str) == recipe].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out
