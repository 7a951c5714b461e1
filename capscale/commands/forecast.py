"""The commands that forecast from a ladder table: backtest, fit, predict, trends, report (per-item data by the
registry's kind, method options from the arguments, printing tables).
"""

from __future__ import annotations

import sys
from pathlib import Path

from capscale.errors import CapscaleError


def per_item_data(ladder_path: str, items_source: str | None, method: str):
    """The per-item data the method reads (capscale.laws.registry), from --items or from the ladder
    itself when it is a store: per-choice rows, their per-item metrics, or per-item sample counts."""
    from capscale.ladder import is_results_store, read_items
    from capscale.laws.registry import get_method

    kind = get_method(method).items
    source = items_source or (ladder_path if is_results_store(Path(ladder_path)) else None)
    if source is None or kind is None:
        return None
    return read_items(source, kind)


def default_metric(args) -> None:
    """Method and metric fill each other in: the pass-until methods forecast pass_until, and
    ``--metric pass_until`` alone is forecast by the PassUntil law; otherwise auto on acc."""
    from capscale.laws.registry import get_method, method_for_metric

    if args.method is None:
        args.method = method_for_metric(args.metric)
    if args.metric is None:
        args.metric = get_method(args.method).default_metric


def method_options(args):
    from capscale.laws.registry import MethodOptions

    if not 0.0 < args.level < 1.0:
        raise CapscaleError(f"--level must lie between 0 and 1 (e.g. 0.9), got {args.level}")
    if args.n_boot < 0:
        raise CapscaleError(f"--n-boot must be >= 0, got {args.n_boot}")
    return MethodOptions(level=args.level, n_boot=args.n_boot, seed=args.seed, step1=args.step1, step2=args.step2,
                         x=args.x, ceiling=args.ceiling, anchor_weight=args.anchor_weight,
                         calibrate=not args.no_calibrate, n_origins=args.n_origins,
                         extra={**({"form": args.direct_form} if args.direct_form else {}), "select": args.select})


