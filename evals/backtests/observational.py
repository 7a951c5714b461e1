"""Cross-family backtests (issue 16): ``--method observational`` beside the per-family methods.

Two designs, as in observational scaling laws (Ruan et al. 2024, arXiv:2405.10938):

- **leave one family's largest out** (``loflo``): for each family of a table in turn, its largest
  model is held out and forecast from everything else (the family's smaller models and every other
  family, all models of the other families included);
- **compute cutoff** (``cutoff``): every model above a FLOP cutoff is held out and forecast from the
  models below it (a family entirely above the cutoff is a new family to the fit).

Tables (results/ladders, final checkpoints, metric ``acc``): lm_eval_2023.csv (BLOOM, OPT, XGLM,
LLaMA, MPT), opt_bloom.csv (OPT, BLOOM), pythia.csv (Pythia, Pythia-deduped). Forecast tasks: the
table's shared benchmarks (``capscale.laws.capabilities.benchmark_matrix`` of the whole table: a
task at least two families and half the models report) that the target reports.

Methods, each exactly ``capscale backtest --method M`` (evals/backtests/public.run):
observational; direct (form chosen by the family's own rolling origins); the short-ladder forms
direct sigmoid_2p and direct linear (= the naive anchor "linear in log compute"); carry-forward
(= the naive anchor "the family's previous model", with its step interval); auto (per task, the
candidate with the lowest error on the family's own origins; observational is a candidate).

Writes ``<out>/<backtest>/<method>.json`` (the record contract), ``<out>/table.csv`` (every record
with the backtest, method and a near-chance flag), ``<out>/README.md`` (the tables) and plots.

    python evals/backtests/observational.py [--n-boot 200] [--jobs 2] [--out results/backtests/observational]
                                            [--only loflo_opt_bloom ...] [--methods observational direct ...]
                                            [--resume]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import public  # noqa: E402  (evals/backtests/public.py: the public ladders and the backtest runner)

ROOT = public.ROOT
OUT = ROOT / "results" / "backtests" / "observational"
TABLES = {"lm_eval_2023": "lm_eval_2023.csv", "opt_bloom": "opt_bloom.csv", "pythia": "pythia.csv"}
CUTOFFS = {"lm_eval_2023": 1.5e22, "opt_bloom": 1.5e22, "pythia": 1.0e22}  # FLOPs: every family loses its top
METHODS = {  # label -> (registry method, extra options)
    "observational": ("observational", {}),
    "direct": ("direct", {}),
    "direct 2p": ("direct", {"form": "sigmoid_2p"}),
    "direct linear": ("direct", {"form": "linear"}),
    "carry-forward": ("carry-forward", {}),
    "auto": ("auto", {}),
}
ANCHORS = {"direct linear": "linear in log compute", "carry-forward": "the family's previous model"}
NEAR_CHANCE = 0.05  # the family's previous model within 5 points of chance
# pythia.csv has no chance column: nominal 1 / number of choices (LAMBADA is open-vocabulary)
PYTHIA_CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "sciq": 0.25, "winogrande": 0.5,
                 "logiqa": 0.25, "wsc": 0.5, "lambada_openai": 0.0}


def table_of(name: str) -> pd.DataFrame:
    return public.ladder_of(public.PublicBacktest(name, name, TABLES[name], "", "acc"))


def shared_tasks(name: str) -> list[str]:
    from capscale.laws.capabilities import benchmark_matrix

    return benchmark_matrix(table_of(name), "acc").tasks


def largest_models(table: pd.DataFrame) -> dict[str, str]:
    finals = table[table["metric"] == "acc"].drop_duplicates(["family", "model"])
    return {family: rows.sort_values("flops")["model"].iloc[-1] for family, rows in finals.groupby("family")}


def backtests() -> list[public.PublicBacktest]:
    out = []
    for name, path in TABLES.items():
        table = table_of(name)
        tasks = set(shared_tasks(name))
        for family, model in sorted(largest_models(table).items()):
            reported = set(table.loc[(table["model"] == model) & (table["metric"] == "acc"), "task"])
            out.append(public.PublicBacktest(f"loflo_{name}_{family}", f"{name}: {model} from everything else", path,
                                             f"model == '{model}'", "acc", tuple(sorted(tasks & reported)),
                                             tags={"design": "loflo", "table": name}))
        cutoff = CUTOFFS[name]
        held = table[(table["flops"] > cutoff) & (table["metric"] == "acc")]
        out.append(public.PublicBacktest(f"cutoff_{name}", f"{name}: every model above {cutoff:.1e} FLOPs", path,
                                         f"flops > {cutoff:g}", "acc", tuple(sorted(tasks & set(held["task"]))),
                                         tags={"design": "cutoff", "table": name}))
    return out


def chance_of(table: pd.DataFrame, name: str) -> dict[str, float]:
    rows = table[table["metric"] == "acc"]
    out = rows.groupby("task")["chance"].median().dropna().to_dict() if "chance" in rows else {}
    if name == "pythia":
        out.update(PYTHIA_CHANCE)
        out.update({t: 0.25 for t in rows["task"].unique() if t.startswith("hendrycksTest-")})
    return out


def annotate(records: pd.DataFrame, backtest: public.PublicBacktest) -> pd.DataFrame:
    """Per record: the target family's models in the fit, and whether the benchmark is near chance
    for that family (its largest model in the fit within NEAR_CHANCE of chance)."""
    from capscale.ladder import final_checkpoints, holdout_split

    table = public.ladder_of(backtest)
    train, _ = holdout_split(table, backtest.holdout)
    finals = final_checkpoints(train[train["metric"] == "acc"])
    own = finals.drop_duplicates(["family", "model"]).groupby("family").size()
    chance = chance_of(table, backtest.tags["table"])
    previous = (finals.sort_values("flops").groupby(["family", "task"])["value"].last())
    near = []
    for _, r in records.iterrows():
        c = chance.get(r["task"])
        last = previous.get((r["family"], r["task"]))
        near.append(bool(c is not None and last is not None and last - c < NEAR_CHANCE))
    return records.assign(n_own=[int(own.get(f, 0)) for f in records["family"]], near_chance=near,
                          design=backtest.tags["design"], table=backtest.tags["table"])


def from_records(path: Path) -> pd.DataFrame:
    """A written records file as the summary table's columns (for --resume)."""
    table = pd.DataFrame(json.loads(path.read_text()))
    for column in ("predicted", "lower", "upper", "actual", "abs_error"):  # null (no forecast) -> NaN
        table[column] = pd.to_numeric(table[column], errors="coerce")
    forecast = table["predicted"].notna()
    inside = (table["actual"] >= table["lower"]) & (table["actual"] <= table["upper"])
    return table.assign(inside=inside.where(forecast, np.nan), reason=table["reason"].fillna(""))


