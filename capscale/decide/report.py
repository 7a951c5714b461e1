"""The decisions section of ``capscale report``: which family (recipe) wins at the ladder's largest size,
decided from the smaller runs and scored against the truth (``decide_backtest`` with max_drop 0).

Cheap by design: the single-scale ranking (DataDecide's baseline, Magnusson et al. 2025) needs no fit, so
the page shows it for every task; the forecasting methods' decisions are ``capscale decide-backtest``'s job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from capscale.decide.methods import DecideError
from capscale.decide.run import decide_backtest
from capscale.decide.targets import same_rung
from capscale.ladder import final_checkpoints
from capscale.laws.rolling import SIZE_RTOL

COLUMNS = ["task", "recipe_a", "recipe_b", "p_a_beats_b", "decision", "actual_winner", "correct", "reason"]


def largest_common_size(ladder: pd.DataFrame) -> float | None:
    """The largest params every family has a run of (within the rung tolerance), or None."""
    finals = final_checkpoints(ladder)
    sizes = [g["params"].to_numpy(float) for _, g in finals.groupby("family")]
    for size in sorted(set(np.concatenate(sizes)), reverse=True):
        if all(any(same_rung(size, s) for s in family) for family in sizes):
            return float(size)
    return None


def report_section(ladder: pd.DataFrame, *, metric: str, figures_dir: Path, seed: int = 0) -> dict | None:
    """None where the families share no size to decide at; else summary, table and notes (no figures)."""
    from capscale.laws.registry import MethodOptions

    size = largest_common_size(ladder)
    if size is None:
        return None
    target = f"params >= {size / (1.0 + SIZE_RTOL):.6g}"
    try:
        result = decide_backtest(ladder, "family", target, metric=metric, methods=["single-scale"],
                                 options=MethodOptions(seed=seed), max_drop=0)
    except DecideError as e:
        return {"summary": f"No decision at {size:.3g} parameters: {e}", "table": [], "figures": [], "notes": []}
    rows = [{k: r.get(k) for k in COLUMNS} for r in result["records"]]
    scored = [r for r in rows if r["correct"] is not None]
    right = sum(bool(r["correct"]) for r in scored)
    called = sum(r["decision"] not in (None, "too close to call") for r in rows)
    summary = (f"{len(rows)} pairwise decisions ({', '.join(result['recipes'])}) at {size:.3g} parameters, the largest "
               f"size every family has, each made from the smaller runs by the single-scale ranking and scored "
               f"against the held-out runs: {right} of {len(scored)} right, {called} called at the "
               f"{result['level']:.0%} level.")
    notes = ["Forecast-based decisions with calibrated P(A beats B): `capscale decide-backtest LADDER "
             f"--recipe-col family --target \"{target}\"`."]
    return {"summary": summary, "table": rows, "figures": [], "notes": notes}