def print_backtest(table, level: float) -> None:
    shown = table.assign(method=table["method_used"].str.replace("auto -> ", "", regex=False))
    cols = ["task", "family", "model", "predicted", "lower", "upper", "actual", "abs_error", "inside", "method",
            "form_used", "n_points"]
    print(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    for _, row in table[table["reason"] != ""].iterrows():
        print(f"no forecast: {row['task']} / {row['family']} / {row['model']}: {row['reason']}", file=sys.stderr)


def cmd_backtest(args) -> int:
    import json

    from capscale.ladder import load_ladder
    from capscale.laws.backtest import coverage, mean_abs_error, run_backtest, summary_table

    default_metric(args)
    options = method_options(args)
    ladder = load_ladder(args.ladder, drop_nonfinite=args.drop_nonfinite)
    outcome = run_backtest(
        ladder, args.holdout, metric=args.metric, loss=args.loss, loss_task=args.loss_task, method=args.method,
        tasks=args.task or None, jobs=args.jobs, items=per_item_data(args.ladder, args.items, args.method),
        options=options, progress=not args.no_progress,
    )
    table = summary_table(outcome)
    if table.empty or table["predicted"].isna().all():
        for task, family, reason in outcome.skipped:
            print(f"skipped {task} ({family}): {reason}", file=sys.stderr)
        raise CapscaleError("no held-out model could be forecast (see the reasons above)")
    print_backtest(table, args.level)
    for _, row in table[table["warnings"] != ""].iterrows():
        print(f"warning: {row['task']} / {row['model']}: {row['warnings']}", file=sys.stderr)
    n = int(table["predicted"].notna().sum())
    print(f"method {args.method}: mean absolute error {mean_abs_error(table):.4f} over {n} forecasts"
          + (f" ({len(table) - n} runs without one)" if n < len(table) else "") + "; actual values inside the "
          f"{args.level:.0%} interval: {coverage(table):.0%} (50%: {coverage(table, 'inside_50'):.0%}, "
          f"80%: {coverage(table, 'inside_80'):.0%})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([r.contract() for r in outcome.records], indent=2))
        print(f"records written to {args.json}")
    if args.plot:
        from capscale.plots import plot_backtest

        paths = plot_backtest(outcome, args.plot, args.method)
        print(f"{len(paths)} plots written to {args.plot}")
    return 0


def cmd_fit(args) -> int:
    from capscale.ladder import load_ladder
    from capscale.laws.persist import save_predictor
    from capscale.laws.registry import get_method, make_predictor
    from capscale.progress import refit_counter

    default_metric(args)
    options = method_options(args)
    ladder = load_ladder(args.ladder, drop_nonfinite=args.drop_nonfinite)
    pooled = get_method(args.method).pools_families and ladder["family"].nunique() > 1
    if pooled and not args.family:
        raise CapscaleError(f"the ladder has families {sorted(ladder['family'].unique())}: name the target's with "
                            f"--family ({args.method} fits on all of them; a family not in the table is a new one)")
    if args.family and not pooled:
        ladder = ladder[ladder["family"] == args.family]
    families = [args.family] if pooled else sorted(ladder["family"].unique())
    if len(families) != 1:
        raise CapscaleError(f"the ladder has families {families}: pick one with --family (curves never mix families)")
    predictor = make_predictor(args.method, options)
    if pooled:
        predictor = predictor.clone(family=args.family)
    with refit_counter(enabled=not args.no_progress):
        predictor.fit(ladder, args.task, args.metric, args.loss, loss_task=args.loss_task,
                      items=per_item_data(args.ladder, args.items, args.method))
    save_predictor(predictor, args.out, meta={"ladder": str(args.ladder), "family": families[0]})
    shown = getattr(predictor, "chosen_", predictor)
    if hasattr(predictor, "method_used_"):
        errors = ", ".join(f"{k} {v:.4f}" for k, v in predictor.internal_errors_.items())
        print(f"auto chose {predictor.method_used_} (internal backtest mean |error|: {errors or 'none: too few runs'})")
    if hasattr(shown, "describe"):  # choice-mass: no curve of its own to print
        print(shown.describe())
        fits = ()
    elif hasattr(shown, "fit_"):
        fits = shown.fit_ if isinstance(shown.fit_, tuple) else (shown.fit_,)
    else:
        fits = ()
        print(f"{shown.form_used_} from {shown.n_runs_} runs")
    for fit in fits:
        params = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
        print(f"{fit.form.name} on {fit.n_points} points: {params}")
    print(f"{len(predictor.boot_fits_)} bootstrap refits ({predictor.n_boot_failed_} failed); fit saved to {args.out}")
    return 0


def cmd_predict(args) -> int:
    import math

    from capscale.laws.persist import load_predictor

    for option in ("params", "tokens", "flops"):
        value = getattr(args, option)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CapscaleError(f"--{option} must be a positive number, got {value:g}")
    predictor = load_predictor(args.fit)
    f = predictor.predict(params=args.params, tokens=args.tokens, flops=args.flops, level=args.level)
    print(f"{predictor.task_} {predictor.metric_}: {f.value:.4f}  [{f.lower:.4f}, {f.upper:.4f}] at {f.level:.0%}"
          + (f"  ({f.method_used}: {f.form_used})" if f.method_used else ""))
    if f.loss is not None:
        print(f"intermediate loss ({predictor.loss_metric_}): {f.loss:.4f}  [{f.loss_lower:.4f}, {f.loss_upper:.4f}]")
    for w in f.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_trends(args) -> int:
    """Classify every family x task curve (capscale.trends) and report the evidence."""
    import json

    from capscale.ladder import is_results_store, load_ladder, read_items
    from capscale.trends import analyse_ladder

    ladder = load_ladder(args.ladder, drop_nonfinite=args.drop_nonfinite)
    source = args.items or (args.ladder if is_results_store(Path(args.ladder)) else None)
    items = read_items(source, "items") if source else None
    report = analyse_ladder(ladder, args.metric, items=items, tasks=args.task, families=args.family,
                            direction=args.direction, alpha=args.alpha, n_sim=args.n_sim, seed=args.seed,
                            progress=not args.no_progress)
    for task, family, reason in report.skipped:
        print(f"skipped {task} ({family}): {reason}", file=sys.stderr)
    if not report.results:
        raise CapscaleError("no curve could be analysed (see the skipped tasks above)")
    table = report.table()
    cols = ["task", "family", "axis", "n", "class", "p_value", "evidence", "first", "last", "linearity",
            "breakthroughness", "noise", "hidden_progress"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for note in report.notes:
        print(f"note: {note}")
    for r in report.results:
        for note in r.notes:
            if not note.startswith("no noise source") or not report.notes:
                print(f"note: {r.task} ({r.family}): {note}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"metric": args.metric, "alpha": args.alpha, "n_sim": args.n_sim, "seed": args.seed,
                   "notes": report.notes, "skipped": [list(s) for s in report.skipped],
                   "results": [r.to_dict() for r in report.results]}
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"results written to {args.json}")
    if args.plot:
        from capscale.trendplots import plot_trends

        paths = plot_trends(report.results, args.plot, ladder=ladder, items=items)
        print(f"{len(paths)} plots written to {args.plot}")
    return 0


def cmd_report(args) -> int:
    from capscale.report.command import run

    default_metric(args)
    return run(args, method_options(args), argv=args.argv)