def run_one(backtest, label: str, n_boot: int, jobs: int, out: Path, resume: bool = False) -> pd.DataFrame:
    from capscale.laws.registry import MethodOptions

    folder = out / backtest.name
    path = folder / f"{label.replace(' ', '_')}.json"
    if resume and path.exists():
        return annotate(from_records(path).assign(backtest=backtest.name, method=label), backtest)
    method, extra = METHODS[label]
    options = MethodOptions(n_boot=n_boot, extra=dict(extra))
    start = time.time()
    table, outcome = public.run(backtest, method, options, jobs=jobs)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.contract() for r in outcome.records], indent=1))
    if label == "observational":
        plot_examples(outcome, folder / "plots")
    print(f"{backtest.name:32s} {label:14s} {len(table):4d} records {time.time() - start:7.0f} s", flush=True)
    return annotate(table.assign(method=label), backtest)


PLOT_TASKS = ("arc_easy", "hellaswag", "lambada_openai", "winogrande", "hendrycksTest-high_school_psychology",
              "hendrycksTest-college_physics")


def plot_examples(outcome, folder: Path) -> None:
    """Each benchmark against capability 1 (families coloured, the held-out targets marked), for a few tasks."""
    from capscale.plots import plot_observational
    from capscale.store import safe_name

    for (task, family), predictor in outcome.predictors.items():
        if task not in PLOT_TASKS:
            continue
        records = [r for r in outcome.records if r.task == task and r.family == family and np.isfinite(r.predicted)]
        if records:
            plot_observational(predictor, records, folder / f"{safe_name(task)}--{safe_name(family)}.png")


# --- summary ----------------------------------------------------------------------------------------

def scores(rows: pd.DataFrame) -> dict:
    ok = rows[rows["predicted"].notna()]
    return {"n": len(rows), "forecast": len(ok), "mae": ok["abs_error"].mean() if len(ok) else np.nan,
            "cov90": ok["inside"].astype(float).mean() if len(ok) else np.nan}


def cell(s: dict, show_n: bool = False) -> str:
    if not s["forecast"]:
        return "—"
    text = f"{s['mae']:.3f} / {s['cov90']:.0%}"
    return text + (f" ({s['forecast']}/{s['n']})" if show_n or s["forecast"] < s["n"] else "")


def common(rows: pd.DataFrame, labels) -> pd.DataFrame:
    """Rows of the (backtest, task, model) targets every method in ``labels`` forecast."""
    key = ["backtest", "task", "model"]
    ok = rows[rows["predicted"].notna() & rows["method"].isin(labels)]
    counts = ok.groupby(key)["method"].nunique()
    keep = counts[counts == len(labels)].index
    return ok.set_index(key).loc[keep].reset_index()


