"""The commands that run models: eval, ladder-eval, sample, summary, ingest-lm-eval, toy-ladder (argument
checks, the Ray / shard selection, printing failures). Heavy imports stay inside the functions, so building
the parser imports no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from capscale.errors import CapscaleError


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


def cmd_toy_ladder(args) -> int:
    from capscale import toyladder

    return toyladder.run(args)
