"""Issue 15's evidence: decision accuracy of every method on public ladders and the toy recipes, and
loss-to-loss prediction and transfer on the OpenLM testbed. Regenerates results/decisions/.

Decision studies (each is exactly ``capscale decide-backtest`` with the arguments in STUDIES):
  openlm_avg17 / openlm_c4loss    OpenLM over-training testbed (Gadre et al. 2024), 3 datasets (C4,
                                  RedPajama, RefinedWeb): which gives the lower 17-task error / C4 loss at
                                  1.4B and 6.9B from the runs <= 411M (params_total)
  openlm_mult_avg17 / _c4loss     the same question at 411M for each token multiplier 5..640, from <= 154M
  openlm_tasks                    each of the 46 downstream accuracies at 1.4B / 6.9B from <= 411M
  pythia                          Pythia vs Pythia-deduped on every 0-shot accuracy (65 tasks), 6.9B and
                                  12B from <= 2.8B
  toy                             the toy ladder's recipes A (results/toy) and B (results/toy_b): s5
                                  from s1-s4 and s2x5, items resampled (both stores score the same items)
  toy_bpb                         the same recipes by the task loss at s5 (copy and override tie at
                                  accuracy 1.0 there, their losses do not)
Loss-to-loss studies (OpenLM):
  loss_to_loss   per dataset and validation set: fit on <= 411M, forecast the 1.4B / 6.9B runs through
                 the dataset's own validation loss (LossToLossPredictor) beside an independent scale law
                 of that validation loss (LossLawPredictor) on the same runs; relative errors
  transfer       per (reference, new) dataset pair and validation set: the reference's law transferred
                 to the new dataset from its k = 1, 2, 3 largest runs at 20 tokens/param
                 (``capscale transfer``), beside an independent fit on those k runs and on the new
                 dataset's whole ladder
Calibration (synthetic):
  calibration    P(A beats B) by loss-law on synthetic recipe pairs with known truth, with and without
                 the rolling-origin calibration: share called at 90%, right among them, reliability bins

    python evals/decisions/run_all.py [STUDY ...] [--n-boot 200] [--jobs 2] [--out results/decisions]

Each study writes results/decisions/<study>.json (the CLI --json contract); SUMMARY.md and
frontier.png (decision accuracy against compute, per study and method) are rebuilt from every JSON
present, so studies can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
LADDERS = ROOT / "results" / "ladders"
OPENLM = str(LADDERS / "openlm_overtraining.csv")
PYTHIA = str(LADDERS / "pythia.csv")
TOY = [str(ROOT / "results" / "toy"), str(ROOT / "results" / "toy_b")]
OWN_SPLIT = {"openlm-c4_original": "loss:c4_val", "openlm-rpj": "loss:paloma_redpajama",
             "openlm-rw_original": "loss:paloma_falcon-refinedweb"}
"""Each dataset's own validation loss (its training distribution): the source of loss-to-loss."""


@dataclass(frozen=True)
class DecisionStudy:
    name: str
    title: str
    ladders: tuple
    target: str
    metric: str = "acc"
    tasks: tuple | None = None
    methods: tuple | None = None  # None: capscale.decide.default_methods
    loss: str | None = "bpb_correct"
    loss_task: str | None = None
    where: str | None = None
    max_drop: int = 3
    recipe_col: str = "family"
    tags: dict = field(default_factory=dict, hash=False)

    def command(self, n_boot: int) -> str:
        parts = ["capscale decide-backtest", *[str(Path(p).relative_to(ROOT)) for p in self.ladders],
                 f"--recipe-col {self.recipe_col}", f'--target "{self.target}"', f"--metric {self.metric}"]
        parts += [f"--task {t}" for t in self.tasks or ()]
        parts += [f"--method {m}" for m in self.methods or ()]
        if self.loss and self.loss != "bpb_correct":
            parts.append(f"--loss {self.loss}")
        if self.loss_task:
            parts.append(f"--loss-task {self.loss_task}")
        if self.where:
            parts.append(f'--where "{self.where}"')
        parts += [f"--max-drop {self.max_drop}", f"--n-boot {n_boot}"]
        return " ".join(parts)