def markdown(all_rows: pd.DataFrame, labels: list[str], n_boot: int, seconds: float) -> str:
    lines = ["# Cross-family forecasting: observational scaling against per-family methods", "",
             "Generated by `evals/backtests/observational.py` (see its docstring for the designs, tables and tasks); "
             f"{n_boot} bootstrap resamples, 90% intervals, {seconds / 60:.0f} min. Each cell: **mean |error| / "
             "share of actual values inside the 90% interval**, over the forecasts the method made (a count "
             "(made/targets) where it could not forecast every target: per-family methods cannot forecast a "
             "family with no other model). The naive anchors are " + ", ".join(
                 f"`{k}` ({v})" for k, v in ANCHORS.items()) + ".", ""]
    head = "| backtest | family (own models in the fit) | targets | " + " | ".join(labels) + " |"
    lines += ["## Per held-out family", "", head, "|" + "---|" * (3 + len(labels))]
    for (backtest, family), rows in all_rows.groupby(["backtest", "family"], sort=False):
        n_own = int(rows["n_own"].iloc[0])
        targets = rows[rows["method"] == labels[0]]
        cells = [cell(scores(rows[rows["method"] == m])) for m in labels]
        lines.append(f"| {backtest} | {family} ({n_own}) | {len(targets)} | " + " | ".join(cells) + " |")
    lines += ["", "## Averages", "",
              "All forecasts each method made, then the targets every method forecast (common), then subsets of the "
              "common targets: by the target family's own models in the fit, and benchmarks near chance for the "
              f"family (its largest model in the fit within {NEAR_CHANCE:.2f} of chance).", "",
              "| subset | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
    both = common(all_rows, labels)
    subsets = [("all forecasts made", all_rows), ("common targets (both designs)", both)]
    for design in ("loflo", "cutoff"):
        subsets.append((f"{design}: all forecasts made", all_rows[all_rows["design"] == design]))
        subsets.append((f"{design}: common targets", both[both["design"] == design]))
    for name, mask in (("0 own models", lambda r: r["n_own"] == 0), ("1-2 own models", lambda r: r["n_own"].between(1, 2)),
                       ("3-4 own models", lambda r: r["n_own"].between(3, 4)), ("5+ own models", lambda r: r["n_own"] >= 5),
                       ("near chance", lambda r: r["near_chance"]), ("not near chance", lambda r: ~r["near_chance"])):
        subsets.append((f"{name} (all forecasts made)", all_rows[mask(all_rows)]))
    for name, rows in subsets:
        cells = [cell(scores(rows[rows["method"] == m]), show_n=True) for m in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    per_family = both.groupby(["backtest", "family", "method"])["abs_error"].mean().unstack("method")
    lines.append(f"| mean over held-out families, common targets ({len(per_family)} families x backtests; MAE only) | "
                 + " | ".join(f"{per_family[m].mean():.3f}" if m in per_family else "—" for m in labels) + " |")
    per_table = ["", "## Per table and design (all forecasts made)", "", "| table | design | " + " | ".join(labels) + " |",
                 "|" + "---|" * (2 + len(labels))]
    for (table, design), rows in all_rows.groupby(["table", "design"], sort=False):
        per_table.append(f"| {table} | {design} | " + " | ".join(cell(scores(rows[rows["method"] == m]), True)
                                                              for m in labels) + " |")
    lines += per_table
    if "auto" in labels:
        chosen = all_rows[(all_rows["method"] == "auto") & all_rows["predicted"].notna()]
        picks = chosen["method_used"].str.replace("auto -> ", "", regex=False).value_counts()
        lines += ["", "`auto` chose: " + ", ".join(f"{k} {v}" for k, v in picks.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", help="backtest names (default all)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--resume", action="store_true", help="reuse the records files already written")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    start = time.time()
    chosen = [b for b in backtests() if not args.only or b.name in args.only]
    frames = []
    for backtest in chosen:
        for label in args.methods:
            frames.append(run_one(backtest, label, args.n_boot, args.jobs, args.out, args.resume))
    rows = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    keep = ["backtest", "design", "table", "method", "task", "family", "model", "n_own", "near_chance", "flops",
            "predicted", "lower", "upper", "actual", "abs_error", "inside", "method_used", "form_used", "reason"]
    rows[keep].to_csv(args.out / "table.csv", index=False)
    (args.out / "README.md").write_text(markdown(rows, args.methods, args.n_boot, time.time() - start))
    print(f"wrote {args.out / 'README.md'} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
