"""Score the same checkpoint and task with lm-eval's HF backend and with capscale; compare speed and numbers.

Why: capscale claims lm-eval's per-choice log-likelihoods at a fraction of the cost. This
script measures both claims on one workload in one process, so the ratio is not skewed by
different machines, thread counts or tokenizations:

* throughput = requested tokens / wall seconds on both sides, where requested tokens is
  sum over choices of len(context tokens) + len(continuation tokens) -- lm-eval's workload,
  whatever shortcut a scorer takes;
* agreement = max |logprob_lmeval - logprob_capscale| over every choice.

Timed: tokenization + scoring (model loading excluded); each side gets a warm-up call on a
few items first. For every --batch-sizes value the script times one capscale run and one
lm-eval run, interleaved, and reports each side's best wall time (see ``run_both``).

Default workload: evals/tasks/fiveshot_facts.jsonl on a random-init Llama checkpoint of
~12M parameters built offline with capscale.tinymodels (tokenizer trained on the task texts).

    python evals/bench/scoring_speed.py                        # CPU, full size, writes results/bench/
    python evals/bench/scoring_speed.py --items 16 --batch-sizes 8 --out /tmp/bench   # smoke test
    python evals/bench/scoring_speed.py --device cuda --model DIR --dtype bfloat16 --lm-eval-vllm   # GPU

On CUDA the report adds the share of the GPU's peak dense bf16/fp16 FLOP/s (``--peak-tflops``, else
looked up by GPU name in PEAK_TFLOPS), lm-eval's vLLM backend where vLLM is installed
(``--lm-eval-vllm``), and which attention implementation runs with capscale's 4-D prefix-sharing
mask: the model's ``attn_implementation`` and, for SDPA, which kernels (flash, memory-efficient,
cuDNN, math) accept the mask, with their time on a few items (``attention_report``).
evals/bench/gpu_bench.sh runs all of it (sdpa and eager) on a random-init ~300M Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from benchkit import choice_texts, machine, provenance_lines, timed

from capscale.models import load_checkpoint
from capscale.scoring.loglik import score_items
from capscale.tasks.jsonl import load_jsonl_task
from capscale.tinymodels import save_random_checkpoint, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TASK = ROOT / "evals" / "tasks" / "fiveshot_facts.jsonl"
WARMUP_ITEMS = 4
# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets; first match wins
PEAK_TFLOPS = (("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 756.0),
               ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
               ("L40", 181.0), ("L4", 121.0), ("A10G", 125.0), ("A10", 125.0), ("A6000", 155.0),
               ("RTX 4090", 165.0), ("RTX 3090", 71.0))


def peak_tflops(args) -> float | None:
    if args.peak_tflops or args.device != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(0)
    return next((value for key, value in PEAK_TFLOPS if key in name), None)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=str(DEFAULT_TASK), help="multiple-choice JSONL task (default: fiveshot_facts)")
    ap.add_argument("--items", type=int, default=None, help="score only the first N items (default: all)")
    ap.add_argument("--batch-sizes", default="8,32,64", help="lm-eval batch sizes to try; the best time counts")
    ap.add_argument("--token-budget", type=int, default=None, help="capscale tokens per batch (default: capscale's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--model", default=None, help="existing HF checkpoint dir (default: build a random Llama)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (same for both sides)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak TFLOP/s for the utilisation column (CUDA; default: looked up by GPU name)")
    ap.add_argument("--attn-implementation", default=None, choices=["sdpa", "eager"],
                    help="attention implementation for both sides (default: transformers' choice)")
    ap.add_argument("--lm-eval-vllm", action="store_true", help="also time lm-eval's vLLM backend (CUDA, if installed)")
    ap.add_argument("--vocab", type=int, default=8192, help="tokenizer size for the built checkpoint")
    ap.add_argument("--d-model", type=int, default=256, help="width of the built checkpoint")
    ap.add_argument("--n-layers", type=int, default=8, help="depth of the built checkpoint")
    ap.add_argument("--max-length", type=int, default=1024, help="context window of the built checkpoint")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="directory for scoring_speed.{json,md}")
    return ap.parse_args(argv)


def build_checkpoint(out_dir: Path, items, args) -> Path:
    """Random-init Llama + BPE trained on the task's own texts: realistic token counts, no network."""
    tokenizer = train_tokenizer(choice_texts(items), vocab_size=args.vocab)
    return save_random_checkpoint(out_dir, tokenizer, arch="llama", d_model=args.d_model, n_layers=args.n_layers,
                                  n_heads=max(1, args.d_model // 64), max_length=args.max_length)


def lmeval_requests(items, task_name: str):
    """One loglikelihood Instance per choice, built exactly as lm-eval's multiple_choice tasks build them."""
    from lm_eval.api.instance import Instance

    reqs = []
    for i, it in enumerate(items):
        for j in range(len(it.choices)):
            reqs.append(Instance(request_type="loglikelihood", doc={"id": it.id}, arguments=(it.context, it.continuation(j)),
                                 idx=j, metadata=(task_name, i, 1)))
    return reqs


def token_counts(lm, requests) -> dict:
    """Token totals from lm-eval's own encoder: requested (ctx + cont), fed (minus each last token), context."""
    requested = fed = context = 0
    for r in requests:
        ctx, cont = lm._encode_pair(*r.args)
        requested += len(ctx) + len(cont)
        fed += len(ctx) + len(cont) - 1
        context += len(ctx)
    return {"tokens_requested": requested, "tokens_in": fed, "context_tokens": context}


def capscale_run(ck, items, args) -> dict:
    kw = dict(max_length=ck.max_length, device=ck.device, token_budget=args.token_budget, progress=False)
    rep, stats = timed(lambda: score_items(ck.model, ck.tokenizer, items, **kw), args.device)
    # score_items returns choices item-major, choice-minor: the order lmeval_requests uses
    assert rep.item_index.tolist() == [i for i, it in enumerate(items) for _ in it.choices]
    return stats | {"mode": rep.mode, "tokens_requested": rep.tokens_requested, "tokens_in": rep.tokens_in,
                    "n_truncated_items": rep.n_truncated_items, "warnings": rep.warnings,
                    "logprob": rep.logprob.tolist(), "greedy": rep.greedy.tolist()}


def lmeval_run(lm, requests, args) -> dict:
    out, stats = timed(lambda: lm.loglikelihood(requests, disable_tqdm=True), args.device)
    return stats | {"logprob": [lp for lp, _ in out], "greedy": [g for _, g in out]}


def run_both(model_dir: str, items, requests, args) -> tuple[list[dict], list[dict], object]:
    """Interleave the two scorers: for each lm-eval batch size, one capscale run then one lm-eval run.

    On a shared machine the load drifts over minutes; alternating puts both sides in the same
    time windows, and taking each side's best run discards the worst interference. So both
    sides get the same number of timed attempts.
    """
    from lm_eval.models.huggingface import HFLM

    ck = load_checkpoint(model_dir, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation)
    score_items(ck.model, ck.tokenizer, items[:WARMUP_ITEMS], max_length=ck.max_length, device=ck.device,
                token_budget=args.token_budget, progress=False)  # warm-up
    cs_runs, le_runs = [], []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
        lm = HFLM(pretrained=model_dir, dtype=args.dtype, device=args.device, batch_size=bs, **extra)
        lm.loglikelihood(requests[: WARMUP_ITEMS * 4], disable_tqdm=True)  # warm-up
        cs = capscale_run(ck, items, args)
        print(f"capscale mode={cs['mode']:<8s}   {cs['seconds']:8.2f} s wall {cs['cpu_seconds']:8.2f} s cpu", flush=True)
        le = lmeval_run(lm, requests, args) | {"batch_size": bs} | token_counts(lm, requests)
        print(f"lm-eval  batch_size={bs:<4d} {le['seconds']:8.2f} s wall {le['cpu_seconds']:8.2f} s cpu", flush=True)
        cs_runs.append(cs)
        le_runs.append(le)
        del lm
    return cs_runs, le_runs, ck


def attention_report(ck, items, args) -> dict:
    """Which attention runs with the packed 4-D mask: the model's implementation and, for SDPA, each
    kernel forced in turn on a few items (accepted or not, seconds, max |Δ| against the default)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    impl = getattr(ck.model.config, "_attn_implementation", None)
    report = {"attn_implementation": impl, "sdpa_kernels": {}}
    if impl != "sdpa":
        return report
    few = items[: 2 * WARMUP_ITEMS]
    kw = dict(max_length=ck.max_length, device=ck.device, token_budget=args.token_budget, progress=False,
              mode="shared")
    base = score_items(ck.model, ck.tokenizer, few, **kw).logprob
    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    for name in names:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                rep, stats = timed(lambda: score_items(ck.model, ck.tokenizer, few, **kw), args.device)
            report["sdpa_kernels"][name] = {"accepted": True, "seconds": stats["seconds"],
                                            "max_abs_diff_vs_default": float(abs(rep.logprob - base).max())}
        except RuntimeError as e:  # "No available kernel": this kernel cannot take an arbitrary mask
            report["sdpa_kernels"][name] = {"accepted": False, "reason": str(e).splitlines()[0][:200]}
    return report


def lmeval_vllm_run(model_dir: str, requests, args) -> dict | None:
    """lm-eval's vLLM backend on the same requests (None when vLLM is not installed)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    from lm_eval.models.vllm_causallms import VLLM

    lm = VLLM(pretrained=model_dir, dtype=args.dtype, batch_size="auto", gpu_memory_utilization=0.5)
    lm.loglikelihood(requests[: WARMUP_ITEMS * 4], disable_tqdm=True)
    out, stats = timed(lambda: lm.loglikelihood(requests, disable_tqdm=True), args.device)
    del lm
    return stats | {"logprob": [lp for lp, _ in out], "greedy": [g for _, g in out]}


def accuracy(items, logprob) -> float:
    k, correct = 0, 0
    for it in items:
        lps = logprob[k : k + len(it.choices)]
        correct += int(max(range(len(lps)), key=lps.__getitem__) == it.gold)
        k += len(it.choices)
    return correct / len(items)


def write_markdown(path: Path, res: dict) -> None:
    w, le, cs = res["workload"], res["lm_eval"], res["capscale"]
    flops = "tflops" in cs
    rows = [
        (f"lm-eval HF backend (best: batch size {le['batch_size']})", le),
        (f"capscale score_items (mode {cs['mode']}, token budget {cs['token_budget'] or 'default'})", cs),
    ]
    if res.get("lm_eval_vllm"):
        rows.insert(1, ("lm-eval vLLM backend (batch size auto)", res["lm_eval_vllm"]))
    lines = [
        "# Scoring speed: capscale vs lm-eval HF backend",
        "",
        f"Workload: `{w['task']}`, {w['items']} items x {'/'.join(map(str, w['choices']))} choices = "
        f"{w['n_choices_total']:,} choices, {w['tokens_requested']:,} requested tokens (context + continuation, "
        f"summed over choices; mean context {w['mean_context_tokens']:.0f} tokens). Model: {w['model']}, "
        f"{cs['params_total'] / 1e6:.1f}M parameters ({cs['params_non_embedding'] / 1e6:.1f}M non-embedding), "
        f"{res['args']['dtype']} on {res['args']['device']}.",
        "",
        "| scorer | wall s | process CPU s | requested tokens/s | tokens fed to model |"
        + (" model TFLOP/s | share of peak |" if flops else ""),
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if flops else ""),
    ]
    for name, r in rows:
        extra = ""
        if flops:
            share = f"{r['share_of_peak']:.1%}" if r.get("share_of_peak") is not None else "n/a"
            extra = f" {r['tflops']:.2f} | {share} |"
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_in']:,} |{extra}")
    lines += [
        "",
        f"**Speed-up: {res['speedup']:.2f}x** requested tokens/s. "
        f"Max |Δ logprob| between capscale and lm-eval over all {w['n_choices_total']:,} choices and every lm-eval "
        f"batch size: **{res['max_abs_diff']:.2e}** (greedy flags agree on {res['greedy_agreement']:.1%}; "
        f"acc lm-eval {res['acc_lm_eval']:.3f}, capscale {res['acc_capscale']:.3f}).",
        "",
        "All timed runs, interleaved in this order (capscale, then lm-eval at each batch size): "
        + "; ".join(f"capscale {c:.2f} s, lm-eval batch {r['batch_size']} {r['seconds']:.2f} s"
                    for c, r in zip(cs["all_seconds"], le["runs"])) + ".",
        "Each side's best wall time is used. Timing includes tokenization and excludes model loading; "
        "each side had a warm-up call first."
        + (f" lm-eval vLLM: {res['lm_eval_vllm_note']}." if res.get("lm_eval_vllm_note") else "")
        + (f" Peak used for the share: {res['peak_tflops']:g} TFLOP/s." if res.get("peak_tflops") else ""),
        "",
        *attention_lines(res.get("attention") or {}),
        *provenance_lines(res, ". The CPU is shared with other jobs: wall times are noisy, process CPU time shows how much was lost."),
        "",
    ]
    path.write_text("\n".join(lines))


def attention_lines(attention: dict) -> list[str]:
    if not attention:
        return []
    lines = [f"Attention implementation with the 4-D prefix-sharing mask: `{attention['attn_implementation']}`."]
    for name, k in attention.get("sdpa_kernels", {}).items():
        lines.append(f"- SDPA {name}: " + (f"accepts the mask, {k['seconds']:.3f} s on the probe items, max |Δ| "
                                           f"{k['max_abs_diff_vs_default']:.1e} vs the default kernel"
                                           if k["accepted"] else f"refuses it ({k['reason']})"))
    return lines + [""]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = load_jsonl_task(args.task)
    items = task.items[: args.items] if args.items else task.items
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capscale-bench-") as tmp:
        if args.model:
            model_dir, model_desc = args.model, args.model
        else:
            # tokenizer trained on every item, so --items changes the workload, not the model
            model_dir = str(build_checkpoint(Path(tmp) / "llama", task.items, args))
            model_desc = (f"random-init Llama d_model={args.d_model} n_layers={args.n_layers} "
                          f"vocab={args.vocab} (BPE trained on the task texts)")
        requests = lmeval_requests(items, task.name)
        cs_runs, le_runs, ck = run_both(model_dir, items, requests, args)
        attention = attention_report(ck, items, args)
        vl = lmeval_vllm_run(model_dir, requests, args) if args.lm_eval_vllm else None
    cs = dict(min(cs_runs, key=lambda r: r["seconds"]))
    cs |= {"params_total": ck.params_total, "params_non_embedding": ck.params, "max_length": ck.max_length,
           "token_budget": args.token_budget, "all_seconds": [r["seconds"] for r in cs_runs]}
    le = dict(min(le_runs, key=lambda r: r["seconds"]))
    loadavg_after = os.getloadavg()[0]

    if le["tokens_requested"] != cs["tokens_requested"]:
        print(f"WARNING: token counts differ: lm-eval {le['tokens_requested']} vs capscale {cs['tokens_requested']}",
              file=sys.stderr)
    tokens = le["tokens_requested"]
    peak = peak_tflops(args)
    if vl is not None:
        vl |= {"tokens_in": le["tokens_in"], "max_abs_diff_vs_capscale": max(
            abs(a - b) for a, b in zip(vl["logprob"], cs["logprob"]))}
    for side in (le, cs) + ((vl,) if vl is not None else ()):
        side["tokens_per_s"] = tokens / side["seconds"]
        if args.device == "cuda":
            # 2 * params * tokens fed: a matmul-only estimate (attention and the skipped lm-head work ignored)
            side["tflops"] = 2 * cs["params_total"] * side["tokens_in"] / side["seconds"] / 1e12
            side["share_of_peak"] = side["tflops"] / peak if peak else None
    # every lm-eval run is compared, so lm-eval's own batch-size noise is inside the bound
    diffs = [abs(a - b) for run in le_runs for a, b in zip(run["logprob"], cs["logprob"])]
    capscale_spread = max(abs(a - b) for run in cs_runs for a, b in zip(run["logprob"], cs["logprob"]))
    drop = ("logprob", "greedy")
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    task_path = Path(args.task).resolve()
    res = {
        "command": "python " + shlex.join(command),
        "args": vars(args),
        "machine": machine(args.device),
        "workload": {
            "task": str(task_path.relative_to(ROOT)) if task_path.is_relative_to(ROOT) else args.task,
            "items": len(items), "choices": sorted({len(it.choices) for it in items}),
            "n_choices_total": len(requests), "tokens_requested": tokens,
            "mean_context_tokens": le["context_tokens"] / len(requests),
            "model": model_desc,
        },
        "lm_eval": {k: v for k, v in le.items() if k not in drop} | {
            "runs": [{k: v for k, v in r.items() if k not in drop} for r in le_runs]},
        "capscale": {k: v for k, v in cs.items() if k not in drop},
        "lm_eval_vllm": None if vl is None else {k: v for k, v in vl.items() if k not in drop},
        "lm_eval_vllm_note": ("not requested" if not args.lm_eval_vllm else
                              "vLLM not installed" if vl is None else ""),
        "peak_tflops": peak,
        "attention": attention,
        "speedup": cs["tokens_per_s"] / le["tokens_per_s"],
        "max_abs_diff": max(diffs),
        "capscale_run_to_run_max_diff": capscale_spread,
        "greedy_agreement": sum(a == b for a, b in zip(le["greedy"], cs["greedy"])) / len(requests),
        "acc_lm_eval": accuracy(items, le["logprob"]),
        "acc_capscale": accuracy(items, cs["logprob"]),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "scoring_speed.md", res)
    print(f"lm-eval : {le['tokens_per_s']:10,.0f} requested tokens/s (batch {le['batch_size']}, {le['seconds']:.2f} s)")
    print(f"capscale: {cs['tokens_per_s']:10,.0f} requested tokens/s ({cs['seconds']:.2f} s)")
    print(f"ratio   : {res['speedup']:.2f}x   max |Δ logprob| = {res['max_abs_diff']:.2e}")
    print(f"wrote {out / 'scoring_speed.json'} and {out / 'scoring_speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
