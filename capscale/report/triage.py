"""Predictability triage: how much a task's score jumps from checkpoint to checkpoint, and the verdict.

Why: tasks whose scores jump around between neighbouring checkpoints forecast badly (OLMo's ladder work,
Bhagia et al. 2024; Heineman et al. 2025, "Signal and Noise", compare that noise with the spread of scores
across models). So the report puts the noise next to the spread, the ladder's own backtest error and the
trend class, and turns them into one word a reader can sort by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LAST_CHECKPOINTS = 4  # the noise is measured on each run's last 4 checkpoints (at least 3)
MIN_CHECKPOINTS = 3
NOISY_RELATIVE = 0.25  # checkpoint noise above a quarter of the ladder's spread: "noisy"
NOISY_ERROR = 0.5  # an in-ladder backtest error above half the spread: "noisy" too (the law does not hold)
WATCH_CLASSES = ("emergent", "u_shaped", "inverted_u")
VERDICTS = ("predictable", "noisy", "emergent-watch", "flat", "unknown")


def line_residuals(steps: np.ndarray, values: np.ndarray) -> tuple[float, int]:
    """Sum of squared residuals of a straight line in log(step) through the points, and its dof: the
    scatter around the run's own trend (a run still learning is not noisy for moving)."""
    x = np.log(steps)
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(np.sum((values - design @ coef) ** 2)), len(values) - 2


def checkpoint_noise(series: pd.DataFrame) -> tuple[float | None, str]:
    """(noise, source) of one family's task curve (rows: model, step, value[, stderr, n_items]).

    ``checkpoints``: the pooled standard deviation of each run's last LAST_CHECKPOINTS checkpoints around a
    line in log(step) (runs with at least MIN_CHECKPOINTS with step > 0); without such runs, the median
    ``stderr`` of the final checkpoints (``stderr``), or the binomial standard error from ``n_items``
    (``binomial``); (None, "none") when the ladder says nothing about noise."""
    ss, dof = 0.0, 0
    for _, run in series[series["step"] > 0].groupby("model"):
        run = run.sort_values("step").tail(LAST_CHECKPOINTS)
        if len(run) >= MIN_CHECKPOINTS and run["step"].nunique() == len(run):
            s, d = line_residuals(run["step"].to_numpy(float), run["value"].to_numpy(float))
            ss, dof = ss + s, dof + d
    if dof > 0:
        return float(np.sqrt(ss / dof)), "checkpoints"
    finals = series.sort_values("step").groupby("model").tail(1)
    if "stderr" in finals and finals["stderr"].notna().any():
        return float(finals["stderr"].median()), "stderr"
    if "n_items" in finals and finals["n_items"].notna().any() and finals["value"].between(0, 1).all():
        p, n = finals["value"].to_numpy(float), finals["n_items"].to_numpy(float)
        return float(np.nanmedian(np.sqrt(p * (1 - p) / n))), "binomial"
    return None, "none"


def spread(finals: pd.Series) -> float:
    """The range of the final checkpoints' values along the ladder: the signal the noise competes with."""
    values = finals.to_numpy(float)
    return float(np.ptp(values)) if len(values) else float("nan")


def ratio(part, whole) -> float | None:
    if part is None or whole is None or not np.isfinite(part) or not np.isfinite(whole) or whole <= 0:
        return None
    return float(part / whole)


def verdict(trend_class: str | None, hidden_progress: bool | None, relative_noise: float | None,
            relative_error: float | None) -> tuple[str, str]:
    """(verdict, why). Order matters: a shape that changes inside the ladder (emergent, U-shaped, hidden
    progress under a flat score) is a warning whatever the noise; then no trend at all; then noise or an
    in-ladder error large against the spread; else predictable."""
    if trend_class in WATCH_CLASSES:
        return "emergent-watch", f"trend is {trend_class}: the curve changes shape inside the ladder"
    if hidden_progress:
        return "emergent-watch", "hidden progress: a continuous metric improves where this one does not"
    if trend_class == "flat":
        return "flat", "no trend beyond the noise"
    if relative_noise is not None and relative_noise >= NOISY_RELATIVE:
        return "noisy", f"checkpoint noise is {relative_noise:.0%} of the spread across the ladder"
    if relative_error is not None and relative_error >= NOISY_ERROR:
        return "noisy", f"in-ladder backtest error is {relative_error:.0%} of the spread across the ladder"
    if trend_class is None or trend_class == "insufficient":
        return "unknown", "too few runs for a trend class"
    return "predictable", f"{trend_class}, noise and in-ladder error small against the spread"