BIG = "params_total > 5e8"
STUDIES = [
    DecisionStudy("openlm_avg17", "OpenLM: lower 17-task error at 1.4B / 6.9B from <= 411M", (OPENLM,), BIG, "err",
                  ("avg_top1_error_17",), ("single-scale", "two-step", "direct", "auto"), "loss", "loss:c4_val"),
    DecisionStudy("openlm_c4loss", "OpenLM: lower C4 loss at 1.4B / 6.9B from <= 411M", (OPENLM,), BIG, "loss",
                  ("loss:c4_val",), ("single-scale", "loss-law")),
    DecisionStudy("openlm_mult_avg17", "OpenLM: lower 17-task error at 411M, each token multiplier, from <= 154M",
                  (OPENLM,), "params_total > 3e8", "err", ("avg_top1_error_17",),
                  ("single-scale", "two-step", "direct", "auto"), "loss", "loss:c4_val", where="params_total < 5e8"),
    DecisionStudy("openlm_mult_c4loss", "OpenLM: lower C4 loss at 411M, each token multiplier, from <= 154M",
                  (OPENLM,), "params_total > 3e8", "loss", ("loss:c4_val",), ("single-scale", "loss-law"),
                  where="params_total < 5e8"),
    DecisionStudy("openlm_tasks", "OpenLM: each of 46 tasks' accuracy at 1.4B / 6.9B from <= 411M", (OPENLM,), BIG,
                  "acc", None, ("single-scale", "two-step", "direct"), "loss", "loss:c4_val", max_drop=1),
    DecisionStudy("pythia", "Pythia vs Pythia-deduped, every 0-shot accuracy, 6.9B / 12B from <= 2.8B", (PYTHIA,),
                  "params > 3e9", "acc", None, ("single-scale", "direct", "auto"), "nll_correct", where="tokens > 0",
                  max_drop=2),
    DecisionStudy("toy", "Toy recipes A vs B: s5 from s1-s4 (+ s2x5), items paired", tuple(TOY), "params > 3e5", "acc"),
    DecisionStudy("toy_bpb", "Toy recipes A vs B: lower task loss (bpb_correct) at s5 from s1-s4 (+ s2x5)", tuple(TOY),
                  "params > 3e5", "bpb_correct", methods=("single-scale", "loss-law")),
]
BY_NAME = {s.name: s for s in STUDIES}


