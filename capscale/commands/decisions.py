"""``capscale decide``, ``capscale decide-backtest`` and ``capscale transfer``: the command-line side of
capscale.decide and capscale.laws.transfer (argument parsing, reading ladders, printing, JSON).

``capscale.cli`` only registers them (``add_parsers``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from capscale.errors import CapscaleError


def load_ladders(paths: list[str], where: str | None, drop_nonfinite: bool = False):
    """The ladder tables (CSV/Parquet/results stores) as one table, optionally filtered by ``where``."""
    import pandas as pd

    from capscale.ladder import LadderError, load_ladder

    tables = [load_ladder(p, drop_nonfinite=drop_nonfinite) for p in paths]
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    table.attrs = {"source": " + ".join(paths), "row_kind": "row"}
    if where:
        from capscale.query import QueryError, query_mask

        try:
            mask = query_mask(table, where)
        except QueryError as e:
            raise LadderError(f"invalid --where query {where!r}: {e}") from e
        if not mask.any():
            raise LadderError(f"--where {where!r} keeps no row of {table.attrs['source']}")
        table = table[mask.to_numpy()].reset_index(drop=True)
        table.attrs = {"source": " + ".join(paths), "row_kind": "row"}
    return table


def read_items(paths: list[str]) -> dict | None:
    """Per-item data of every ladder that is a results store: per-choice rows and their item metrics."""
    import pandas as pd

    from capscale.ladder import is_results_store
    from capscale.metrics import item_metrics
    from capscale.store import ResultsStore

    stores = [p for p in paths if is_results_store(Path(p))]
    if not stores:
        return None
    choices = pd.concat([ResultsStore(p).read_choices() for p in stores], ignore_index=True)
    return {"choices": choices, "item_metrics": item_metrics(choices)}


def options_of(args):
    from capscale.laws.registry import MethodOptions

    if not 0.5 < args.level < 1.0:
        raise CapscaleError(f"--level must lie between 0.5 and 1 (e.g. 0.9), got {args.level}")
    if args.n_boot < 0:
        raise CapscaleError(f"--n-boot must be >= 0, got {args.n_boot}")
    return MethodOptions(level=args.level, n_boot=args.n_boot, seed=args.seed, step1=args.step1,
                         calibrate=not args.no_calibrate, n_origins=args.n_origins)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1))
        print(f"written to {path}")


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def print_decisions(records: list[dict]) -> None:
    import pandas as pd

    table = pd.DataFrame(records)
    cols = ["task", "target", "method", "recipe_a", "recipe_b", "value_a", "value_b", "p_a_beats_b", "decision",
            "actual_winner"]
    shown = table[table["reason"] == ""][cols]
    if len(shown):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    for _, row in table[table["reason"] != ""].iterrows():
        if row["p_a_beats_b"] is None or pd.isna(row["p_a_beats_b"]):
            print(f"no decision: {row['task']} / {row['target']} / {row['method']} / {row['recipe_a']} vs "
                  f"{row['recipe_b']}: {row['reason']}", file=sys.stderr)


def cmd_decide(args) -> int:
    from capscale.decide import decide

    ladder = load_ladders(args.ladder, args.where, args.drop_nonfinite)
    result = decide(ladder, args.recipe_col, args.target, metric=args.metric, methods=args.method,
                    loss=args.loss, loss_task=args.loss_task, tasks=args.task, options=options_of(args),
                    items=None if args.no_items else read_items(args.ladder), jobs=args.jobs,
                    progress=not args.no_progress)
    print_decisions(result["records"])
    decided = [r for r in result["records"] if r["p_a_beats_b"] is not None]
    if not decided:
        raise CapscaleError("no pair could be decided (see the reasons above)")
    called = sum(r["called"] for r in decided)
    print(f"{len(decided)} decisions ({called} called at {args.level:.0%}, {len(decided) - called} too close to call)")
    write_json(args.json, result)
    return 0


def print_summary(summary: list[dict]) -> None:
    import pandas as pd

    table = pd.DataFrame(summary)
    cols = ["method", "dropped", "compute_fraction", "n_pairs", "accuracy", "called", "called_accuracy"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))


def cmd_decide_backtest(args) -> int:
    from capscale.decide import decide_backtest

    if args.max_drop < 0:
        raise CapscaleError(f"--max-drop must be >= 0, got {args.max_drop}")
    ladder = load_ladders(args.ladder, args.where, args.drop_nonfinite)
    result = decide_backtest(ladder, args.recipe_col, args.target, metric=args.metric, methods=args.method,
                             loss=args.loss, loss_task=args.loss_task, tasks=args.task, options=options_of(args),
                             items=None if args.no_items else read_items(args.ladder), max_drop=args.max_drop,
                             jobs=args.jobs, progress=not args.no_progress)
    if not any(s["n_pairs"] for s in result["summary"]):
        raise CapscaleError("no pair has an actual winner at the target (do both recipes have runs there?)")
    print_summary(result["summary"])
    print("accuracy: share of pairs the ranking got right (forced choice); called: share with "
          f"P(A beats B) >= {args.level:g} or <= {1 - args.level:.2g}; called_accuracy: right among those; "
          "compute_fraction: compute of the runs read / the target's")
    write_json(args.json, result)
    return 0


def cmd_transfer(args) -> int:
    from capscale.laws.transfer import run_transfer

    try:
        ks = sorted({int(k) for k in str(args.k).split(",") if k.strip()})
    except ValueError:
        raise CapscaleError(f"--k must be comma-separated run counts such as 1,2,3, got {args.k!r}") from None
    if not ks or ks[0] < 1:
        raise CapscaleError(f"--k must be >= 1, got {args.k!r}")
    ladder = load_ladders(args.ladder, args.where, args.drop_nonfinite)
    outcome = run_transfer(ladder, args.recipe_col, args.reference, args.new, args.task, metric=args.metric,
                           source_task=args.source_task, target=args.target, ks=ks, runs_query=args.runs,
                           **({} if args.step1 is None else {"step1": args.step1}))
    table = outcome.table()
    cols = ["k", "model", "actual", "transfer", "transfer_rel_error", "independent", "independent_rel_error",
            "full_ladder", "full_ladder_rel_error"]
    print(f"reference law ({args.reference}, {outcome.reference_runs} runs): {outcome.reference_form} "
          + ", ".join(f"{k}={v:.4g}" for k, v in outcome.reference_params.items()))
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    for _, row in table[table["reason"] != ""].drop_duplicates(["k", "reason"]).iterrows():
        print(f"note: k={row['k']}: {row['reason']}", file=sys.stderr)
    write_json(args.json, {"command": "transfer", "reference": args.reference, "new": args.new, "task": args.task,
                           "source_task": args.source_task or args.task, "metric": args.metric,
                           "target": args.target, "reference_form": outcome.reference_form,
                           "reference_params": outcome.reference_params, "reference_runs": outcome.reference_runs,
                           "full_ladder_form": outcome.full_ladder_form,
                           "records": [r.contract() for r in outcome.records]})
    return 0


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("ladder", nargs="+", help="ladder table(s) (CSV/Parquet) or results store folder(s), read as one")
    p.add_argument("--recipe-col", required=True, metavar="COL",
                   help="the column whose values are the recipes (e.g. family)")
    p.add_argument("--where", metavar="QUERY", help="keep only the rows matching this query (e.g. \"tokens > 0\")")
    p.add_argument("--step1", default=None, choices=["auto", "average", "rule", "chinchilla", "chinchilla_shared",
                                                     "power_compute", "power_law"],
                   help="scale law of the losses (two-step's step 1, loss-law, transfer): auto = by rolling origin, "
                        "average = the eligible forms averaged; default: average for loss-law, auto otherwise "
                        "(transfer maps one law's parameters: auto or a form)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop NaN/inf values instead of failing")


def add_decision_options(p: argparse.ArgumentParser, backtest: bool) -> None:
    add_common(p)
    p.add_argument("--target", required=True, metavar="QUERY",
                   help="the target scale: a query whose runs are held out and define it (e.g. \"params > 1e9\"), "
                        "or explicit scales \"params=6.9e9,tokens=1.4e11\" (several joined by ';')"
                   + (" (a query only)" if backtest else ""))
    p.add_argument("--metric", default="acc", help="the metric that decides at the target (default acc)")
    p.add_argument("--method", action="append", metavar="NAME[:METRIC]",
                   help="repeatable: single-scale, loss-law, loss-to-loss (source: --loss-task), or a forecasting "
                        "method (two-step, direct, auto, ...); "
                        ":METRIC ranks by another metric (single-scale:bpb_correct, loss-law:bpb_correct, "
                        "direct:p_correct); default: every one the ladder has metrics for")
    p.add_argument("--loss", default="bpb_correct", help="two-step's intermediate loss (default bpb_correct)")
    p.add_argument("--loss-task", help="take two-step's loss from this task (e.g. a validation loss)")
    p.add_argument("--task", action="append", help="only these tasks (repeatable; default all with --metric)")
    p.add_argument("--level", type=float, default=0.9, help="confidence needed to call a decision (default 0.9)")
    p.add_argument("--n-boot", type=int, default=200 if backtest else 1000,
                   help=f"bootstrap resamples per fit (default {200 if backtest else 1000})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-calibrate", action="store_true", help="bootstrap draws not widened by rolling origins")
    p.add_argument("--n-origins", type=int, default=3, help="rolling origins inside each recipe's ladder")
    p.add_argument("--no-items", action="store_true", help="do not resample items even when a ladder is a store")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one task each (default 2)")
    p.add_argument("--json", metavar="PATH", help="write every decision (and the summary) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parsers(sub) -> None:
    p = sub.add_parser("decide", help="which recipe wins at the target scale: P(A beats B) per pair, task and method")
    add_decision_options(p, backtest=False)
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("decide-backtest", help="decision accuracy: decide every pair from the smaller runs, score "
                                               "against the held-out target runs, dropping the largest rungs one by one")
    add_decision_options(p, backtest=True)
    p.add_argument("--max-drop", type=int, default=3, help="drop up to this many of the largest rungs (default 3)")
    p.set_defaults(func=cmd_decide_backtest)

    p = sub.add_parser("transfer", help="transfer a loss law from a reference recipe to a new one from k runs")
    add_common(p)
    p.add_argument("--reference", required=True, metavar="RECIPE", help="the recipe with the full ladder")
    p.add_argument("--new", required=True, metavar="RECIPE", help="the recipe to transfer to")
    p.add_argument("--task", required=True, help="the new recipe's loss task (e.g. loss:c4_val)")
    p.add_argument("--metric", default="loss", help="its metric (a loss; default loss)")
    p.add_argument("--source-task", help="the reference recipe's loss task (default: --task)")
    p.add_argument("--target", required=True, metavar="QUERY",
                   help="query of the runs to forecast (held out of every fit), e.g. \"params_total > 5e8\"")
    p.add_argument("--k", default="1,2,3", help="numbers of new-recipe runs to transfer from (default 1,2,3)")
    p.add_argument("--runs", metavar="QUERY", help="the new recipe's candidate runs (default all outside the "
                                                   "target); the k largest in compute are used")
    p.add_argument("--json", metavar="PATH", help="write the records here")
    p.set_defaults(func=cmd_transfer)
