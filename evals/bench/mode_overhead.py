"""What the default ``--mode auto`` costs over ``--mode shared``: the prefix-sharing self-check, on small and large tasks.

Why: ``auto`` checks once that the architecture honours the packed attention mask and then
scores exactly as ``shared`` does, so it should cost (almost) nothing more, also on small tasks
where a per-call check used to double the time. Each run starts with an empty self-check cache
(what a fresh ``capscale eval`` process sees), and scores:

* one task of 16 items;
* eight tasks of 16 items (one ``score_items`` call per task, as ``capscale eval`` does);
* one task of 240 items (``--large-items``).

``--fewshot``: the same workloads on items whose 500-token contexts open with one fixed few-shot block
(scoring_grid.py's ``--prefix shared`` items), where both modes pack several items per row and ``auto``
pays the probe of such rows instead (-> mode_overhead_fewshot.{json,md}).

The two modes alternate, best of ``--repeats`` wall times per mode (the load of a shared
machine drifts; alternating puts both in the same windows). Model: the random-init ~12M Llama of
scoring_speed.py on evals/tasks/fiveshot_facts.jsonl (500-token contexts, 4 choices).

    python evals/bench/mode_overhead.py                       # -> results/bench/mode_overhead.{json,md}
    python evals/bench/mode_overhead.py --d-model 64 --n-layers 2 --repeats 1 --out /tmp/m   # smoke test
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

from benchkit import machine, provenance_lines, repeat_count, timed
from scoring_speed import DEFAULT_TASK, ROOT, build_checkpoint

from capscale.models import load_checkpoint
from capscale.scoring import loglik
from capscale.tasks.jsonl import load_jsonl_task


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=repeat_count, default=3)
    ap.add_argument("--large-items", type=int, default=240, help="items of the large task (default 240)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--fewshot", action="store_true", help="items sharing a few-shot block (see the docstring)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    return ap.parse_args(argv)


def workloads(items, large: int) -> dict[str, list[list]]:
    """name -> the tasks (item lists) one run scores, one score_items call each."""
    return {
        "1 task x 16 items": [items[:16]],
        "8 tasks x 16 items": [items[16 * k: 16 * (k + 1)] for k in range(8)],
        f"1 task x {large} items": [items[:large]],
    }


def run(ck, tasks, mode: str) -> tuple[dict, str]:
    """(wall and CPU seconds, the mode the runs scored in) of one fresh-process run of the workload."""
    loglik._SHARING_GAP.clear()  # a fresh process
    kw = dict(max_length=ck.max_length, device=ck.device, progress=False, mode=mode)
    reports, stats = timed(lambda: [loglik.score_items(ck.model, ck.tokenizer, t, **kw) for t in tasks], "cpu")
    return stats, "/".join(sorted({r.mode for r in reports}))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = load_jsonl_task(DEFAULT_TASK)
    loadavg_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="capscale-modes-") as tmp:
        ck = load_checkpoint(str(build_checkpoint(Path(tmp) / "llama", task.items, args)))
        items = task.items
        if args.fewshot:
            from scoring_grid import grid_items

            items = grid_items(task.items, ck.tokenizer, max(128, args.large_items), 500, 4, 0, "shared")
        run(ck, [items[:4]], "auto")  # warm-up
        for name, tasks in workloads(items, args.large_items).items():
            times = {"shared": [], "auto": []}
            cpu = {"shared": [], "auto": []}
            used = {}
            for _ in range(args.repeats):
                for mode in ("shared", "auto"):
                    stats, used[mode] = run(ck, tasks, mode)
                    times[mode].append(stats["seconds"])
                    cpu[mode].append(stats["cpu_seconds"])
            best = {m: min(t) for m, t in times.items()}
            best_cpu = {m: min(t) for m, t in cpu.items()}
            rows.append({"workload": name, "shared_s": best["shared"], "auto_s": best["auto"],
                         "auto_over_shared": best["auto"] / best["shared"],
                         "shared_cpu_s": best_cpu["shared"], "auto_cpu_s": best_cpu["auto"],
                         "auto_over_shared_cpu": best_cpu["auto"] / best_cpu["shared"], "auto_scored_as": used["auto"],
                         "all_seconds": times, "all_cpu_seconds": cpu, "loadavg": os.getloadavg()[0]})
            print(f"{name:20s} shared {best['shared']:7.2f}s auto {best['auto']:7.2f}s "
                  f"ratio {best['auto'] / best['shared']:.3f}, CPU time ratio "
                  f"{best_cpu['auto'] / best_cpu['shared']:.3f} (auto scored as {used['auto']})", flush=True)
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    res = {"command": "python " + shlex.join(command), "args": vars(args), "machine": machine("cpu"), "rows": rows,
           "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "mode_overhead_fewshot" if args.fewshot else "mode_overhead"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# `--mode auto` vs `--mode shared` (self-check cost)", "",
             f"Random-init Llama d_model={args.d_model} n_layers={args.n_layers}, fiveshot_facts items"
             + (" (500-token contexts opening with one fixed few-shot block: rows shared by items)" if args.fewshot
                else "") + ", float32, "
             "CPU; each run starts with an empty self-check cache (a fresh process).", "",
             "| workload | shared s | auto s | auto / shared | CPU s shared | CPU s auto | auto / shared (CPU) | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workload']} | {r['shared_s']:.2f} | {r['auto_s']:.2f} | **{r['auto_over_shared']:.3f}** | "
              f"{r['shared_cpu_s']:.2f} | {r['auto_cpu_s']:.2f} | **{r['auto_over_shared_cpu']:.3f}** | "
              f"{r['loadavg']:.1f} |" for r in rows]
    lines += ["", f"Best of {args.repeats} alternating runs per mode, wall and process CPU seconds (on a loaded "
              "machine CPU time is the steadier measure of the work each mode does).", "",
              *provenance_lines(res, ". The load column is the 1-min load average after each workload."), ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {out / stem}.json and {out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