def code_version() -> str:
    """The commit the numbers come from (with "+changes" when the working tree differs from it)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", "capscale", "evals") else "")


def run_study(study: DecisionStudy, n_boot: int, jobs: int) -> dict:
    from capscale.decide import decide_backtest
    from capscale.commands.decisions import load_ladders, read_items
    from capscale.laws.registry import MethodOptions

    ladder = load_ladders(list(study.ladders), study.where)
    items = read_items(list(study.ladders))
    t0 = time.perf_counter()
    result = decide_backtest(ladder, study.recipe_col, study.target, metric=study.metric,
                             methods=list(study.methods) if study.methods else None, loss=study.loss,
                             loss_task=study.loss_task, tasks=list(study.tasks) if study.tasks else None,
                             options=MethodOptions(n_boot=n_boot), items=items, max_drop=study.max_drop, jobs=jobs,
                             progress=sys.stderr.isatty())
    result.update({"study": study.name, "title": study.title, "command": study.command(n_boot),
                   "seconds": round(time.perf_counter() - t0, 1), "commit": code_version()})
    return result


# --- loss-to-loss on the OpenLM testbed --------------------------------------------------------------

def openlm() -> pd.DataFrame:
    from capscale.ladder import load_ladder

    return load_ladder(OPENLM)


def loss_tasks(ladder: pd.DataFrame) -> list[str]:
    return sorted(t for t in ladder["task"].unique() if t.startswith("loss:"))


def run_loss_to_loss(step1s=("chinchilla", "auto")) -> dict:
    """Per dataset and validation set: the 1.4B / 6.9B losses from <= 411M, through the dataset's own
    validation loss (loss-to-loss) and by an independent scale law of the same loss on the same runs."""
    from capscale.errors import CapscaleError
    from capscale.ladder import final_checkpoints, holdout_split, metric_series
    from capscale.laws.losslaw import LossLawPredictor, LossToLossPredictor

    ladder = openlm()
    train, held = holdout_split(ladder, BIG)
    records = []
    for step1, (family, source) in ((s, f) for s in step1s for f in OWN_SPLIT.items()):
        rows, targets = train[train["family"] == family], held[held["family"] == family]
        for task in loss_tasks(ladder):
            if task == source:
                continue
            common = dict(n_boot=0, calibrate=False, step1=step1)
            try:
                l2l = LossToLossPredictor(source_task=source, **common).fit(rows, task, "loss")
                alone = LossLawPredictor(**common).fit(rows, task, "loss")
            except CapscaleError as e:
                records.append({"step1": step1, "family": family, "task": task, "reason": str(e)})
                continue
            for _, row in final_checkpoints(metric_series(targets, task, "loss")).iterrows():
                scale = dict(params=row["params"], tokens=row["tokens"], flops=row["flops"])
                a, b = l2l.predictive_draws(**scale)[0], alone.predictive_draws(**scale)[0]
                actual = float(row["value"])
                records.append({"step1": step1, "family": family, "source": source, "task": task, "model": row["model"],
                                "params": row["params"], "tokens": row["tokens"], "actual": actual,
                                "loss_to_loss": a, "independent": b, "loss_to_loss_rel_error": abs(a - actual) / actual,
                                "independent_rel_error": abs(b - actual) / actual, "map": l2l.map_params_,
                                "source_law": l2l.source_law_.form_used_, "independent_law": alone.form_used_})
    return {"study": "loss_to_loss", "records": records}


def run_transfer_study(ks=(1, 2, 3), step1s=("chinchilla", "auto")) -> dict:
    from capscale.errors import CapscaleError
    from capscale.laws.transfer import run_transfer

    ladder = openlm()
    records = []
    pairs = [(a, b) for a in OWN_SPLIT for b in OWN_SPLIT if a != b]
    for step1, (reference, new), task in ((s, p, t) for s in step1s for p in pairs for t in loss_tasks(ladder)):
        try:
            outcome = run_transfer(ladder, "family", reference, new, task, target=BIG, ks=ks,
                                   runs_query="token_multiplier == 20", step1=step1)
        except CapscaleError as e:
            records.append({"step1": step1, "reference": reference, "new": new, "task": task, "reason": str(e)})
            continue
        for r in outcome.records:
            records.append({"step1": step1, "reference": reference, "new": new, "task": task,
                            "reference_form": outcome.reference_form, **r.contract()})
    return {"study": "transfer", "runs": "token_multiplier == 20 (the k largest)", "records": records}


# --- is P(A beats B) calibrated? synthetic recipes with known truth ------------------------------------

def synthetic_recipes(seed: int, n_tasks: int) -> pd.DataFrame:
    """Two recipes per task on a Chinchilla-like loss, L = E + A N^-0.34 + B (q D)^-0.28 at 20 tokens per
    parameter, 6 sizes 1e6..1e8 and the 1e9 target; recipe B's data quality q (effective tokens per
    token) and floor E differ from A's by a few percent, so some pairs are clear and some are close.
    Each value is measured with 0.5% multiplicative noise: the target run's measurement is the truth."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_tasks):
        floor, a, b = rng.uniform(1.6, 2.4), rng.uniform(300, 500), rng.uniform(600, 1000)
        for recipe in ("A", "B"):
            q = 1.0 if recipe == "A" else float(np.exp(rng.normal(0, 0.3)))
            e = floor if recipe == "A" else floor * float(np.exp(rng.normal(0, 0.02)))
            for n in (*np.geomspace(1e6, 1e8, 6), 1e9):
                d = 20 * n
                loss = e + a * n ** -0.34 + b * (q * d) ** -0.28
                rows.append({"family": recipe, "model": f"{recipe}-{n:.0f}", "params": n, "tokens": d,
                             "flops": 6 * n * d, "step": np.nan, "task": f"t{k}", "metric": "loss",
                             "value": loss * float(np.exp(rng.normal(0, 0.005)))})
    return pd.DataFrame(rows)


