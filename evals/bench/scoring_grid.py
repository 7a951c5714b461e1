"""Scoring speed over a grid: model size x context length x number of choices, capscale's default vs lm-eval.

Why: one workload (scoring_speed.py) says little about where prefix sharing pays. This grid runs
both scorers on the same random-init Llama checkpoints (~3M, ~12M, ~50M parameters, vocabulary
8192, BPE trained on evals/tasks/fiveshot_facts.jsonl) and tasks built from that file with
contexts of 100, 500 and 1500 tokens and 2, 4 or 10 short choices (the item's own answers, then
other items' answers as distractors). Per cell:

* speed-up = lm-eval wall seconds / capscale wall seconds on the same items (tokenization and
  scoring timed, model loading excluded, a warm-up call first on each side); capscale runs its
  default (``mode="auto"``) with the self-check cache emptied first, so every cell pays one
  self-check as a fresh process would;
* max |Δ logprob| over every choice, and the same relative to |logprob|;
* the FLOP ratio that bounds the cell: lm-eval's work / capscale's work, counting 2 FLOPs per
  parameter per token for the layers, 2 per lm-head parameter per position whose logits are
  computed (every position for lm-eval, only continuation-predicting ones for capscale), and
  4 * d_model * layers per attended (query, key) pair (the pairs each side's mask allows). capscale's
  side is counted on the rows it actually ran. If both ran at the same FLOP/s this is the speed-up;
  long contexts with few choices are bounded by about n_choices (the context is run once instead of
  n times), long choices gain little.

``--prefix distinct`` (default) gives every item a context of its own; ``--prefix shared`` opens every
context with the same few-shot block (as MMLU's first_n exemplars), where capscale also shares rows
between items (``loglik.items_per_row``), written to scoring_grid_fewshot.{json,md}.

Item counts are chosen per cell so that lm-eval takes about ``--lm-eval-seconds`` (default 10) on
2 cores, with at least 2 and at most 48 items: the whole grid runs in about 10-15 minutes per ``--repeats``.
lm-eval uses ``--batch-size`` (default 8, its best on 2 CPU cores in scoring_speed.py).

    python evals/bench/scoring_grid.py                                   # full grid -> results/bench/
    python evals/bench/scoring_grid.py --prefix shared                   # the few-shot-block grid
    python evals/bench/scoring_grid.py --models 3M --contexts 100 --choices 2,4 --lm-eval-seconds 1 --out /tmp/g
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchkit import choice_texts, machine, provenance_lines, repeat_count, timed
from scoring_speed import lmeval_requests

from capscale.models import load_checkpoint
from capscale.scoring import loglik
from capscale.tasks.jsonl import load_jsonl_task
from capscale.tasks.schema import MCItem
from capscale.tinymodels import save_random_checkpoint, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "evals" / "tasks" / "fiveshot_facts.jsonl"


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layers: int
    lm_eval_tokens_per_s: float  # rough lm-eval speed on 2 CPU cores, to size the cells


SIZES = {
    "3M": Size("3M", 128, 4, 20_000),
    "12M": Size("12M", 256, 8, 5_300),
    "50M": Size("50M", 512, 10, 1_200),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="3M,12M,50M")
    ap.add_argument("--contexts", default="100,500,1500", help="context lengths in tokens")
    ap.add_argument("--choices", default="2,4,10")
    ap.add_argument("--lm-eval-seconds", type=float, default=10.0, help="target lm-eval time per cell (sizes items)")
    ap.add_argument("--min-items", type=int, default=2)
    ap.add_argument("--max-items", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=repeat_count, default=1,
                    help="time each side this many times, interleaved; the cell reports the median of the paired "
                         "ratios (the machine's own noise is ~10-20%% per run on 2 shared cores)")
    ap.add_argument("--prefix", choices=["distinct", "shared"], default="distinct",
                    help="contexts share no prefix (distinct) or open with the same few-shot block (shared: "
                         "written to scoring_grid_fewshot.*)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="directory for scoring_grid.{json,md}")
    return ap.parse_args(argv)


def grid_items(source: list[MCItem], tokenizer, n_items: int, context_tokens: int, n_choices: int,
               seed: int, prefix: str = "distinct") -> list[MCItem]:
    """Items whose context is the last ``context_tokens`` tokens of (earlier records + this item's context),
    so the question and 'Answer:' stay at the end; choices: the item's own, then other items' answers.

    ``prefix="distinct"``: the item's own five-record context, preceded (when longer contexts are asked
    for) by records from another place in the file for each item, so contexts share no prefix.
    ``"shared"``: a fixed few-shot block (the file's first records, the same for every item, as MMLU's
    first_n exemplars) followed by the item's own last record and question."""
    rng = random.Random(seed)
    answers = sorted({c for it in source for c in it.choices})
    stream = tokenizer.encode("\n\n".join(it.context for it in source), add_special_tokens=False)
    items = []
    for k in range(n_items):
        base = source[k % len(source)]
        own_text = base.context if prefix == "distinct" else "\n\nRecord: " + base.context.split("\n\nRecord: ")[-1]
        own = tokenizer.encode(own_text, add_special_tokens=False)
        n_before = max(0, context_tokens - len(own))
        start = 0 if prefix == "shared" else (k * 997) % max(1, len(stream) - n_before)
        before = stream[start: start + n_before]
        context = tokenizer.decode((before + own)[-context_tokens:]).lstrip()
        choices = list(dict.fromkeys(base.choices))[:n_choices]
        while len(choices) < n_choices:
            extra = rng.choice(answers)
            if extra not in choices:
                choices.append(extra)
        gold = rng.randrange(n_choices)
        correct = base.choices[base.gold]
        if correct in choices:
            choices.remove(correct)
            choices.insert(gold, correct)
        items.append(MCItem(f"{base.id}-{k}", context, tuple(choices), gold))
    return items


