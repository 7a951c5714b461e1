"""Trend classes of the public ladders shipped in results/ladders/ and of the toy ladder (results/toy).

    python evals/trends/run_public.py [--n-sim 999] [--seed 0]

Writes results/trends/: trends.csv (one row per family x task curve), trends.md (the same as tables),
trends.json (every result with its evidence) and plots/<source>/<task>.png. Sources (provenance in
results/ladders/README.md):

- inverse_scaling_pilot: the Inverse Scaling Prize organisers' pilot tasks on GPT-2 and OPT, accuracy,
  noise from the per-item file (per-choice rows, item bootstrap);
- pythia_arithmetic: Pythia v0 deduped, arithmetic by shot count (stderr column, 5000 items per cell);
- pythia: ordinary 0-shot tasks of both Pythia families (stderr column);
- toy: the toy ladder's results store (per-item noise from its own choices).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from capscale.ladder import load_ladder, read_items
from capscale.trendplots import plot_trends
from capscale.trends import analyse_ladder

ROOT = Path(__file__).resolve().parents[2]
LADDERS = ROOT / "results" / "ladders"
PYTHIA_TASKS = ["arc_easy", "arc_challenge", "piqa", "sciq", "lambada_openai", "winogrande", "logiqa", "wsc"]
SOURCES = [
    ("inverse_scaling_pilot", LADDERS / "inverse_scaling_pilot.csv", LADDERS / "inverse_scaling_pilot_items.csv.gz", None),
    ("pythia_arithmetic", LADDERS / "pythia_arithmetic.csv", None, None),
    ("pythia", LADDERS / "pythia.csv", None, PYTHIA_TASKS),
    ("toy", ROOT / "results" / "toy", ROOT / "results" / "toy", None),
]


def markdown(table: pd.DataFrame) -> str:
    lines = ["# Trend classes of the public ladders", "",
             "`python evals/trends/run_public.py` (capscale/trends; decision rule in its docstring). "
             "p_value: the chosen class against its simpler alternative (flat: the trend test's p). "
             "L / B: BIG-bench linearity / breakthroughness. hidden progress: the strongest continuous metric "
             "on the models where accuracy shows none (flat, the floor before a jump, or near chance).", ""]
    for source, group in table.groupby("source", sort=False):
        lines += [f"## {source}", "",
                  "| task | family | axis | n | class | p | evidence | first → last | L | B | noise | hidden progress |",
                  "|---|---|---|---:|---|---:|---|---|---:|---:|---|---|"]
        for _, r in group.iterrows():
            p = "" if pd.isna(r["p_value"]) else f"{r['p_value']:.3g}"
            lin = "" if pd.isna(r["linearity"]) else f"{r['linearity']:.2f}"
            brk = "" if pd.isna(r["breakthroughness"]) else f"{r['breakthroughness']:.2f}"
            lines.append(f"| {r['task']} | {r['family']} | {r['axis']} | {r['n']} | **{r['class']}** | {p} | "
                         f"{r['evidence']} | {r['first']:.3f} → {r['last']:.3f} | {lin} | {brk} | {r['noise']} | "
                         f"{r['hidden_progress']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "trends"))
    args = parser.parse_args()
    out = Path(args.out)
    start = time.time()
    tables, payload = [], {"n_sim": args.n_sim, "seed": args.seed, "sources": {}}
    for name, ladder_path, items_path, tasks in SOURCES:
        ladder = load_ladder(ladder_path)
        items = read_items(items_path, "items") if items_path else None
        report = analyse_ladder(ladder, "acc", items=items, tasks=tasks, n_sim=args.n_sim, seed=args.seed)
        table = report.table()
        table.insert(0, "source", name)
        tables.append(table)
        payload["sources"][name] = {"ladder": str(ladder_path.relative_to(ROOT)), "notes": report.notes,
                                    "skipped": [list(s) for s in report.skipped],
                                    "results": [r.to_dict() for r in report.results]}
        plot_trends(report.results, out / "plots" / name, ladder=ladder, items=items)
        print(f"{name}: {len(report.results)} curves, {len(report.skipped)} skipped")
    table = pd.concat(tables, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "trends.csv", index=False, float_format="%.6g")
    (out / "trends.md").write_text(markdown(table))
    payload["seconds"] = time.time() - start
    (out / "trends.json").write_text(json.dumps(payload, indent=1))
    print(table.groupby(["source", "class"]).size().to_string())
    print(f"written to {out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
