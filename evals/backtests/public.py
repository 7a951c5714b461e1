"""The public backtests: every published ladder we have, each with its natural hold-out, as data.

One ``PublicBacktest`` per row of the comparison table in results/backtests/SUMMARY.md. Each says
which ladder table, which runs are held out (the largest of every family, as the papers do), which
metric and tasks are forecast and, where the ladder has one, which loss two-step goes through.
``run(backtest, method, options)`` is exactly ``capscale backtest`` on it (same library call).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
LADDERS = ROOT / "results" / "ladders"

PYTHIA_TASKS = ["arc_easy", "arc_challenge", "piqa", "sciq", "lambada_openai", "winogrande", "logiqa", "wsc"]
LARGEST = {"bloom": "bloom-7b1", "opt": "opt-66b", "xglm": "xglm-7.5B", "llama": "llama-30B", "mpt": "mpt-7b"}


@dataclass(frozen=True)
class PublicBacktest:
    name: str
    title: str
    ladder: str  # file under results/ladders, or "toy" (the shipped toy store)
    holdout: str
    metric: str = "acc"
    tasks: tuple | None = None  # None = every task with the metric in the held-out rows
    loss: str | None = None  # two-step's loss (None: the ladder has none)
    loss_task: str | None = None
    families: tuple | None = None  # only these families
    items: str | None = None  # per-choice rows for choice-mass (a store or a rows file)
    min_runs: int = 1
    tags: dict = field(default_factory=dict, hash=False)


BACKTESTS = [
    PublicBacktest("openlm_avg17", "OpenLM testbed: 17-task average error, 1.4B/6.9B from <= 411M (via C4 loss)",
                   "openlm_overtraining.csv", "params_total > 5e8", "err", ("avg_top1_error_17",), "loss",
                   "loss:c4_val"),
    PublicBacktest("openlm_tasks", "OpenLM testbed: each of 46 tasks' accuracy, 1.4B/6.9B from <= 411M (via C4 loss)",
                   "openlm_overtraining.csv", "params_total > 5e8", "acc", None, "loss", "loss:c4_val"),
    PublicBacktest("pythia", "Pythia 6.9B/12B from <= 2.8B, 0-shot (LAMBADA via its own NLL)", "pythia.csv",
                   "params > 3e9", "acc", tuple(PYTHIA_TASKS), "nll_correct",
                   families=("pythia",)),
    PublicBacktest("pythia_deduped", "Pythia-deduped 6.9B/12B from <= 2.8B, 0-shot", "pythia.csv",
                   "params > 3e9", "acc", tuple(PYTHIA_TASKS), "nll_correct",
                   families=("pythia-deduped",)),
    PublicBacktest("opt_bloom", "OPT-66b and BLOOM-7b1 from the smaller sizes, 0-shot (65 tasks)", "opt_bloom.csv",
                   "model in ['opt-66b', 'bloom-7b1']", "acc"),
    *[PublicBacktest(f"lm_eval_2023_{family}", f"lm-eval 2023 results: {LARGEST[family]} from the rest of {family}",
                     "lm_eval_2023.csv", f"model == '{LARGEST[family]}'", "acc", families=(family,))
      for family in ("bloom", "opt", "xglm", "llama")],
    PublicBacktest("inverse_scaling", "Inverse-scaling pilot: gpt2-xl and opt-1.3b from the smaller sizes",
                   "inverse_scaling_pilot.csv", "model in ['gpt2-xl', 'opt-1.3b']", "acc",
                   items=str(LADDERS / "inverse_scaling_pilot_items.csv.gz")),
    PublicBacktest("toy", "Toy ladder: toy-s5 from s1-s4 and s2x5 (own bpb)", "toy", "model == 'toy-s5'", "acc",
                   None, "bpb_correct", items=str(ROOT / "results" / "toy")),
]
BY_NAME = {b.name: b for b in BACKTESTS}

_LADDERS: dict[str, pd.DataFrame] = {}


def ladder_of(backtest: PublicBacktest) -> pd.DataFrame:
    from capscale.ladder import load_ladder

    if backtest.ladder not in _LADDERS:
        path = ROOT / "results" / "toy" if backtest.ladder == "toy" else LADDERS / backtest.ladder
        _LADDERS[backtest.ladder] = load_ladder(path)
    table = _LADDERS[backtest.ladder]
    if backtest.families:
        table = table[table["family"].isin(backtest.families)].reset_index(drop=True)
    if backtest.ladder == "pythia.csv":  # step 0 has no tokens: nothing at zero compute can be fitted in log scale
        table = table[table["tokens"] > 0].reset_index(drop=True)
    return table


_ITEMS: dict[str, pd.DataFrame] = {}


def items_of(backtest: PublicBacktest, kind: str | None) -> pd.DataFrame | None:
    """The per-item data a method reads, from the backtest's per-choice rows (None without them)."""
    if backtest.items is None or kind is None:
        return None
    if backtest.items not in _ITEMS:
        from capscale.ladder import read_items

        _ITEMS[backtest.items] = read_items(backtest.items, "choices")
    rows = _ITEMS[backtest.items]
    if kind == "choices":
        return rows
    if kind == "items":
        from capscale.metrics import item_metrics

        return item_metrics(rows)
    return None


def run(backtest: PublicBacktest, method: str, options=None, jobs: int = 1) -> tuple[pd.DataFrame, object]:
    """(summary table, outcome) of ``capscale backtest`` with this method on this public backtest."""
    from capscale.laws.backtest import run_backtest, summary_table
    from capscale.laws.registry import get_method

    warnings.simplefilter("ignore")
    ladder = ladder_of(backtest)
    items = items_of(backtest, get_method(method).items)
    outcome = run_backtest(ladder, backtest.holdout, metric=backtest.metric, loss=backtest.loss,
                           loss_task=backtest.loss_task, method=method,
                           tasks=list(backtest.tasks) if backtest.tasks else None, jobs=jobs, items=items,
                           options=options)
    table = summary_table(outcome)
    if not table.empty:
        table.insert(0, "backtest", backtest.name)
    return table, outcome


def score(table: pd.DataFrame) -> dict:
    """MAE, coverage at 50/80/90% and how many held-out runs got a forecast."""
    if table.empty:
        return {"n": 0, "forecast": 0, "mae": np.nan, "cov50": np.nan, "cov80": np.nan, "cov90": np.nan}
    ok = table["predicted"].notna()
    t = table[ok]
    return {"n": int(len(table)), "forecast": int(ok.sum()), "mae": float(t["abs_error"].mean()) if len(t) else np.nan,
            "cov50": float(t["inside_50"].astype(float).mean()) if len(t) else np.nan,
            "cov80": float(t["inside_80"].astype(float).mean()) if len(t) else np.nan,
            "cov90": float(t["inside"].astype(float).mean()) if len(t) else np.nan,
            "width90": float((t["upper"] - t["lower"]).mean()) if len(t) else np.nan}