def run_calibration(seeds=(0, 1, 2), n_tasks: int = 12, n_boot: int = 100) -> dict:
    """P(A beats B) by loss-law on synthetic ladders, calibrated and not: how often the called decisions
    are right, and a reliability table (share of pairs A actually won, per bin of P)."""
    from capscale.decide import decide
    from capscale.laws.registry import MethodOptions

    records = []
    for calibrate in (True, False):
        for seed in seeds:
            result = decide(synthetic_recipes(seed, n_tasks), "family", "params > 5e8", metric="loss",
                            methods=["loss-law"], options=MethodOptions(n_boot=n_boot, calibrate=calibrate))
            records += [{**r, "seed": seed, "calibrated": calibrate} for r in result["records"]]
    return {"study": "calibration", "commit": code_version(), "n_boot": n_boot, "records": records}


def calibration_table(result: dict) -> list[str]:
    df = pd.DataFrame(result["records"])
    df = df[df["p_a_beats_b"].notna() & df["actual_winner"].notna()]
    df["a_won"] = (df["actual_winner"] == df["recipe_a"]).astype(float)
    bins = [0, 0.1, 0.3, 0.7, 0.9, 1.0001]
    lines = ["| draws | pairs | called at 90% | right among called | "
             + " | ".join(f"A won when P in [{lo:g}, {min(hi, 1):g}{']' if hi > 1 else ')'}" for lo, hi in zip(bins, bins[1:]))
             + " |", "|" + "---|" * (4 + len(bins) - 1)]
    for calibrated, g in df.groupby("calibrated", sort=False):
        called = g[g["called"].astype(bool)]
        cells = []
        for lo, hi in zip(bins, bins[1:]):
            b = g[(g["p_a_beats_b"] >= lo) & (g["p_a_beats_b"] < hi)]
            cells.append(f"{b['a_won'].mean():.0%} of {len(b)}" if len(b) else "-")
        lines.append(f"| {'calibrated' if calibrated else 'bootstrap only (--no-calibrate)'} | {len(g)} | "
                     f"{len(called) / len(g):.0%} | {pct(called['correct'].astype(float).mean()) if len(called) else '-'} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Synthetic recipes (evals/decisions/run_all.py synthetic_recipes), method loss-law, "
              f"n_boot {result['n_boot']}, commit {result.get('commit', '?')}."]
    return lines


# --- the summary ---------------------------------------------------------------------------------------

def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * v:.0f}%"


def decision_table(result: dict) -> list[str]:
    summary = pd.DataFrame(result["summary"])
    drops = sorted(summary["dropped"].unique())
    head = ("| method | " + " | ".join(f"acc, {d} dropped (compute)" for d in drops)
            + " | clear pairs: acc (n), 0 dropped | called / right (0 dropped) |")
    lines = [head, "|" + "---|" * (len(drops) + 3)]
    for method, group in summary.groupby("method", sort=False):
        g = group.set_index("dropped")
        cells = []
        for d in drops:
            row = g.loc[d] if d in g.index else None
            if row is None or not row["n_pairs"]:
                cells.append("-")
            else:
                frac = row["compute_fraction"]
                cells.append(f"{pct(row['accuracy'])} ({frac:.2g})" if frac is not None else pct(row["accuracy"]))
        first = g.loc[drops[0]] if drops[0] in g.index else None
        called = f"{pct(first['called'])} / {pct(first['called_accuracy'])}" if first is not None else "-"
        clear = f"{pct(first['clear_accuracy'])} ({first['n_clear']})" if first is not None and first.get("n_clear") else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {clear} | {called} |")
    n = int(summary.loc[summary["dropped"] == drops[0], "n_pairs"].max())
    lines.append("")
    lines.append(f"{n} pairs with a truth at 0 dropped (task x target x pair). `{result['command']}` "
                 f"({result.get('seconds', '?')} s, commit {result.get('commit', 'unrecorded: before the merge of main')})")
    return lines


