"""A plain re-implementation of the OLMo model-ladder paper's recipe, as the anchor capscale must beat.

Bhagia et al. 2024 ("Establishing Task Scaling Laws via Compute-Efficient Model Ladders"), as their
fitting scripts run it (formulas only; this is an independent implementation):
- step 1: L(N, D) = A / N^alpha + B / D^beta + E on each run's final checkpoint, Huber loss on log
  residuals (delta = 1e-3), L-BFGS-B from one start (log A = 3, log B = 6, alpha = 0.1, beta = 0.2,
  E = 1), every parameter >= 0;
- step 2: Acc(L) = a / (1 + exp(-k (L - L0))) + b with a in [-1, 0], L0 >= 0, k >= 0, b in [0, 1],
  fitted by least squares (scipy's curve_fit) on every checkpoint after the first 10% of each run,
  5-point moving average, plus the point (L = 0, Acc = 1); several starts, the first that
  converges without a warning wins;
- the forecast: step 2 at step 1's loss. The paper reports no prediction interval for the chained
  forecast; ``interval`` gives the delta-method band of step 2 alone (their plots' 1.96 SE).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit, minimize

STEP2_STARTS = [[-0.7, 0.6, 7.0, 1.0], [-0.7, 1.4, 3.2, 1.3], [-2.7, 1.4, 3.2, 1.3], [-0.09, 0.6, 6.5, 0.1],
                [-0.64, -0.41, 12.7, 1.05]]


def chinchilla(nd, a, b, alpha, beta, e):
    n, d = nd
    return np.exp(a - alpha * np.log(n)) + np.exp(b - beta * np.log(d)) + e


def fit_step1(n, d, loss) -> np.ndarray:
    delta = 1e-3

    def objective(p):
        r = np.log(np.maximum(chinchilla((n, d), *p), 1e-12)) - np.log(loss)
        a = np.abs(r)
        return float(np.sum(np.where(a < delta, 0.5 * r ** 2, delta * (a - 0.5 * delta))))

    res = minimize(objective, [3.0, 6.0, 0.1, 0.2, 1.0], method="L-BFGS-B", bounds=[(0, None)] * 5,
                   options={"maxiter": 100000, "ftol": 0.0, "gtol": 1e-10})
    return res.x


def sigmoid(x, a, x0, k, b):
    return a / (1.0 + np.exp(-k * (x - x0))) + b


def fit_step2(loss, acc) -> tuple[np.ndarray, np.ndarray | None]:
    x, y = np.append(loss, 0.0), np.append(acc, 1.0)
    last = None
    for i, p0 in enumerate(STEP2_STARTS):
        bounds = ([-1.0, 0.0, 0.0, 0.0], [0.0, np.inf, np.inf, 1.0]) if i == 0 else (-np.inf, np.inf)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OptimizeWarning)
            try:
                coef, cov = curve_fit(sigmoid, x, y, p0=p0, bounds=bounds, maxfev=500000)
            except RuntimeError:
                continue
        last = (coef, cov)
        if not any(issubclass(w.category, OptimizeWarning) for w in caught):
            return coef, cov
    if last is None:
        raise RuntimeError("step 2 did not converge from any start")
    return last


def step2_points(joined: pd.DataFrame, skip: float = 0.1, window: int = 5) -> pd.DataFrame:
    out = []
    for _, run in joined.groupby(["family", "model"], sort=False):
        run = run.sort_values("step")
        run = run[run["step"] >= skip * run["step"].max()]
        out.append(run.assign(loss=run["loss"].rolling(window, center=True, min_periods=1).mean(),
                              value=run["value"].rolling(window, center=True, min_periods=1).mean()))
    return pd.concat(out, ignore_index=True)


def forecast(train: pd.DataFrame, task: str, target: dict, metric: str = "acc", loss: str = "bpb_correct") -> dict:
    """{'predicted', 'loss', 'lower', 'upper'} for one target from the training runs' rows of one task."""
    acc = train[(train["task"] == task) & (train["metric"] == metric)]
    bpb = train[(train["task"] == task) & (train["metric"] == loss)]
    joined = acc.merge(bpb[["family", "model", "step", "value"]].rename(columns={"value": "loss"}),
                       on=["family", "model", "step"])
    finals = joined[joined["step"] == joined.groupby(["family", "model"])["step"].transform("max")]
    p1 = fit_step1(finals["params"].to_numpy(float), finals["tokens"].to_numpy(float), finals["loss"].to_numpy(float))
    predicted_loss = float(chinchilla((target["params"], target["tokens"]), *p1))
    points = step2_points(joined)
    coef, cov = fit_step2(points["loss"].to_numpy(float), points["value"].to_numpy(float))
    value = float(sigmoid(predicted_loss, *coef))
    se = np.nan
    if cov is not None and np.all(np.isfinite(cov)):
        e = np.exp(-coef[2] * (predicted_loss - coef[1]))
        grad = np.array([1 / (1 + e), -coef[0] * coef[2] * e / (1 + e) ** 2,
                         coef[0] * (predicted_loss - coef[1]) * e / (1 + e) ** 2, 1.0])
        se = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    return {"predicted": value, "loss": predicted_loss, "lower": value - 1.96 * se, "upper": value + 1.96 * se}


def backtest(ladder: pd.DataFrame, holdout_models: list[str], tasks: list[str], metric: str = "acc",
             loss: str = "bpb_correct") -> pd.DataFrame:
    """The recipe on every task: fit on the runs not held out, forecast each held-out model's last step."""
    rows = []
    train = ladder[~ladder["model"].isin(holdout_models)]
    for task in tasks:
        held = ladder[ladder["model"].isin(holdout_models) & (ladder["task"] == task) & (ladder["metric"] == metric)]
        for model, run in held.groupby("model"):
            last = run[run["step"] == run["step"].max()].iloc[0]
            try:
                f = forecast(train, task, {"params": last["params"], "tokens": last["tokens"]}, metric, loss)
            except (RuntimeError, ValueError) as e:
                f = {"predicted": np.nan, "loss": np.nan, "lower": np.nan, "upper": np.nan, "reason": str(e)}
            rows.append({"task": task, "model": model, "actual": float(last["value"]), **f})
    out = pd.DataFrame(rows)
    out["abs_error"] = (out["predicted"] - out["actual"]).abs()
    out["inside"] = (out["actual"] >= out["lower"]) & (out["actual"] <= out["upper"])
    return out
