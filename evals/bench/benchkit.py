"""What every benchmark here needs: timing that counts CPU time too, and a record of the machine.

Imported by the scripts next to it (``python evals/bench/<script>.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch


def repeat_count(text: str) -> int:
    """argparse type of ``--repeats``: a count of timed runs, at least 1 (0 would leave nothing to report)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 run, got {n}")
    return n


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()



def timed(fn, device: str) -> tuple[object, dict]:
    """Run ``fn()`` once; wall and process-CPU seconds (CPU time shows how much other jobs stole)."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    stats = {"seconds": time.perf_counter() - w0, "cpu_seconds": time.process_time() - c0}
    if device == "cuda":
        stats["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out, stats



def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"



def tiny_op_microseconds() -> float:
    """Median time of a tiny matmul at the chosen thread count. Microseconds on a quiet machine; when
    another job holds a core, every multi-threaded op waits for the descheduled thread (we saw
    ~16 ms instead of ~10 us with 2 threads on a busy 2-core box) and the benchmark then counts
    kernel launches, not work: rerun on a quiet machine or with --threads 1."""
    x, w = torch.randn(8, 64), torch.randn(256, 64)
    times = []
    for _ in range(21):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e6



def machine(device: str, with_tiny_op: bool = False) -> dict:
    import lm_eval
    import transformers

    info = {"tiny_matmul_us": tiny_op_microseconds()} if with_tiny_op else {}
    info |= {"cpu": cpu_model(), "cpu_cores_visible": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "lm_eval": getattr(lm_eval, "__version__", "unknown"), "platform": platform.platform()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance_lines(res: dict, note: str) -> list[str]:
    """The Markdown tail every benchmark report ends with: the exact command and the machine it ran on
    (``res`` holds command, machine, loadavg_before/after; ``note`` continues the machine sentence)."""
    m = res["machine"]
    return [
        "Command (from the repository root):",
        "",
        "```",
        res["command"],
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores_visible']} cores visible, torch threads {m['torch_threads']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, lm-eval {m['lm_eval']}; "
        f"1-min load average before/after {res['loadavg_before']:.2f}/{res['loadavg_after']:.2f}" + note,
        *shared_machine_lines(res),
    ]


def shared_machine_lines(res: dict) -> list[str]:
    """A plain warning when other jobs held the cores: load above the core count slows both sides of a
    comparison, and multi-threaded ops the most (see tiny_op_microseconds), so ratios are noisier."""
    cores = res["machine"]["cpu_cores_visible"] or 1
    load = max(res["loadavg_before"], res["loadavg_after"])
    if load <= cores:
        return []
    return ["", f"**Shared machine**: other jobs ran at the same time (1-min load up to {load:.1f} on "
                f"{cores} cores), so wall times are longer and ratios noisier than on a quiet machine."]


def choice_texts(items) -> list[str]:
    """Every context and every scored continuation of multiple-choice items: what a benchmark's tokenizer
    is trained on, so token counts are realistic without a download."""
    return [it.context for it in items] + [it.continuation(j) for it in items for j in range(len(it.choices))]