def toy_per_task(result: dict) -> list[str]:
    records = pd.DataFrame(result["records"])
    at0 = records[(records["dropped"] == 0) & records["actual_winner"].notna()]
    lines = ["| task | actual at s5 (A / B) | winner | " + " | ".join(at0["method"].unique()) + " |",
             "|" + "---|" * (3 + at0["method"].nunique())]
    for task, group in at0.groupby("task"):
        first = group.iloc[0]
        cells = []
        for _, r in group.iterrows():
            mark = "right" if r["correct"] else "wrong"
            p = r["p_a_beats_b"]
            cells.append(f"{mark} (P={p:.2f})" if p is not None and np.isfinite(p) else "-")
        lines.append(f"| {task} | {first['actual_a']:.3f} / {first['actual_b']:.3f} | {first['actual_winner']} | "
                     + " | ".join(cells) + " |")
    return lines


def loss_to_loss_table(result: dict) -> list[str]:
    df = pd.DataFrame([r for r in result["records"] if "actual" in r])
    df["target"] = np.where(df["params"] > 3e9, "6.9B", np.where(df["tokens"] / df["params"] < 40, "1.4B M=20",
                                                                   "1.4B over-trained"))
    lines = ["| scale laws | dataset (source loss) | target | loss-to-loss | independent | l2l better |",
             "|---|---|---|---|---|---|"]
    for (step1, family, target), g in df.groupby(["step1", "family", "target"], sort=False):
        better = (g["loss_to_loss_rel_error"] < g["independent_rel_error"]).mean()
        lines.append(f"| {step1} | {family} ({OWN_SPLIT[family]}) | {target} | "
                     f"{100 * g['loss_to_loss_rel_error'].mean():.2f}% | {100 * g['independent_rel_error'].mean():.2f}% | "
                     f"{better:.0%} of {len(g)} |")
    pooled = df.groupby("step1", sort=False)[["loss_to_loss_rel_error", "independent_rel_error"]].mean()
    lines.append("")
    for step1, row in pooled.iterrows():
        lines.append(f"- {step1}: loss-to-loss {100 * row['loss_to_loss_rel_error']:.2f}%, independent "
                     f"{100 * row['independent_rel_error']:.2f}% (mean over datasets, validation sets, targets)")
    lines += ["", "Mean relative error over the 7 other validation sets (and the target runs of each kind)."]
    return lines


def transfer_table(result: dict) -> list[str]:
    df = pd.DataFrame([r for r in result["records"] if "actual" in r])
    lines = ["| laws | reference -> new | k | transfer | independent (same k runs) | whole new ladder |",
             "|---|---|---|---|---|---|"]
    for (step1, ref, new, k), g in df.groupby(["step1", "reference", "new", "k"], sort=False):
        ind = g["independent_rel_error"].dropna()
        lines.append(f"| {step1} | {ref.removeprefix('openlm-')} -> {new.removeprefix('openlm-')} | {k} | "
                     f"{100 * g['transfer_rel_error'].mean():.2f}% | "
                     + (f"{100 * ind.mean():.2f}%" if len(ind) else "- (one run)")
                     + f" | {100 * g['full_ladder_rel_error'].mean():.2f}% |")
    columns = ["transfer_rel_error", "independent_rel_error", "full_ladder_rel_error"]
    pooled = df.groupby(["step1", "k"], sort=False)[columns].mean()
    lines.append("")
    for (step1, k), row in pooled.iterrows():
        ind = row["independent_rel_error"]
        lines.append(f"- {step1}, k = {k}: transfer {100 * row['transfer_rel_error']:.2f}%, independent "
                     + (f"{100 * ind:.2f}%" if np.isfinite(ind) else "-")
                     + f", whole new ladder {100 * row['full_ladder_rel_error']:.2f}% (mean over pairs, "
                     "validation sets and the 1.4B / 6.9B targets)")
    return lines


