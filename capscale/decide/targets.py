"""Target scales of a decision: a query whose runs are held out, or explicit ``params=...,tokens=...`` scales."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import MODEL_KEY, final_checkpoints, holdout_split
from capscale.laws.rolling import SIZE_RTOL
from capscale.schema import target_scale
from capscale.decide.methods import DecideError


EXPLICIT = re.compile(r"^\s*(params|tokens|flops)\s*=(?!=)")


def parse_explicit(text: str) -> list[dict] | None:
    """``params=6.9e9,tokens=1.4e11[; params=...]`` -> target scales; None when ``text`` is a query."""
    if not EXPLICIT.match(text):
        return None
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = {}
        for item in filter(None, (i.strip() for i in part.split(","))):
            key, eq, number = item.partition("=")
            key = key.strip()
            if not eq or key not in ("params", "tokens", "flops") or key in values:
                raise DecideError(f"--target {text!r}: write scales as params=N,tokens=D (or flops=C), "
                                  "several joined by ';', or give a query such as \"params > 1e9\"")
            try:
                values[key] = float(number)
            except ValueError:
                raise DecideError(f"--target {text!r}: {key} must be a number, got {number.strip()!r}") from None
        out.append(target_scale(values.get("params"), values.get("tokens"), values.get("flops")))
    if not out:
        raise DecideError(f"--target {text!r} names no scale")
    return out


@dataclass
class Target:
    label: str
    scales: dict  # recipe -> {params, tokens, flops}
    runs: dict = field(default_factory=dict)  # recipe -> model of its run at the target (held out)

    def to_dict(self) -> dict:
        return {"label": self.label, "scales": self.scales, "runs": self.runs}


def scale_label(scale: dict) -> str:
    parts = [f"{k}={scale[k]:.3g}" for k in ("params", "tokens") if scale.get(k) is not None]
    return ",".join(parts) if parts else f"flops={scale['flops']:.3g}"


def same_rung(a: float, b: float) -> bool:
    if not (np.isfinite(a) and np.isfinite(b)):
        return bool(np.isnan(a) and np.isnan(b))
    return max(a, b) <= min(a, b) * (1.0 + SIZE_RTOL)


def held_targets(held: pd.DataFrame, recipe_col: str, recipes: list[str]) -> list[Target]:
    """One Target per distinct (params, tokens) of the held-out runs' final checkpoints."""
    columns = list(dict.fromkeys(MODEL_KEY + [recipe_col, "params", "tokens", "flops"]))
    finals = final_checkpoints(held)[columns].drop_duplicates(MODEL_KEY)
    groups: list[list] = []  # [representative (params, tokens), [rows]]
    for _, row in finals.sort_values(["params", "tokens"], kind="stable").iterrows():
        for group in groups:
            if same_rung(group[0][0], row["params"]) and same_rung(group[0][1], row["tokens"]):
                group[1].append(row)
                break
        else:
            groups.append([(row["params"], row["tokens"]), [row]])
    targets = []
    for (params, tokens), members in groups:
        runs, scales = {}, {}
        for row in members:
            recipe = str(row[recipe_col])
            if recipe not in runs:  # two runs of one recipe at one scale: the first is the target run
                runs[recipe] = str(row["model"])
                scales[recipe] = target_scale(row["params"], row["tokens"], row["flops"])
        shared = target_scale(np.median([r["params"] for r in members]), np.median([r["tokens"] for r in members]),
                              np.median([r["flops"] for r in members]))
        full = {r: scales.get(r, shared) for r in recipes}
        targets.append(Target(scale_label(shared), full, runs))
    return targets


def resolve_targets(ladder: pd.DataFrame, recipe_col: str, target: str,
                    recipes: list[str]) -> tuple[pd.DataFrame, list[Target]]:
    """(rows to fit on, targets). A query holds its rows out (they are the target runs); explicit
    scales fit on every row."""
    explicit = parse_explicit(target)
    if explicit is not None:
        return ladder, [Target(scale_label(s), {r: dict(s) for r in recipes}) for s in explicit]
    try:
        train, held = holdout_split(ladder, target)
    except CapscaleError as e:
        raise DecideError(str(e).replace("holdout query", "target query")) from None
    return train, held_targets(held, recipe_col, recipes)
