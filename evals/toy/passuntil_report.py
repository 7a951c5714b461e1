"""PassUntil on the toy ladder's generative tasks: what README shows.

Reads the per-item sample counts that ``capscale sample`` wrote into the toy store and writes
  results/toy/passuntil.csv              every checkpoint: greedy acc, PassUntil (90% CI), pass@1, exact
  results/toy/passuntil_<task>.png       greedy accuracy vs PassUntil vs exact probability along compute
  results/toy/passuntil.md               final checkpoints, the accelerated-emergence test, the backtests
  results/toy/backtest_pass-until*.json  forecasts of the largest run (same JSON contract as the others)

    capscale sample --ladder evals/ladders/toy-full.yaml --task arith_gen --out results/toy \\
        --until 4 --max-samples 1000 --exact
    python evals/toy/passuntil_report.py [--store results/toy]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from capscale.ladder import read_store
from capscale.laws.backtest import run_backtest
from capscale.trends.emergence import accelerated_emergence
from capscale.metrics import sample_checkpoint_table
from capscale.plots import plot_sampling_ladder
from capscale.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
HOLDOUT = "model == 'toy-s5'"


def fmt(v, spec=".3g") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    last = table.sort_values("step").groupby(["model", "task"], sort=False).tail(1)
    return last.sort_values(["task", "flops"])


def emergence_rows(table: pd.DataFrame) -> list[dict]:
    """The accelerated-emergence test on the final checkpoints of the runs at 20 tokens/param (one per size)."""
    rows = []
    for task, t in final_rows(table).groupby("task"):
        t = t[~t["model"].str.contains("x")]  # the over-trained s2x5 shares s2's N: not a point on the N-law
        se = ((t["upper"] - t["lower"]) / (2 * 1.645)).to_numpy()
        res = accelerated_emergence(t["params"].to_numpy(), t["pass_until"].to_numpy(), se=np.maximum(se, 1e-12))
        rows.append({"task": task} | {k: res[k] for k in ("n", "alpha", "curvature", "p_value", "verdict")})
    return rows


def backtests(store: Path, tasks: list[str]) -> dict[str, pd.DataFrame]:
    ladder = read_store(store)
    items = ResultsStore(store).read_samples()[["checkpoint", "task", "item", "n_drawn", "n_correct", "until"]]
    out = {}
    for method, metric in (("pass-until", "pass_until"), ("pass-until-items", "pass_until"), ("direct", "greedy_acc")):
        outcome = run_backtest(ladder, HOLDOUT, metric=metric, method=method, tasks=tasks, n_boot=400,
                               items=items if method == "pass-until-items" else None)
        records = [r.contract() for r in outcome.records]
        (store / f"backtest_{method}_{metric}.json").write_text(json.dumps(records, indent=2))
        out[f"{method} ({metric})"] = pd.DataFrame(records)
    return out


def markdown(table: pd.DataFrame, emergence: list[dict], bt: dict[str, pd.DataFrame]) -> str:
    lines = ["# PassUntil on the toy ladder", "",
             "Final checkpoint of every run. PassUntil: K=4 successes or 1,000 samples per item, temperature 1; "
             "90% interval by bootstrap over items with per-item posterior draws. exact: mean over items of "
             "P(answer then a stop | prompt) from one forward pass.", "",
             "| task | model | params | FLOPs | greedy acc | PassUntil [90% CI] | pass@1 (unbiased) | exact | samples |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in final_rows(table).iterrows():
        lines.append(f"| {r['task']} | {r['model']} | {r['params']:,.0f} | {r['flops']:.2e} | {r['greedy_acc']:.3f} | "
                     f"{fmt(r['pass_until'])} [{fmt(r['lower'])}, {fmt(r['upper'])}] | {fmt(r['pass_at_1'])} | "
                     f"{fmt(r['exact_p'])} | {r['samples']:,.0f} |")
    lines += ["", "Accelerated emergence (is log(-log PU) linear in ln N? final checkpoints s1..s5, weighted by the "
              "PassUntil intervals; curvature < 0 = faster than the law):", "",
              "| task | points | alpha | curvature | p-value | verdict |", "|---|---:|---:|---:|---:|---|"]
    for e in emergence:
        lines.append(f"| {e['task']} | {e['n']} | {fmt(e['alpha'])} | {fmt(e['curvature'])} | {fmt(e['p_value'])} | "
                     f"{e['verdict']} |")
    lines += ["", f"Backtests: fit on every other run of the family, forecast `{HOLDOUT}` at its last checkpoint:", "",
              "| method | task | predicted [90% interval] | actual | abs error |", "|---|---|---:|---:|---:|"]
    for name, df in bt.items():
        for _, r in df.iterrows():
            lines.append(f"| {name} | {r['task']} | {fmt(r['predicted'])} [{fmt(r['lower'])}, {fmt(r['upper'])}] | "
                         f"{fmt(r['actual'])} | {fmt(r['abs_error'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "results" / "toy"))
    args = ap.parse_args(argv)
    store = Path(args.store)
    rs = ResultsStore(store)
    table = sample_checkpoint_table(rs.read_samples(), rs.read_manifest())
    table.sort_values(["task", "model", "step"]).to_csv(store / "passuntil.csv", index=False)
    for task, t in table.groupby("task"):
        plot_sampling_ladder(t, task, store / f"passuntil_{task}.png")
    sampled_everywhere = [t for t, g in table.groupby("task") if g["model"].nunique() >= 4]
    text = markdown(table, emergence_rows(table), backtests(store, sampled_everywhere))
    (store / "passuntil.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
