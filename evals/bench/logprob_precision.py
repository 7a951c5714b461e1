"""Where a |Δ logprob| between capscale and lm-eval comes from: float32 rounding, packing, or neither.

Why: a grid cell with 4 long choices after 100-token contexts on the ~12M model once showed
|Δ logprob| = 1.9e-4 between capscale and lm-eval, above the 1e-4 we hold ourselves to. The
candidates were the order of accumulation, the dtype of the packed attention mask, and the
position ids of packed choices. This script measures, for that workload and a short-choice
contrast (same contexts, one-word answers), the max over choices of:

* |lm-eval - capscale| (capscale default mode, i.e. packed);
* |capscale packed - capscale one row per choice|: packing, its mask and its position ids;
* |lm-eval - capscale one row per choice| (no packing at all) and |lm-eval batch 8 - lm-eval batch 1|:
  what another batch shape alone changes;
* |lm-eval - reference| and |capscale - reference|, the reference being the same weights in
  float64 scored one row per choice (float64 logits, softmax and sum);
* |float32 sum - float64 sum| of the same float32 per-token log-probabilities (lm-eval's own
  tensors: full logits of ctx+cont, float32 log_softmax, gathered), i.e. what the accumulation
  dtype alone changes;
* the float32 spacing (ulp) at the largest |logprob|: a float32 total cannot be closer than half of it.

    python evals/bench/logprob_precision.py            # -> results/bench/logprob_precision.{json,md}
    python evals/bench/logprob_precision.py --items 2 --d-model 64 --n-layers 2 --out /tmp/p   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchkit import choice_texts, machine, provenance_lines
from scoring_grid import SOURCE, grid_items
from scoring_speed import ROOT, lmeval_requests

from capscale.models import load_checkpoint
from capscale.scoring.loglik import score_items
from capscale.tasks.jsonl import load_jsonl_task
from capscale.tasks.schema import MCItem
from capscale.tinymodels import save_random_checkpoint, train_tokenizer


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--context", type=int, default=100, help="context tokens")
    ap.add_argument("--choice-tokens", type=int, default=150, help="tokens per long choice")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    return ap.parse_args(argv)


def long_choice_items(short: list[MCItem], source: list[MCItem], tokenizer, n_tokens: int) -> list[MCItem]:
    """The same contexts, each choice replaced by a ~n_tokens passage of another record (distinct per choice)."""
    passages = [tokenizer.decode(tokenizer.encode(it.context, add_special_tokens=False)[:n_tokens]).strip()
                for it in source]
    items = []
    for k, it in enumerate(short):
        choices = tuple(passages[(4 * k + j + 1) % len(passages)] for j in range(len(it.choices)))
        items.append(MCItem(it.id + "-long", it.context, choices, it.gold))
    return items


@torch.no_grad()
def lm_eval_style_sums(model, lm, requests) -> tuple[np.ndarray, np.ndarray]:
    """lm-eval's per-choice computation (full logits of (ctx+cont)[:-1], float32 log_softmax, gather),
    summed in float32 and in float64."""
    s32, s64 = [], []
    for r in requests:
        ctx, cont = lm._encode_pair(*r.args)
        ids = torch.tensor([(ctx + cont)[:-1]])
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0, -len(cont):]
        tok = logp.gather(1, torch.tensor(cont)[:, None]).squeeze(1)
        s32.append(float(tok.sum()))
        s64.append(float(tok.double().sum()))
    return np.array(s32), np.array(s64)


def measure(ck, model64, lm, lm1, items) -> dict:
    kw = dict(max_length=ck.max_length, device="cpu", progress=False)
    packed = score_items(ck.model, ck.tokenizer, items, **kw)
    alone = score_items(ck.model, ck.tokenizer, items, mode="independent", **kw)
    reference = score_items(model64, ck.tokenizer, items, mode="independent", **kw).logprob
    requests = lmeval_requests(items, "precision")
    theirs = np.array([lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    theirs_alone = np.array([lp for lp, _ in lm1.loglikelihood(requests, disable_tqdm=True)])
    s32, s64 = lm_eval_style_sums(ck.model, lm, requests)
    biggest = float(np.abs(reference).max())
    return {
        "choices": len(requests), "mean_choice_tokens": float(packed.n_tokens.mean()),
        "max_abs_logprob": biggest, "float32_ulp_at_max": float(np.spacing(np.float32(biggest))),
        "lm_eval_vs_capscale": float(np.abs(theirs - packed.logprob).max()),
        "packed_vs_one_row_per_choice": float(np.abs(packed.logprob - alone.logprob).max()),
        "lm_eval_vs_capscale_one_row_per_choice": float(np.abs(theirs - alone.logprob).max()),
        "lm_eval_batch_8_vs_batch_1": float(np.abs(theirs - theirs_alone).max()),
        "lm_eval_vs_float64": float(np.abs(theirs - reference).max()),
        "capscale_vs_float64": float(np.abs(packed.logprob - reference).max()),
        "float32_sum_vs_float64_sum": float(np.abs(s32 - s64).max()),
        "lm_eval_style_float64_sum_vs_float64": float(np.abs(s64 - reference).max()),
    }


def write_markdown(path: Path, res: dict) -> None:
    """The table of every quantity per workload (regenerable from the JSON)."""
    rows, args = res["workloads"], argparse.Namespace(**res["args"])
    names = list(rows)
    labels = [("max \\|logprob\\|", "max_abs_logprob", ".1f"), ("float32 spacing there", "float32_ulp_at_max", ".1e"),
              ("\\|lm-eval − capscale\\|", "lm_eval_vs_capscale", ".1e"),
              ("\\|capscale packed − one row per choice\\| (mask, positions)", "packed_vs_one_row_per_choice", ".1e"),
              ("\\|lm-eval − capscale one row per choice\\| (no packing)", "lm_eval_vs_capscale_one_row_per_choice",
               ".1e"),
              ("\\|lm-eval batch 8 − lm-eval batch 1\\| (lm-eval against itself)", "lm_eval_batch_8_vs_batch_1", ".1e"),
              ("\\|lm-eval − float64 reference\\|", "lm_eval_vs_float64", ".1e"),
              ("\\|capscale − float64 reference\\|", "capscale_vs_float64", ".1e"),
              ("\\|float32 sum − float64 sum\\| of lm-eval's own token log-probs", "float32_sum_vs_float64_sum", ".1e"),
              ("\\|lm-eval's token log-probs summed in float64 − reference\\|", "lm_eval_style_float64_sum_vs_float64",
               ".1e")]
    lines = ["# Where |Δ logprob| comes from", "",
             f"Random-init Llama d_model={args.d_model} n_layers={args.n_layers} (vocabulary 8192), float32 on CPU, "
             f"{args.items} items with {args.context}-token contexts from fiveshot_facts; max over all choices.", "",
             "| quantity | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(format(rows[n][key], fmt) for n in names) + " |" for label, key, fmt in labels]
    lines += ["", "Reading, per workload: the float32 spacing at the largest |logprob| bounds how close any float32 "
              "total can be; lm-eval's float32 sum alone (its own token log-probs re-summed in float64) moves a "
              "total by the row above it; both scorers are farther from the float64 reference than from each other.",
              ""]
    for n in names:
        r = rows[n]
        lines.append(f"- {n}: |lm-eval − capscale| {r['lm_eval_vs_capscale']:.1e} = "
                     f"{r['lm_eval_vs_capscale'] / r['max_abs_logprob']:.1e} of the largest |logprob| "
                     f"({r['max_abs_logprob']:.0f}, float32 spacing {r['float32_ulp_at_max']:.1e}); lm-eval's float32 "
                     f"sum alone: {r['float32_sum_vs_float64_sum']:.1e}; packing alone: "
                     f"{r['packed_vs_one_row_per_choice']:.1e}.")
    lines += ["", *provenance_lines(res, "."), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    from lm_eval.models.huggingface import HFLM

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source = load_jsonl_task(SOURCE).items
    tokenizer = train_tokenizer(choice_texts(source), vocab_size=8192)
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capscale-precision-") as tmp:
        path = str(save_random_checkpoint(Path(tmp) / "llama", tokenizer, arch="llama", d_model=args.d_model,
                                          n_layers=args.n_layers, n_heads=max(1, args.d_model // 64),
                                          max_length=1024))
        ck = load_checkpoint(path)
        model64 = copy.deepcopy(ck.model).double()
        lm = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=8)
        lm1 = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=1)
        short = grid_items(source, ck.tokenizer, args.items, args.context, 4, seed=0)
        workloads = {f"4 long choices (~{args.choice_tokens} tokens)": long_choice_items(short, source, ck.tokenizer,
                                                                                          args.choice_tokens),
                     "4 short choices": short}
        rows = {name: measure(ck, model64, lm, lm1, items) for name, items in workloads.items()}
    for name, row in rows.items():
        print(name, json.dumps(row, indent=1))
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    res = {"command": "python " + shlex.join(command), "args": vars(args), "machine": machine("cpu"),
           "workloads": rows, "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logprob_precision.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "logprob_precision.md", res)
    print(f"wrote {out / 'logprob_precision.json'} and {out / 'logprob_precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