def flop_counts(requests, rows, d_model: int, n_layers: int, layer_params: int, head_params: int) -> tuple[float, float]:
    """(lm-eval FLOPs, capscale FLOPs): lm-eval's from the encoded requests, capscale's from the rows it
    actually ran (``loglik.shared_rows``), attended pairs counted from each row's mask (see module docstring)."""
    from capscale.scoring.packing import batch_tensors

    attention = 4 * d_model * n_layers
    lm = cs = 0.0
    for r in requests:
        t = len(r.context) + len(r.continuation) - 1  # lm-eval feeds (ctx + cont)[:-1]
        lm += 2 * layer_params * t + 2 * head_params * t + attention * t * (t + 1) / 2
    for row in rows:
        pairs = float((batch_tensors([row], 0, torch.float32, "cpu")[2] == 0).sum())
        kept = sum(len(r.continuation) for r in row.requests)
        cs += 2 * layer_params * len(row) + 2 * head_params * kept + attention * pairs
    return lm, cs


def row_prefix(row) -> int:
    """Tokens a row's items share (its root segment), 0 for a row of one item."""
    return row.segments.count(0) if len({r.item_index for r in row.requests}) > 1 else 0


def build(size: Size, tokenizer, root: Path) -> Path:
    return save_random_checkpoint(root / size.name, tokenizer, arch="llama", d_model=size.d_model,
                                  n_layers=size.n_layers, n_heads=max(1, size.d_model // 64), max_length=2048)


def n_items_for(size: Size, context: int, choices: int, args) -> int:
    per_item = choices * (context + 8)
    n = round(args.lm_eval_seconds * size.lm_eval_tokens_per_s / per_item)
    return int(min(args.max_items, max(args.min_items, n)))


def run_cell(ck, lm, size: Size, source, context: int, choices: int, args) -> dict:
    from capscale.scoring.encoding import encode_items

    from capscale.scoring.packing import group_by_context

    n = n_items_for(size, context, choices, args)
    items = grid_items(source, ck.tokenizer, n + 1, context, choices, args.seed, args.prefix)
    warm, items = items[:1], items[1:]
    requests = lmeval_requests(items, "grid")
    kw = dict(max_length=ck.max_length, device="cpu", progress=False)
    loglik.score_items(ck.model, ck.tokenizer, warm, **kw)
    lm.loglikelihood(lmeval_requests(warm, "grid"), disable_tqdm=True)

    def capscale_cold():
        loglik._SHARING_GAP.clear()  # a fresh process: every timed run pays the self-check
        return loglik.score_items(ck.model, ck.tokenizer, items, **kw)

    capscale_runs, lm_eval_runs = [], []
    for _ in range(args.repeats):  # interleaved: each capscale run shares its load window with the lm-eval run after it
        capscale_runs.append(timed(capscale_cold, "cpu"))
        lm_eval_runs.append(timed(lambda: lm.loglikelihood(requests, disable_tqdm=True), "cpu"))
    report, out = capscale_runs[0][0], lm_eval_runs[0][0]
    paired = [le_s["seconds"] / cs_s["seconds"] for (_, cs_s), (_, le_s) in zip(capscale_runs, lm_eval_runs)]
    cs, le = median_stats([s for _, s in capscale_runs]), median_stats([s for _, s in lm_eval_runs])
    theirs = np.array([lp for lp, _ in out])
    diff = np.abs(theirs - report.logprob)
    encoded = encode_items(ck.tokenizer, items, ck.max_length)
    groups = group_by_context(encoded)
    rows = (loglik.shared_rows(groups, loglik.model_width(ck.model)) if report.mode == "shared"
            else loglik.pack_independent(encoded))
    assert sum(len(r) for r in rows) == report.tokens_in, "the FLOP count must describe the rows that ran"
    prefixes = [row_prefix(r) for r in rows for _ in {q.item_index for q in r.requests}]
    layer_params = ck.params
    head_params = ck.model.get_output_embeddings().weight.numel()
    lm_flops, cs_flops = flop_counts(encoded, rows, size.d_model, size.n_layers, layer_params, head_params)
    return {
        "model": size.name, "context": context, "choices": choices, "items": len(items),
        "mean_context_tokens": float(np.mean([len(r.context) for r in encoded])),
        "mean_choice_tokens": float(np.mean([len(r.continuation) for r in encoded])),
        "tokens_requested": report.tokens_requested, "tokens_in": report.tokens_in, "mode": report.mode,
        "rows": len(rows), "mean_shared_prefix": float(np.mean(prefixes)),
        "capscale_s": cs["seconds"], "lm_eval_s": le["seconds"],
        "capscale_cpu_s": cs["cpu_seconds"], "lm_eval_cpu_s": le["cpu_seconds"],
        "speedup": float(np.median(paired)), "ratio_of_medians": le["seconds"] / cs["seconds"],
        "flop_ratio": lm_flops / cs_flops, "repeats": args.repeats, "speedups": paired,
        "max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / np.abs(theirs)).max()),
        "max_abs_logprob": float(np.abs(theirs).max()),
        "loadavg": os.getloadavg()[0],
    }


def median_stats(runs: list[dict]) -> dict:
    """Each side's median wall and CPU seconds over its timed runs."""
    return {k: float(np.median([r[k] for r in runs])) for k in ("seconds", "cpu_seconds")}


def token_ratio(cell: dict) -> float:
    """Tokens lm-eval feeds (context + continuation minus its last token, per choice) / tokens capscale feeds."""
    return (cell["tokens_requested"] - cell["items"] * cell["choices"]) / cell["tokens_in"]


def write_markdown(path: Path, res: dict) -> None:
    cells = res["cells"]
    lines = [
        "# Scoring grid: capscale default (`--mode auto`) vs lm-eval HF backend",
        "",
        "Random-init Llama checkpoints (vocabulary 8192, float32, CPU), items built from "
        "`evals/tasks/fiveshot_facts.jsonl` (context = its last N tokens, short answers as choices), "
        + ("every item's context a fixed few-shot block (the file's first records, as MMLU's first_n "
           "exemplars) followed by its own last record and question (`--prefix shared`). "
           if res["args"].get("prefix") == "shared" else
           "each item's own five records, preceded at longer contexts by records from another place in the "
           "file per item, so contexts share no prefix (`--prefix distinct`, the default). ") +
        "Shared prefix = mean tokens each item's context shares with its row-mates (0: one row per item). "
        "Speed-up = lm-eval wall time / capscale wall time on the same items (each capscale run includes one "
        f"self-check; with {res['args'].get('repeats', 1)} interleaved runs per side, the median of the paired "
        "run ratios, each capscale run paired with the lm-eval run right after it; times and CPU-time ratio "
        "from each side's medians). CPU-time ratio = the same with process CPU seconds (less sensitive to other "
        "jobs' load, "
        "though spinning threads count). FLOP ratio = lm-eval's work / capscale's work (the speed-up at equal "
        "FLOP/s). Token ratio = tokens lm-eval feeds / tokens capscale feeds (the speed-up at equal cost per token: "
        "a 500-token context with 4 choices of ~4 tokens gives 3.9, so >= 4x there needs lm-eval's tokens to cost "
        "more than capscale's, as its vocabulary head at every position does on the small models).",
        "",
        "| model | context | choices | items | choice tokens | shared prefix | speed-up | CPU-time ratio | "
        "token ratio | FLOP ratio | max \\|Δ logprob\\| | max \\|Δ\\|/\\|logprob\\| | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c['model']} | {c['context']} | {c['choices']} | {c['items']} | "
                     f"{c['mean_choice_tokens']:.1f} | {c.get('mean_shared_prefix', 0):.0f} | "
                     f"**{c['speedup']:.2f}×** | "
                     f"{c['lm_eval_cpu_s'] / c['capscale_cpu_s']:.2f}× | {token_ratio(c):.2f} | {c['flop_ratio']:.2f} | "
                     f"{c['max_abs_diff']:.1e} | {c['max_rel_diff']:.1e} | {c['loadavg']:.1f} |")
    speeds = [c["speedup"] for c in cells]
    at_target = [c["speedup"] for c in cells if c["context"] == 500 and c["choices"] == 4]
    lines += [
        "",
        f"Lowest cell {min(speeds):.2f}×, median {np.median(speeds):.2f}×; at 500-token contexts and 4 choices "
        + ", ".join(f"{s:.2f}×" for s in at_target) + f". Max |Δ logprob| over every cell: "
        f"{max(c['max_abs_diff'] for c in cells):.1e}.",
        "",
        *provenance_lines(res, ". The load column is the 1-min load average after each cell."),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    from lm_eval.models.huggingface import HFLM

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source = load_jsonl_task(SOURCE).items
    tokenizer = train_tokenizer(choice_texts(source), vocab_size=8192)
    loadavg_before = os.getloadavg()[0]
    cells = []
    with tempfile.TemporaryDirectory(prefix="capscale-grid-") as tmp:
        for name in args.models.split(","):
            size = SIZES[name]
            path = str(build(size, tokenizer, Path(tmp)))
            ck = load_checkpoint(path)
            lm = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=args.batch_size)
            for context in [int(c) for c in args.contexts.split(",")]:
                for choices in [int(c) for c in args.choices.split(",")]:
                    cell = run_cell(ck, lm, size, source, context, choices, args)
                    cells.append(cell)
                    print(f"{name:>4s} ctx {context:5d} choices {choices:3d} items {cell['items']:3d}: "
                          f"{cell['speedup']:5.2f}x (FLOP ratio {cell['flop_ratio']:5.2f}), capscale "
                          f"{cell['capscale_s']:6.2f}s lm-eval {cell['lm_eval_s']:6.2f}s, max |d| "
                          f"{cell['max_abs_diff']:.1e}, load {cell['loadavg']:.1f}", flush=True)
                    write_results(Path(args.out), cells, loadavg_before, args, argv)  # a stopped grid keeps its cells
            del lm, ck
    stem = Path(args.out) / result_stem(args)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def write_results(out: Path, cells: list[dict], loadavg_before: float, args, argv) -> None:
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    res = {"command": "python " + shlex.join(command), "args": vars(args), "machine": machine("cpu"),
           "cells": cells, "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0]}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result_stem(args)}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / f"{result_stem(args)}.md", res)


def result_stem(args) -> str:
    return "scoring_grid" if args.prefix == "distinct" else "scoring_grid_fewshot"


if __name__ == "__main__":
    sys.exit(main())
