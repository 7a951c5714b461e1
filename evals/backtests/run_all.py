"""Every public backtest x every method, one table: how capscale's forecasts hold on real ladders.

    python evals/backtests/run_all.py [--n-boot 200] [--jobs 2] [--out results/backtests] [--only NAME ...]

For each public backtest of ``public.BACKTESTS`` (the largest models of every family held out, the
rest fitted, exactly ``capscale backtest``) and each method of METHODS, writes
``OUT/<backtest>/<method>/records.json`` (the CLI's --json contract) and ``table.csv`` (the records
with interval hits at 50/80/90% and warnings), then ``OUT/SUMMARY.md``: MAE and coverage per cell,
coverage pooled over every backtest, the OpenLM paper targets, the OLMo model-ladder recipe on the
ladders that have their own task loss, and timings. A cell a method cannot fill (no loss for
two-step, no per-choice rows for choice-mass) says so. ``--summary-only`` rewrites SUMMARY.md from
the tables of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import olmo_recipe  # noqa: E402
import public  # noqa: E402

ROOT = public.ROOT


@dataclass(frozen=True)
class Method:
    name: str
    method: str  # registry name
    options: dict = field(default_factory=dict, hash=False)
    needs_loss: bool = False
    needs_items: bool = False
    note: str = ""


METHODS = [
    Method("old default", "two-step", {"step1": "rule", "ceiling": "fit", "calibrate": False}, needs_loss=True,
           note="capscale 0.1's default: two-step, step 1 by a fixed rule, step 2's ceiling fitted, bootstrap interval"),
    Method("two-step", "two-step", {}, needs_loss=True,
           note="step 1 by rolling origin, step 2 sigmoid with the anchor on the task's own loss, calibrated"),
    Method("two-step exp", "two-step", {"step2": "exponential_loss"}, needs_loss=True,
           note="the same with Gadre et al.'s exponential step 2"),
    Method("two-step fit-ceiling", "two-step", {"ceiling": "fit"}, needs_loss=True,
           note="step 1 by rolling origin, step 2's ceiling fitted (no anchor), calibrated"),
    Method("two-step pooled", "two-step", {"pool": "tasks"}, needs_loss=True,
           note="two-step with step 2's shape partially pooled across the ladder's tasks"),
    Method("direct", "direct", {}, note="sigmoid / 2-parameter sigmoid / line in log compute by rolling origin"),
    Method("direct sigmoid", "direct", {"extra": {"form": "sigmoid"}}, note="a sigmoid in log compute (chance floor)"),
    Method("direct 2p", "direct", {"extra": {"form": "sigmoid_2p"}}, note="floor = chance, ceiling = 1"),
    Method("direct linear", "direct", {"extra": {"form": "linear"}}, note="a line in log compute, t interval"),
    Method("carry-forward", "carry-forward", {}, note="the largest run's value, interval from observed steps"),
    Method("choice-mass", "choice-mass", {}, needs_items=True, note="per-item margins (needs per-choice rows)"),
    Method("auto", "auto", {}, note="per task, the candidate with the lowest rolling-origin error"),
]
DEFAULT = "auto"


def run_cell(backtest, method: Method, n_boot: int, jobs: int, out: Path) -> dict:
    from capscale.laws.backtest import RECORD_KEYS
    from capscale.laws.registry import MethodOptions

    folder = out / backtest.name / method.name.replace(" ", "_")
    if method.needs_loss and backtest.loss is None:
        return {"backtest": backtest.name, "method": method.name, "status": "no loss"}
    if method.needs_items and backtest.items is None:
        return {"backtest": backtest.name, "method": method.name, "status": "no per-choice rows"}
    start = time.perf_counter()
    cpu = time.process_time()
    table, outcome = public.run(backtest, method.method, MethodOptions(n_boot=n_boot, **method.options), jobs=jobs)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.json").write_text(json.dumps([r.contract() for r in outcome.records], indent=1))
    table.to_csv(folder / "table.csv", index=False, float_format="%.6g")
    (folder / "calibration.jsonl").write_text(calibration_lines(outcome))
    return {"backtest": backtest.name, "method": method.name, "status": "ok", "n_boot": n_boot,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "keys": RECORD_KEYS}


def calibration_lines(outcome) -> str:
    """Per forecast: the uncalibrated deviation quantiles of its draws, its extrapolation distance and
    the held-out residuals its calibration used, so calibration rules can be compared offline."""
    from capscale.laws.base import deviation_quantiles, extrapolation_distance

    lines = []
    for r in outcome.records:
        predictor = outcome.predictors.get((r.task, r.family))
        if predictor is None or not np.isfinite(r.predicted):
            continue
        inner = getattr(predictor, "chosen_", predictor)
        target = {"params": r.params, "tokens": r.tokens, "flops": r.flops if np.isfinite(r.flops) else None}
        _, draws = inner.predictive_draws(**target)
        calibration = getattr(inner, "calibration_", None)
        lines.append(json.dumps({
            "task": r.task, "family": r.family, "model": r.model, "predicted": r.predicted, "actual": r.actual,
            "method": r.method_used, "distance": extrapolation_distance(getattr(inner, "extent_", {}), target),
            "deviations": {str(lv): deviation_quantiles(np.asarray(draws, float), lv) for lv in (0.5, 0.8, 0.9)},
            "residuals": calibration.residuals if calibration else [],
            "distances": calibration.distances if calibration else []}))
    return "\n".join(lines) + "\n"


def read_table(out: Path, backtest: str, method: str) -> pd.DataFrame | None:
    path = out / backtest / method.replace(" ", "_") / "table.csv"
    return pd.read_csv(path, keep_default_na=True) if path.exists() else None


def cell(table: pd.DataFrame | None, status: str = "") -> str:
    if table is None:
        return status or "—"
    s = public.score(table)
    if s["forecast"] == 0:
        return "no forecast"
    shown = f"{s['mae']:.4f} ({s['cov90']:.0%})"
    return shown + (f" [{s['forecast']}/{s['n']}]" if s["forecast"] < s["n"] else "")


def olmo_recipe_rows() -> list[dict]:
    """The paper's recipe vs capscale on the ladders with a task's own loss: the toy ladder and LAMBADA."""
    rows = []
    for backtest in (public.BY_NAME["toy"], public.BY_NAME["pythia"], public.BY_NAME["pythia_deduped"]):
        ladder = public.ladder_of(backtest)
        held = ladder.query(backtest.holdout)
        tasks = [t for t in sorted(held["task"].unique())
                 if ((ladder["task"] == t) & (ladder["metric"] == backtest.loss)).any()]
        models = sorted(held["model"].unique())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = olmo_recipe.backtest(ladder, models, tasks, backtest.metric, backtest.loss)
        rows.append({"backtest": backtest.name, "n": len(result), "mae": float(result["abs_error"].mean()),
                     "inside": float(result["inside"].mean())})
    return rows


def synthetic_rows(n_boot: int) -> list[dict]:
    """capscale's default and the paper's recipe on OLMo-like synthetic ladders (known truth), well
    specified and misspecified: 3 seeds each, 8 tasks, 7B/13B targets from 190M-1.3B x 1-10x Chinchilla."""
    from capscale.laws.backtest import run_backtest, summary_table
    from capscale.laws.registry import MethodOptions
    from capscale.synthetic import olmo_like_ladder

    rows = []
    for misspecify in (0.0, 0.4):
        for seed in range(3):
            ladder, _ = olmo_like_ladder(seed=seed, misspecify=misspecify)
            targets = ["7B-4T", "13B-5T"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                paper = olmo_recipe.backtest(ladder, targets, sorted(ladder["task"].unique()))
                outcome = run_backtest(ladder, f"model in {targets}", metric="acc", loss="bpb_correct", method="auto",
                                       options=MethodOptions(n_boot=n_boot), jobs=2)
            ours = public.score(summary_table(outcome))
            rows.append({"misspecify": misspecify, "seed": seed, "paper_mae": float(paper["abs_error"].mean()),
                         "paper_inside": float(paper["inside"].mean()), **{f"auto_{k}": v for k, v in ours.items()}})
    return rows


def openlm_targets(out: Path) -> list[list[str]]:
    rows = []
    for method in ("old default", "two-step exp", "auto"):
        t = read_table(out, "openlm_avg17", method)
        if t is None:
            continue
        for model in ("rpj-open_lm_1b-32.0", "rpj-open_lm_7b-1.0"):
            r = t[t["model"] == model]
            if len(r):
                r = r.iloc[0]
                rows.append([method, model, f"{r['actual']:.4f}", f"{r['predicted']:.4f} [{r['lower']:.4f}, {r['upper']:.4f}]",
                             f"{abs(r['predicted'] - r['actual']) / r['actual']:.2%}", str(r.get("form_used", ""))])
    return rows


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pooled_coverage(out: Path, method: str) -> dict:
    tables = [read_table(out, b.name, method) for b in public.BACKTESTS]
    tables = [t for t in tables if t is not None and len(t)]
    if not tables:
        return {}
    per_backtest = pd.DataFrame([public.score(t) for t in tables])
    everything = public.score(pd.concat(tables, ignore_index=True))
    return {"all": everything, "mean_of_backtests": per_backtest[["mae", "cov50", "cov80", "cov90"]].mean().to_dict()}


def write_summary(out: Path, info: dict) -> str:
    L = ["# Backtests on every public ladder (issue 11)", "",
         f"Generated by `python evals/backtests/run_all.py` ({info['seconds'] / 60:.1f} min of cells "
         f"on {info['cores']} cores{' shared with other jobs' if info['load'][1] > info['cores'] + 0.5 else ''}, "
         f"1-min load average {info['load'][0]:.1f} to {info['load'][1]:.1f}; bootstrap "
         "resamples per cell in the timing table). Every cell is "
         "`capscale backtest` on that ladder with that method: the largest models of every family held out, the "
         "rest fitted, each held-out model forecast at its last checkpoint. Records (the CLI's --json contract) "
         "and tables are in `<backtest>/<method>/`.", "",
         "Cells: mean absolute error of the forecast metric (accuracy, or the 17-task error for OpenLM) and, in "
         "brackets, the share of actual values inside the 90% interval; `[k/n]` where only k of n held-out runs "
         "could be forecast (the records of the others give the reason). `no loss`: two-step needs a loss "
         "metric the ladder lacks; `no per-choice rows`: choice-mass needs per-item data; `—`: the cell was not run "
         "(`--only NAME --methods ...` fills it; the timing table lists every cell that ran).", ""]
    header = ["backtest", *[m.name for m in METHODS]]
    rows = []
    for b in public.BACKTESTS:
        row = [f"`{b.name}`"]
        for m in METHODS:
            status = "no loss" if m.needs_loss and b.loss is None else (
                "no per-choice rows" if m.needs_items and b.items is None else "")
            row.append(cell(read_table(out, b.name, m.name), status))
        rows.append(row)
    L.append(md_table(header, rows))
    L.append("")
    L.append("What the backtests are:")
    L += [f"- `{b.name}`: {b.title}" for b in public.BACKTESTS]
    L.append("")
    L.append("Methods:")
    L += [f"- **{m.name}**: {m.note}" for m in METHODS]
    L.append("")
    L.append("## Coverage of the intervals, pooled\n")
    rows = []
    for m in METHODS:
        c = pooled_coverage(out, m.name)
        if not c:
            continue
        a, mb = c["all"], c["mean_of_backtests"]
        rows.append([m.name, a["forecast"], f"{a['mae']:.4f}", f"{a['cov50']:.0%}", f"{a['cov80']:.0%}",
                     f"{a['cov90']:.0%}", f"{a['width90']:.3f}", f"{mb['cov50']:.0%} / {mb['cov80']:.0%} / {mb['cov90']:.0%}"])
    L.append(md_table(["method", "forecasts", "MAE", "inside 50%", "inside 80%", "inside 90%", "mean 90% width",
                       "mean over backtests (50/80/90%)"], rows))
    L.append("")
    L.append("## OpenLM testbed: the paper's two targets (RedPajama, fit on <= 411M)\n")
    L.append(md_table(["method", "model", "actual err", "forecast [90%]", "relative error", "form"], openlm_targets(out)))
    L.append("\nGadre et al. 2024 report 3.64% (1.4B, M = 640) and 0.05% (6.9B, M = 20) with their own run selection "
             "(which includes a 1.4B run in the error fit).\n")
    if info.get("olmo_recipe"):
        L.append("## The OLMo model-ladder recipe on ladders with the task's own loss\n")
        L.append("`evals/backtests/olmo_recipe.py`: a plain re-implementation of Bhagia et al. 2024 (Chinchilla step 1 "
                 "with Huber on log residuals, sigmoid step 2 by least squares with the point (L = 0, acc = 1); its "
                 "interval is their delta-method band of step 2).\n")
        rows = []
        for r in info["olmo_recipe"]:
            ours = read_table(out, r["backtest"], DEFAULT)
            mine = ours[ours["task"].isin(["facts", "arith", "override", "copy", "lambada_openai"])] if ours is not None else None
            if mine is not None and r["backtest"] != "toy":
                mine = mine[mine["task"] == "lambada_openai"]
            s = public.score(mine) if mine is not None and len(mine) else None
            rows.append([f"`{r['backtest']}`", r["n"], f"{r['mae']:.4f} ({r['inside']:.0%})",
                         f"{s['mae']:.4f} ({s['cov90']:.0%})" if s else "—"])
        L.append(md_table(["backtest (tasks with their own loss)", "forecasts", "OLMo recipe MAE (inside)",
                           "capscale auto MAE (inside 90%)"], rows))
        L.append("")
    if info.get("synthetic"):
        L.append("## OLMo-like synthetic ladders (known truth)\n")
        L.append("`capscale.synthetic.olmo_like_ladder`: 4 sizes (190M-1.3B) x 1/2/5/10x Chinchilla tokens, 12 "
                 "checkpoints, 8 tasks, targets 7B-4T and 13B-5T; `misspecify` > 0 bends accuracy away from any "
                 "sigmoid below the ladder's losses.\n")
        rows = [[r["misspecify"], r["seed"], f"{r['paper_mae']:.4f} ({r['paper_inside']:.0%})",
                 f"{r['auto_mae']:.4f} ({r['auto_cov90']:.0%}, width {r['auto_width90']:.3f})"] for r in info["synthetic"]]
        L.append(md_table(["misspecify", "seed", "OLMo recipe MAE (inside its band)", "capscale auto MAE (inside 90%)"],
                          rows))
        L.append("")
    L.append("## Timing per cell\n")
    rows = [[c["backtest"], c["method"], c.get("n_boot", info["n_boot"]), f"{c['seconds']:.1f}", f"{c['cpu_seconds']:.1f}"]
            for c in info["cells"] if c.get("status") == "ok"]
    L.append(md_table(["backtest", "method", "bootstrap resamples", "wall s", "CPU s (main process)"], rows))
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per fit (default 200)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes over tasks (default 2)")
    parser.add_argument("--out", default=str(ROOT / "results" / "backtests"))
    parser.add_argument("--only", nargs="*", help="only these backtests (names); the summary keeps the others' tables")
    parser.add_argument("--methods", nargs="*", help="only these methods (names)")
    parser.add_argument("--summary-only", action="store_true", help="rewrite SUMMARY.md from an earlier run")
    parser.add_argument("--studies", action="store_true",
                        help="with --only/--methods, also rerun the OLMo-recipe and synthetic studies (a full run does)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"cells": []}
    if not args.summary_only:
        now = os.getloadavg()[0]
        low, high = info.get("load", [now, now]) if args.only or args.methods else [now, now]  # a partial run widens the range
        info.update(n_boot=args.n_boot, cores=os.cpu_count(), load=[min(low, now), max(high, now)])
        backtests = [b for b in public.BACKTESTS if not args.only or b.name in args.only]
        methods = [m for m in METHODS if not args.methods or m.name in args.methods]
        for b in backtests:
            for m in methods:
                c = run_cell(b, m, args.n_boot, args.jobs, out)
                print(json.dumps({k: v for k, v in c.items() if k != "keys"}), flush=True)
                # every finished cell is saved at once: a killed run loses only the cell it was in
                if info_path.exists():  # another run_all may have saved its cells meanwhile
                    info["cells"] = json.loads(info_path.read_text())["cells"]
                info["cells"] = [x for x in info["cells"] if (x["backtest"], x["method"]) != (b.name, m.name)] + [c]
                now = os.getloadavg()[0]
                info["load"] = [min(info["load"][0], now), max(info["load"][1], now)]
                info["seconds"] = sum(x.get("seconds", 0) for x in info["cells"])
                info_path.write_text(json.dumps(info, indent=1))
        if args.studies or not (args.only or args.methods):
            info.update(olmo_recipe=olmo_recipe_rows(), synthetic=synthetic_rows(args.n_boot))
            info_path.write_text(json.dumps(info, indent=1))
    (out / "SUMMARY.md").write_text(write_summary(out, info))
    print(f"wrote {out / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