def plot_frontier(out: Path) -> Path | None:
    """Decision accuracy against the compute each method read (fraction of the target's), one panel per
    decision study, one line per method through its 0, 1, 2, ... dropped rungs: the compute-decision frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = [(s, json.loads((out / f"{s.name}.json").read_text())) for s in STUDIES if (out / f"{s.name}.json").exists()]
    if not studies:
        return None
    cols = 3
    rows = -(-len(studies) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, (study, result) in zip(axes.flat, studies):
        summary = pd.DataFrame(result["summary"])
        summary = summary[(summary["n_pairs"] > 0) & summary["compute_fraction"].notna()]
        for method, g in summary.groupby("method", sort=False):
            g = g.dropna(subset=["compute_fraction"]).sort_values("compute_fraction")
            style = dict(color="black", lw=2.2, marker="s") if method == "single-scale" else dict(marker="o", lw=1.3)
            ax.plot(g["compute_fraction"], 100 * g["accuracy"], label=method, alpha=0.85, **style)
        n = int(summary.loc[summary["dropped"] == 0, "n_pairs"].max()) if len(summary) else 0
        ax.set_xscale("log")
        ax.set_ylim(-5, 105)
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{study.name} ({n} pairs)", fontsize=10)
        ax.set_xlabel("compute read / target compute")
        ax.set_ylabel("decision accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    for ax in list(axes.flat)[len(studies):]:
        ax.set_visible(False)
    fig.suptitle("Compute-decision frontier: each point drops one more of the largest rungs (right to left)",
                 fontsize=11)
    fig.tight_layout()
    path = out / "frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(out: Path) -> Path:
    lines = ["# Decisions: which recipe wins at scale (issue 15)", "",
             "Regenerate: `python evals/decisions/run_all.py` (one study: add its name). "
             "Decision accuracy = share of (task, target, recipe pair) with a truth whose ranking was right "
             "(forced choice by the point forecast); in brackets the compute of the runs each method read, as "
             "a fraction of the target's (median over pairs). *clear pairs*: those whose target runs differ by "
             "more than twice the standard error of the difference (where the table has stderr). "
             "*called / right*: share of pairs with P(A beats B) >= 0.9 or <= 0.1 and draws on both sides, "
             "and the accuracy among those.", ""]
    for study in STUDIES:
        path = out / f"{study.name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        lines += [f"## {study.name}: {study.title}", "", *decision_table(result), ""]
        if study.name.startswith("toy"):
            lines += ["Per task at 0 dropped (s5 from s1-s4 and s2x5):", "", *toy_per_task(result), ""]
    if plot_frontier(out) is not None:
        lines += ["![compute-decision frontier](frontier.png)", ""]
    for name, title, table in (("calibration", "Is P(A beats B) calibrated? (synthetic ladders, known truth)",
                                calibration_table),
                               ("loss_to_loss", "Loss-to-loss on the OpenLM testbed (fit <= 411M)", loss_to_loss_table),
                               ("transfer", "Transfer to a new dataset from k runs (OpenLM)", transfer_table)):
        path = out / f"{name}.json"
        if path.exists():
            lines += [f"## {title}", "", *table(json.loads(path.read_text())), ""]
    lines += [f"Machine: {platform.platform()}, Python {platform.python_version()}."]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"studies to run (default all): "
                        f"{', '.join([s.name for s in STUDIES] + ['loss_to_loss', 'transfer', 'calibration'])}")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "decisions"))
    parser.add_argument("--summary-only", action="store_true", help="only rebuild SUMMARY.md")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.studies or [s.name for s in STUDIES] + ["loss_to_loss", "transfer", "calibration"]
    for name in [] if args.summary_only else names:
        t0 = time.perf_counter()
        if name == "loss_to_loss":
            result = run_loss_to_loss()
        elif name == "transfer":
            result = run_transfer_study()
        elif name == "calibration":
            result = run_calibration(n_boot=args.n_boot)
        elif name in BY_NAME:
            result = run_study(BY_NAME[name], args.n_boot, args.jobs)
        else:
            parser.error(f"unknown study {name!r}")
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"summary: {write_summary(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
