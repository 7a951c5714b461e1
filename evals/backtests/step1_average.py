"""Step 1 chosen by rolling origin vs averaged over forms, on every public ladder with a loss law to test.

Why: ``step1="auto"`` bets on the form that wins the ladder's own rolling origins; ``step1="average"``
averages the eligible forms' forecasts (capscale.laws.averaged). This script decides which is the
default, on data, not on one ladder:

* loss level (the scale law itself): the OpenLM over-training testbed (3 datasets x 8 validation
  losses, fitted on the <= 411M runs, every 1.4B / 6.9B run held out) and Chinchilla's runs (Epoch's
  digitisation of the paper's figure 4: runs above 3x a compute cut-off held out, cut-offs at the 60th,
  70th, 80th, 90th and 95th percentile of compute) — mean |relative error| per form, for the
  rolling-origin choice, the equal-weight average and weights 1/err and 1/err^2 from the rolling origins;
* accuracy through two-step (point forecasts, n_boot 0): OpenLM's 17-task average error with Gadre et
  al.'s exponential step 2 (the paper's targets) and each of its 46 tasks' accuracy (sigmoid step 2).

    python evals/backtests/step1_average.py            # -> results/backtests/step1_average.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
OPENLM = ROOT / "results" / "ladders" / "openlm_overtraining.csv"
CHINCHILLA = ROOT.parent / "shared" / "data" / "ladders" / "chinchilla_epoch" / "chinchilla_fig4_losses.csv"
HELD = "params_total > 5e8"
WEIGHTINGS = ("select", "equal", "inverse", "inverse_squared")


def loss_case(train: pd.DataFrame, held: pd.DataFrame, label: dict) -> list[dict]:
    """Per held-out run: each form's relative loss error and the forms' rolling-origin errors."""
    from capscale.laws.step1 import fit_step1, predict_loss
    from capscale.laws.twostep import TwoStepPredictor

    y = train["value"].to_numpy(float)
    chooser = TwoStepPredictor(step1="auto", n_boot=0, calibrate=False)
    chooser.choose_step1(train, y)
    internal = chooser.step1_errors_
    fits = {f: fit_step1(f, train, y) for f in internal}
    rows = []
    for _, r in held.iterrows():
        target = dict(params=r.params, tokens=r.tokens, flops=r.flops)
        rows.append({**label, "run": r.model, **{f"err_{f}": predict_loss(target, fit) / r.value - 1
                                                  for f, fit in fits.items()},
                     **{f"int_{f}": internal[f] for f in fits}})
    return rows


def combine(df: pd.DataFrame) -> pd.DataFrame:
    forms = [c[4:] for c in df.columns if c.startswith("err_")]
    e = df[[f"int_{f}" for f in forms]].to_numpy(float)
    x = df[[f"err_{f}" for f in forms]].to_numpy(float)
    ok = np.isfinite(e) & np.isfinite(x)
    out = df.copy()
    out["select"] = [xi[oi][np.argmin(ei[oi])] for xi, ei, oi in zip(x, e, ok)]
    for name, w in (("equal", np.ones_like(e)), ("inverse", 1 / e), ("inverse_squared", 1 / e ** 2)):
        w = np.where(ok, w, 0.0)
        out[name] = (np.where(ok, x, 0.0) * w).sum(1) / w.sum(1)
    return out


def loss_tables() -> pd.DataFrame:
    from capscale.ladder import holdout_split, load_ladder

    rows = []
    openlm = load_ladder(str(OPENLM))
    for family in openlm["family"].unique():
        train_all, held_all = holdout_split(openlm[openlm["family"] == family], HELD)
        for task in sorted(t for t in openlm["task"].unique() if str(t).startswith("loss:")):
            finals = train_all[train_all["task"] == task].sort_values("step").groupby("model").tail(1)
            held = held_all[held_all["task"] == task].sort_values("step").groupby("model").tail(1)
            if len(finals) >= 5 and len(held):
                rows += loss_case(finals.reset_index(drop=True), held, {"ladder": "OpenLM", "case": f"{family} {task}"})
    chin = pd.read_csv(CHINCHILLA)
    chin["model"] = chin["model"] + "-D" + chin["tokens"].map(lambda v: f"{v:.3e}")  # one row per run
    for q in (0.6, 0.7, 0.8, 0.9, 0.95):
        cut = float(np.quantile(chin["flops"], q))
        rows += loss_case(chin[chin["flops"] <= cut].reset_index(drop=True), chin[chin["flops"] > 3 * cut],
                          {"ladder": "Chinchilla", "case": f"compute <= q{q:.2f}"})
    return combine(pd.DataFrame(rows))


def accuracy_tables() -> pd.DataFrame:
    from capscale.ladder import holdout_split, load_ladder
    from capscale.laws.twostep import TwoStepPredictor

    openlm = load_ladder(str(OPENLM))
    rows = []
    for family in openlm["family"].unique():
        train, held = holdout_split(openlm[openlm["family"] == family], HELD)
        cases = [("avg17", "avg_top1_error_17", "err", "exponential_loss")]
        cases += [("46 tasks", t, "acc", "sigmoid_loss") for t in sorted(train[train["metric"] == "acc"]["task"].unique())]
        for group, task, metric, step2 in cases:
            for step1 in ("auto", "average"):
                try:
                    p = TwoStepPredictor(step1=step1, step2=step2, n_boot=0, calibrate=False).fit(
                        train, task, metric, "loss", "loss:c4_val")
                except Exception:  # a task step 2 cannot fit: both sides skip it (dropna below)
                    continue
                for _, a in held[(held["task"] == task) & (held["metric"] == metric)].iterrows():
                    v = p.predict(params=a.params, tokens=a.tokens, flops=a.flops).value
                    rows.append({"group": group, "family": family, "task": task, "run": a.model, "step1": step1,
                                 "abs_error": abs(v - a.value),
                                 "rel_error": abs(v - a.value) / abs(a.value) if a.value else np.nan})
    return pd.DataFrame(rows)


def write(out: Path, losses: pd.DataFrame, acc: pd.DataFrame, seconds: float) -> None:
    cols = [c for c in losses.columns if c.startswith("err_")] + list(WEIGHTINGS)
    by_ladder = (losses.groupby("ladder")[cols].apply(lambda g: g.abs().mean()) * 100)
    n = losses.groupby("ladder").size()
    wide = acc.pivot_table(index=["group", "family", "task", "run"], columns="step1", values="abs_error").dropna()
    rel = acc.pivot_table(index=["group", "family", "task", "run"], columns="step1", values="rel_error").dropna()
    lines = ["# Step 1: rolling-origin choice vs averaged forms", "",
             "Generated by `python evals/backtests/step1_average.py` (see its docstring for the designs).", "",
             "## Loss level: mean |relative error| of the held-out runs' loss, %", "",
             "| ladder | runs | " + " | ".join(c.replace("err_", "") for c in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for ladder, row in by_ladder.iterrows():
        lines.append(f"| {ladder} | {n[ladder]} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    mean = by_ladder.mean()
    lines.append("| mean of the two | | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    lines += ["", "`select` = the form the ladder's rolling origins choose (`step1=\"auto\"`); `equal` = the "
              "equal-weight average (`step1=\"average\"`); `inverse`, `inverse_squared` = weights 1/err, 1/err^2 from "
              "the rolling-origin errors.", "",
              "## Accuracy through two-step (point forecasts), OpenLM, 3 datasets, 1.4B / 6.9B from <= 411M", "",
              "| targets | forecasts | auto: mean abs error | average | auto: mean rel error | average |",
              "|---|---:|---:|---:|---:|---:|"]
    for group, g in wide.groupby(level="group"):
        r = rel.xs(group, level="group")
        lines.append(f"| {group} | {len(g)} | {g['auto'].mean():.4f} | {g['average'].mean():.4f} | "
                     f"{100 * r['auto'].mean():.2f}% | {100 * r['average'].mean():.2f}% |")
    rpj = acc[(acc["group"] == "avg17") & (acc["family"] == "openlm-rpj")]
    lines += ["", "Paper targets (RedPajama, 17-task average error, exponential step 2): " + "; ".join(
        f"{r.run} {r.step1} {100 * r.rel_error:.2f}%" for r in rpj.itertuples()), "",
        f"{seconds:.0f} s on this machine.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "step1_average.md").write_text("\n".join(lines))
    (out / "step1_average.json").write_text(json.dumps({"loss": losses.to_dict("records"), "accuracy": acc.to_dict("records")},
                                                       indent=1, default=float) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "backtests"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    losses = loss_tables()
    acc = accuracy_tables()
    write(Path(args.out), losses, acc, time.perf_counter() - start)
    print((Path(args.out) / "step1_average.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
