"""The single command ``capscale``: one subcommand per job, thin wrappers over the library.

Exit codes: 0 success; 1 some (checkpoint, task) pairs failed (the rest were written);
2 bad input: one ``error:`` line naming the file, line or option to fix, never a traceback
(CapscaleError, and OSError about a path the user gave).

The parser lives here; the commands are in ``capscale.commands`` (harness: models; forecast: ladder tables).
"""

from __future__ import annotations

import argparse
import sys

from capscale.errors import CapscaleError
from capscale.commands.forecast import cmd_backtest, cmd_fit, cmd_predict, cmd_report, cmd_trends
from capscale.commands.harness import (cmd_eval, cmd_ingest, cmd_ladder_eval, cmd_sample, cmd_summary,
                                       cmd_toy_ladder)


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


def add_fit_options(p: argparse.ArgumentParser, n_boot: int = 1000) -> None:
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
    p.add_argument("--n-boot", type=int, default=n_boot, help=f"bootstrap resamples (default {n_boot})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step1", default=None, choices=["auto", "average", "rule", "chinchilla", "chinchilla_shared",
                                                     "power_compute", "power_law"],
                   help="the scale law (two-step's step 1, loss-law): auto = chosen by rolling-origin backtests inside "
                        "the ladder, average = the eligible forms averaged; default: average for loss-law, auto otherwise")
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

    from capscale.commands.decisions import add_parsers as add_decision_parsers  # decide, decide-backtest, transfer

    add_decision_parsers(sub)

    p = sub.add_parser("report", help="one HTML page (and report.json) from a ladder: fits, forecasts, "
                                      "predictability triage, trends, provenance")
    from capscale.report.command import add_arguments

    add_arguments(p)
    # a page fits every task twice (the ladder, and its largest runs held out): 200 resamples keep the toy
    # page near a minute on 2 cores; raise --n-boot for a decision's intervals
    add_fit_options(p, n_boot=200)
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
