"""The single command ``capscale``: one subcommand per job, thin wrappers over the library.

Exit codes: 0 success; 1 some (checkpoint, task) pairs failed (the rest were written);
2 bad input: one ``error:`` line naming the file, line or option to fix, never a traceback
(CapscaleError, and OSError about a path the user gave).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capscale.errors import CapscaleError


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="results store folder (created if missing)")
    p.add_argument("--task", action="append", default=[], metavar="SPEC",
                   help="JSONL path, shipped task name (evals/tasks), or lm-eval:NAME; repeatable")
    p.add_argument("--include-path", help="folder of extra lm-eval task YAMLs (for lm-eval:NAME)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples for lm-eval tasks")
    p.add_argument("--delimiter", help="target delimiter for JSONL tasks (default: sidecar or ' ')")
    p.add_argument("--limit", type=int, help="only the first N items of each task (for quick checks)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--token-budget", type=int, help="max padded tokens per forward batch (default 4096 cpu / 65536 cuda)")
    p.add_argument("--mode", default="auto", choices=["auto", "shared", "independent"],
                   help="shared: one pass per context for all choices; independent: one row per choice")
    p.add_argument("--overwrite", action="store_true", help="re-score pairs that are already in the store")
    p.add_argument("--repair", action="store_true",
                   help="re-score only the pairs whose stored files are unreadable (corrupt); the rest are kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_scale_options(p)


def add_scale_options(p: argparse.ArgumentParser) -> None:
    """Where the pairs run: a Ray cluster, and/or one shard of a job array (see README, Scale)."""
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the (checkpoint, task) pairs on Ray workers, one checkpoint at a time each: without "
                        "ADDRESS a local cluster (or $RAY_ADDRESS), 'auto' a running one, or HOST:PORT / "
                        "ray://HOST:10001 (needs pip install 'capscale[ray]')")
    p.add_argument("--ray-workers", type=int, metavar="N",
                   help="with --ray: number of workers (default one per GPU, else one per CPU)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="with --ray: attempts per pair after a worker died or raised (default 2)")
    p.add_argument("--shard", metavar="I/N",
                   help="only shard I of N of the checkpoints (sorted names, round-robin), e.g. $SLURM_ARRAY_TASK_ID/8")


def check_run_options(args) -> None:
    """Options of the scoring and sampling commands that would otherwise fail late or silently:
    the device (resolved here, so a typo is exit 2, not a failed pair per checkpoint) and counts.
    With --ray only its spelling is checked: the workers, not this machine, need the device."""
    from capscale.models import resolve_device
    from capscale.tasks.spec import check_limit

    check_limit(args.limit)
    for option, value, least in (("--token-budget", getattr(args, "token_budget", None), 1),
                                 ("--num-fewshot", args.num_fewshot, 0), ("--retries", args.retries, 0)):
        if value is not None and value < least:
            raise CapscaleError(f"{option} must be >= {least}, got {value}")
    if args.ray is None:
        args.device = resolve_device(args.device)
    else:
        from capscale.rayrun import check_device

        check_device(args.device)


def shard_selection(args, specs):
    """The checkpoints of --shard I/N (all without it)."""
    if not args.shard:
        return specs
    from capscale.shards import parse_shard, select_shard

    return select_shard(specs, *parse_shard(args.shard))


def ray_options(args):
    from capscale.rayrun import RayOptions

    return RayOptions(address=args.ray, workers=args.ray_workers, retries=args.retries)


def print_failures(results, noun: str = "pairs") -> None:
    """Every failed pair with its reason, then one line saying how to retry them."""
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} {noun} failed; rerun the same command to retry them "
              "(finished pairs are skipped)", file=sys.stderr)


def load_tasks(args, extra_specs: list[str] = ()):
    from capscale.tasks import load_task

    specs = list(extra_specs) + list(args.task)
    if not specs:
        raise CapscaleError("no task given: pass --task SPEC (a JSONL file, a shipped task name, or lm-eval:NAME)")
    tasks = [load_task(s, include_path=args.include_path, num_fewshot=args.num_fewshot,
                       delimiter=args.delimiter, limit=args.limit) for s in specs]
    names = [t.name for t in tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CapscaleError(f"two --task specs resolve to the same task name(s) {duplicated}; rename one file")
    return tasks


def run_evaluation(args, specs, tasks) -> int:
    from capscale.evaluate import evaluate
    from capscale.store import ResultsStore

    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    specs = shard_selection(args, specs)
    if args.ray is not None:
        from capscale.evaluate import RunSummary
        from capscale.rayrun import EvalJob, run_pairs

        job = EvalJob(tuple(tasks), args.out, device=args.device, dtype=args.dtype, token_budget=args.token_budget,
                      mode=args.mode, overwrite=args.overwrite, repair=args.repair)
        summary = RunSummary(run_pairs(job, specs, ray_options(args), progress=not args.no_progress))
    else:
        summary = evaluate(
            specs, tasks, ResultsStore(args.out), device=args.device, dtype=args.dtype,
            token_budget=args.token_budget, mode=args.mode, overwrite=args.overwrite, repair=args.repair,
            progress=not args.no_progress,
        )
    table = summary.table()
    cols = ["checkpoint", "task", "status", "n_items", "acc", "n_truncated", "mode", "tokens_per_s"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for p in summary.pairs:
        if p.message:
            print(f"{'error' if p.status == 'failed' else 'warning'}: {p.checkpoint} / {p.task}: {p.message}",
                  file=sys.stderr)
    print_failures(summary.pairs)
    print(f"results in {args.out}/choices (per choice) and {args.out}/checkpoints.csv")
    return 1 if summary.failed else 0


def model_specs(args):
    """CheckpointSpecs of --model DIR (named by --name or the folder), with the manifest options."""
    from capscale.ladderspec import CheckpointSpec, default_checkpoint_name, scale_problem

    names = args.name or []
    if names and len(names) != len(args.model):
        raise CapscaleError(f"--name given {len(names)} times but --model {len(args.model)} times")
    for key in ("params", "tokens"):
        problem = scale_problem(key, getattr(args, key), args.step)
        if problem:
            raise CapscaleError(f"--{problem}")
    return [
        CheckpointSpec(
            path=path, checkpoint=names[i] if names else default_checkpoint_name(path),
            model=names[i] if names else default_checkpoint_name(path), family=args.family,
            step=args.step, params=args.params, tokens=args.tokens,
        )
        for i, path in enumerate(args.model)
    ]


def cmd_eval(args) -> int:
    check_run_options(args)
    return run_evaluation(args, model_specs(args), load_tasks(args))


def cmd_ladder_eval(args) -> int:
    from capscale.ladderspec import load_ladder_spec

    check_run_options(args)
    specs, task_specs = load_ladder_spec(args.ladder)
    return run_evaluation(args, specs, load_tasks(args, task_specs))


def cmd_summary(args) -> int:
    from capscale.metrics import ladder_table, store_item_metrics
    from capscale.store import ResultsStore

    store = ResultsStore(args.out)
    choices, samples = store.read_rows()
    table = ladder_table(choices, store.read_manifest(), samples)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"ladder table ({len(table)} rows) written to {args.csv}")
    if args.items:
        store_item_metrics(choices, samples).to_csv(args.items, index=False)
        print(f"per-item metrics written to {args.items}")
    if args.metric is None:
        args.metric = ["acc", "bpb_correct"] + (["greedy_acc", "pass_until", "exact_p"] if samples is not None else [])
    shown = table[table["metric"].isin(args.metric)]
    order = list(dict.fromkeys(shown["checkpoint"]))  # ladder order: family, model, step
    pivot = shown.pivot_table(index="checkpoint", columns=["task", "metric"], values="value").reindex(order)
    print(pivot.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_sample(args) -> int:
    from capscale.ladderspec import generative_task_specs, load_ladder_spec
    from capscale.sampling import SamplingConfig, sample_checkpoints
    from capscale.store import ResultsStore
    from capscale.tasks import load_gen_task

    if bool(args.model) == bool(args.ladder):
        raise CapscaleError("give either --model DIR (repeatable) or --ladder SPEC")
    if args.device is None:
        args.device = "cuda" if args.backend == "vllm" else "cpu"
    if args.backend == "vllm" and not args.device.startswith("cuda"):
        raise CapscaleError(f"--backend vllm runs on CUDA GPUs; got --device {args.device}")
    check_run_options(args)
    task_specs = list(args.task)
    if args.ladder:
        specs, _ = load_ladder_spec(args.ladder)
        task_specs = task_specs or generative_task_specs(args.ladder)
        if args.checkpoint:
            unknown = sorted(set(args.checkpoint) - {s.checkpoint for s in specs})
            if unknown:
                raise CapscaleError(f"--checkpoint {unknown} not in {args.ladder}")
            specs = [s for s in specs if s.checkpoint in args.checkpoint]
    else:
        specs = model_specs(args)
    if not task_specs:
        raise CapscaleError("no task given: pass --task SPEC (a generative JSONL file, a shipped name, or lm-eval:NAME)")
    tasks = [load_gen_task(t, include_path=args.include_path, num_fewshot=args.num_fewshot, limit=args.limit)
             for t in task_specs]
    config = SamplingConfig(until=args.until, max_samples=args.max_samples, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, batch=args.batch, exact=args.exact,
                            unsafe_exec=args.unsafe_exec)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    specs = shard_selection(args, specs)
    if args.ray is not None:
        from capscale.rayrun import SampleJob, run_pairs
        from capscale.sampling import check_backend

        check_backend(config, args.backend)
        if any(it.check == "python" for task in tasks for it in task.items):
            from capscale.scoring.sandbox import require_kernel_isolation

            require_kernel_isolation(config.unsafe_exec)  # here too: fail before any worker starts
        job = SampleJob(tuple(tasks), args.out, config, device=args.device, dtype=args.dtype,
                        overwrite=args.overwrite, repair=args.repair, backend=args.backend)
        results = run_pairs(job, specs, ray_options(args), progress=not args.no_progress)
    else:
        results = sample_checkpoints(specs, tasks, ResultsStore(args.out), config, device=args.device,
                                     dtype=args.dtype, overwrite=args.overwrite, repair=args.repair,
                                     progress=not args.no_progress, backend=args.backend)
    import pandas as pd

    table = pd.DataFrame([r.__dict__ for r in results])
    cols = ["checkpoint", "task", "status", "n_items", "greedy_acc", "pass_until", "exact_p", "samples",
            "samples_per_s"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for r in results:
        if r.message:
            print(f"error: {r.checkpoint} / {r.task}: {r.message}", file=sys.stderr)
    print_failures(results)
    print(f"results in {args.out}/samples (per item) and {args.out}/completions (every distinct completion)")
    return 1 if any(r.status == "failed" for r in results) else 0


def cmd_ingest(args) -> int:
    from capscale.ingest import ingest_lm_eval
    from capscale.store import ResultsStore

    report = ingest_lm_eval(args.src, ResultsStore(args.out), tokenizer=args.tokenizer, family=args.family,
                            checkpoint=args.checkpoint, meta=args.meta, repair=args.repair,
                            progress=not args.no_progress)
    print(f"pairs written: {report.pairs_written}, already present: {report.pairs_skipped_existing}, "
          f"rows: {report.n_rows}")
    for file, reason in report.tasks_skipped_not_mc:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    return 0


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


def add_fit_options(p: argparse.ArgumentParser) -> None:
    from capscale.laws.registry import METHODS

    p.add_argument("--metric", help="metric to forecast (default acc; pass_until for the pass-until methods)")
    p.add_argument("--loss", default="bpb_correct", help="intermediate task loss for two-step (default bpb_correct)")
    p.add_argument("--loss-task", help="take the loss from this task for every task (e.g. a validation loss)")
    p.add_argument("--method", default=None, choices=list(METHODS),
                   help="default auto (pass-until for --metric pass_until). "
                        + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--x", choices=["auto", "flops", "params", "tokens", "loss"],
                   help="the scale of direct / carry-forward / choice-mass (default auto: flops where known, else "
                        "params; loss = choice-mass chained with step 1 of two-step) and of pass-until (default params)")
    p.add_argument("--select", default="ladder", choices=["ladder", "task"],
                   help="auto: rank the candidates on every task of the ladder (default) or on the task alone")
    p.add_argument("--direct-form", choices=["auto", "sigmoid", "sigmoid_2p", "linear"],
                   help="direct: the form (default auto: chosen by the ladder's own backtests)")
    p.add_argument("--level", type=float, default=0.9, help="prediction interval level (default 0.9)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step1", default="auto", choices=["auto", "rule", "chinchilla", "chinchilla_shared",
                                                       "power_compute", "power_law"],
                   help="two-step's scale law: auto = chosen by rolling-origin backtests inside the ladder")
    p.add_argument("--step2", default="sigmoid_loss", choices=["sigmoid_loss", "exponential_loss"])
    p.add_argument("--ceiling", default="auto", choices=["auto", "anchor", "fixed", "fit"],
                   help="two-step: where accuracy ends at loss 0 (auto: anchor point for the task's own "
                        "bpb_correct/nll_correct, fitted otherwise)")
    p.add_argument("--anchor-weight", type=float, default=1.0, help="weight of the (loss 0, ceiling) point, in "
                   "data points (default 1)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="bootstrap intervals only, not widened by the ladder's rolling-origin backtests")
    p.add_argument("--n-origins", type=int, default=3, help="rolling origins inside the ladder (default 3)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop NaN/inf values instead of failing")
    p.add_argument("--items", metavar="OUT", help="results store with the per-item data behind the ladder: the "
                   "bootstrap then resamples items too (automatic when LADDER is a store); for choice-mass also "
                   "a per-choice rows file (CSV/CSV.gz/Parquet)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_report(args) -> int:
    from capscale.report.command import run

    default_metric(args)
    return run(args, method_options(args), argv=args.argv)


def cmd_toy_ladder(args) -> int:
    from capscale import toyladder

    return toyladder.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score checkpoints on multiple-choice tasks into a results store")
    p.add_argument("--model", action="append", required=True, metavar="DIR", help="HF checkpoint dir or hub id; repeatable")
    p.add_argument("--name", action="append", help="checkpoint name per --model (default: folder name)")
    p.add_argument("--family", default="", help="ladder family recorded in the manifest")
    p.add_argument("--step", type=float, help="training step recorded in the manifest")
    p.add_argument("--tokens", type=float, help="training tokens recorded in the manifest")
    p.add_argument("--params", type=float, help="non-embedding parameters (default: counted from the model)")
    add_scoring_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ladder-eval", help="evaluate every checkpoint of a ladder spec (YAML) on every task")
    p.add_argument("ladder", help="ladder spec YAML (see capscale/ladderspec.py)")
    add_scoring_options(p)
    p.set_defaults(func=cmd_ladder_eval)

    p = sub.add_parser("sample", help="PassUntil sampling of generative tasks: draw until K correct samples per item")
    p.add_argument("--model", action="append", metavar="DIR", help="HF checkpoint dir or hub id; repeatable")
    p.add_argument("--name", action="append", help="checkpoint name per --model (default: folder name)")
    p.add_argument("--ladder", metavar="SPEC", help="ladder spec YAML instead of --model (tasks: its generative_tasks)")
    p.add_argument("--checkpoint", action="append", help="with --ladder: only these checkpoints (repeatable)")
    p.add_argument("--family", default="", help="ladder family recorded in the manifest")
    p.add_argument("--step", type=float, help="training step recorded in the manifest")
    p.add_argument("--tokens", type=float, help="training tokens recorded in the manifest")
    p.add_argument("--params", type=float, help="non-embedding parameters (default: counted from the model)")
    p.add_argument("--out", required=True, help="results store folder (created if missing)")
    p.add_argument("--task", action="append", default=[], metavar="SPEC",
                   help="generative JSONL path, shipped task name (evals/tasks), or lm-eval:NAME; repeatable")
    p.add_argument("--include-path", help="folder of extra lm-eval task YAMLs (for lm-eval:NAME)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples for lm-eval tasks")
    p.add_argument("--limit", type=int, help="only the first N items of each task")
    p.add_argument("--until", type=int, default=4, metavar="K", help="stop an item after K correct samples (default 4)")
    p.add_argument("--max-samples", type=int, default=1000, metavar="B",
                   help="at most B samples per item (default 1000); 0 = greedy (and --exact) only")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same samples on any --batch")
    p.add_argument("--batch", type=int, default=256, help="sequences decoded in parallel (default 256)")
    p.add_argument("--exact", action="store_true",
                   help="also compute each exact-match item's exact pass probability (one forward pass)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default cpu; cuda with --backend vllm)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true", help="redo pairs already in the store (or in flight)")
    p.add_argument("--repair", action="store_true",
                   help="redo only the pairs whose stored files (or saved progress) are unreadable")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--unsafe-exec", action="store_true",
                   help="run python checks even without kernel isolation (bubblewrap missing or not working): "
                        "generated code is then contained only by rlimits, Landlock and an audit hook")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="decoder: hf (capscale's sampler, any device) or vllm (CUDA; pip install 'capscale[vllm]')")
    add_scale_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("summary", help="per-choice rows -> ladder table (one row per checkpoint x task x metric)")
    p.add_argument("out", help="results store folder")
    p.add_argument("--csv", help="write the ladder table here")
    p.add_argument("--items", help="write per-item metrics (CSV) here")
    p.add_argument("--metric", action="append", default=None, help="metrics to print (default acc, bpb_correct)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("ingest-lm-eval", help="read lm-eval --log_samples output into a results store")
    p.add_argument("src", help="lm-eval output folder (searched recursively for samples_*.jsonl)")
    p.add_argument("--out", required=True, help="results store folder")
    p.add_argument("--tokenizer", help="tokenizer (checkpoint dir) to count continuation tokens")
    p.add_argument("--family", help="family recorded in the manifest (default lm-eval)")
    p.add_argument("--checkpoint", help="checkpoint name of the one model in SRC (default: the shortest tail of "
                   "the model path that no other model uses, e.g. step20 or runA-step20)")
    p.add_argument("--meta", metavar="FILE", help="family, model, params, tokens, step per checkpoint: a ladder spec "
                   "(YAML, as for ladder-eval) or a CSV with columns checkpoint, family, model, params, tokens, step "
                   "[, flops, params_total, path]; matched by checkpoint name or path")
    p.add_argument("--repair", action="store_true", help="rewrite stored pairs whose files are unreadable")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("backtest", help="hold out models of a ladder, forecast them from the rest, report errors")
    p.add_argument("ladder", help="ladder table (CSV/Parquet) or results store folder")
    p.add_argument("--holdout", required=True, metavar="QUERY",
                   help="condition selecting the held-out rows: comparisons of columns and literals, and/or/not, "
                        "in [...], + - * / ** (no code), e.g. \"params > 1e9 and model in ['a', 'b']\"")
    add_fit_options(p)
    p.add_argument("--task", action="append", help="only these tasks (repeatable; default all)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one task each (default 2)")
    p.add_argument("--json", help="write the forecast records here")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per task and family here")
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("fit", help="fit a predictor on a ladder for one task and save it (JSON)")
    p.add_argument("ladder", help="ladder table (CSV/Parquet) or results store folder")
    p.add_argument("--task", required=True)
    p.add_argument("--family", help="the ladder family to fit (required when the table has several); for "
                   "observational the target's family, fitted with all the others")
    p.add_argument("--out", required=True, help="fit file to write (JSON)")
    add_fit_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="forecast a model from a saved fit: --params N --tokens D, or --flops C")
    p.add_argument("fit", help="fit file written by capscale fit")
    p.add_argument("--params", type=float, help="non-embedding parameters of the target")
    p.add_argument("--tokens", type=float, help="training tokens of the target")
    p.add_argument("--flops", type=float, help="training compute of the target (default 6 * params * tokens)")
    p.add_argument("--level", type=float, help="interval level (default: the fit's, usually 0.9)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("trends", help="classify each family x task curve: improving, flat, inverse, u_shaped, "
                                      "inverted_u, emergent (with p-values and evidence)")
    p.add_argument("ladder", help="ladder table (CSV/Parquet) or results store folder")
    p.add_argument("--metric", default="acc", help="metric to classify (default acc)")
    p.add_argument("--items", metavar="OUT", help="per-item data for the noise: a results store, or a per-choice / "
                   "per-sample / per-item rows file (CSV, CSV.gz, Parquet); automatic when LADDER is a store")
    p.add_argument("--task", action="append", help="only these tasks (repeatable; default all)")
    p.add_argument("--family", action="append", help="only these families (repeatable; default all)")
    p.add_argument("--direction", default="auto", choices=["auto", "higher", "lower"],
                   help="is a higher metric better? auto: lower for bpb/nll/brier/loss/perplexity")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of every test (default 0.05)")
    p.add_argument("--n-sim", type=int, default=999, help="parametric-bootstrap draws per test (default 999)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-nonfinite", action="store_true", help="drop NaN/inf values instead of failing")
    p.add_argument("--json", help="write every result with its evidence here")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per task here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_trends)

    from capscale.decidecli import add_parsers as add_decision_parsers  # decide, decide-backtest, transfer

    add_decision_parsers(sub)

    p = sub.add_parser("report", help="one HTML page (and report.json) from a ladder: fits, forecasts, "
                                      "predictability triage, trends, provenance")
    from capscale.report.command import add_arguments

    add_arguments(p)
    add_fit_options(p)
    p.set_defaults(func=cmd_report)

    try:
        from capscale import toyladder
    except ImportError:
        toyladder = None
    if toyladder is not None and hasattr(toyladder, "add_arguments"):
        p = sub.add_parser("toy-ladder", help="train the synthetic toy ladder on CPU (see capscale/toyladder)")
        toyladder.add_arguments(p)
        p.set_defaults(func=cmd_toy_ladder)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports' provenance
    try:
        return args.func(args)
    except CapscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug or a system problem, keep the traceback
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished (checkpoint, task) pairs are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
