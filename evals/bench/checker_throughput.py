"""Python-check throughput: distinct completions judged per second by the sandboxed checker.

Why: every distinct completion of a ``python`` item costs one sandboxed run, and PassUntil sampling of a
code task judges thousands of them; a stronger sandbox must not make sampling impractical (issue 13:
keep it within 2x of the unsandboxed-by-namespaces checker, ~13 samples/s).

Workload (what ``capscale sample`` does after a round): one HumanEval-style item (``add(a, b)`` with a
two-assert ``check``), ``--completions`` distinct completions (half correct, a quarter wrong, a quarter
syntax errors, each made distinct by a comment), judged by ``Checker(item).check_many(completions)``
with its default workers; a fresh Checker per repeat, so nothing comes from the cache. samples/s =
completions / wall seconds; the best and median of ``--repeats`` runs are reported, and the verdicts
are checked against the known answers. Before/after are best measured back to back (the CPU may be
shared with other jobs; their load is recorded).

Results of several code versions go into one file under a ``--label`` each (e.g. ``before`` measured
with ``PYTHONPATH`` pointing at a checkout of the old code, ``after`` on this one):

    python evals/bench/checker_throughput.py --label after
    PYTHONPATH=/tmp/old-checkout python evals/bench/checker_throughput.py --label before
    python evals/bench/checker_throughput.py --completions 8 --repeats 1 --out /tmp/cbench   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from benchkit import machine, provenance_lines, repeat_count, timed

import capscale
from capscale.scoring.checkers import Checker
from capscale.scoring.sandbox import sandbox_layers

ROOT = Path(__file__).resolve().parents[2]
PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n"


def workload(n: int) -> tuple[list[str], list[bool]]:
    """Distinct completions and their true verdicts: correct, wrong, correct, syntax error, ..."""
    kinds = [("    return a + b  # {}\n", True), ("    return a - b  # {}\n", False),
             ("    return b + a  # {}\n", True), ("    return (a +  # {}\n", False)]
    pairs = [(kinds[i % 4][0].format(i), kinds[i % 4][1]) for i in range(n)]
    return [c for c, _ in pairs], [v for _, v in pairs]


def measure(n: int, repeats: int) -> dict:
    item = SimpleNamespace(id="add", prompt=PROMPT, answer="", check="python", tests=TESTS)
    completions, truth = workload(n)
    runs = []
    for _ in range(repeats):
        checker = Checker(item)
        verdicts, stats = timed(lambda: checker.check_many(completions), "cpu")
        if verdicts != truth:
            wrong = [c for c, v, t in zip(completions, verdicts, truth) if v != t]
            raise SystemExit(f"wrong verdicts for {len(wrong)} completions, e.g. {wrong[0]!r}")
        runs.append({"seconds": stats["seconds"], "parent_cpu_seconds": stats["cpu_seconds"],
                     "workers": checker.workers})
    rates = [n / r["seconds"] for r in runs]
    return {"completions": n, "repeats": runs, "samples_per_s_best": max(rates),
            "samples_per_s_median": statistics.median(rates)}


def code_version() -> str:
    """The commit of the capscale that was measured (its folder may be a plain export: then 'unknown')."""
    folder = Path(capscale.__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def capscale_folder() -> str:
    folder = Path(capscale.__file__).resolve().parents[1]
    return "." if folder == ROOT else str(folder)


def write_markdown(res: dict, path: Path) -> None:
    lines = ["# Python-check throughput (sandboxed checker)", "",
             "Workload: one HumanEval-style item (`add(a, b)`, two asserts), distinct completions (half correct, a "
             "quarter wrong, a quarter syntax errors), judged by `Checker(item).check_many` with its default "
             "workers, a fresh Checker per repeat (no cache hits). samples/s = completions / wall seconds.", "",
             "| label | code | sandbox layers | completions x repeats | samples/s (best) | samples/s (median) |",
             "|---|---|---|---:|---:|---:|"]
    for label, run in res["runs"].items():
        lines.append(f"| {label} | {run['capscale_path']} @ {run['code_version']} | {', '.join(run['layers'])} | "
                     f"{run['completions']} x {len(run['repeats'])} | {run['samples_per_s_best']:.1f} | "
                     f"{run['samples_per_s_median']:.1f} |")
    if {"before", "after"} <= set(res["runs"]):
        ratio = res["runs"]["after"]["samples_per_s_median"] / res["runs"]["before"]["samples_per_s_median"]
        lines += ["", f"**after / before: {ratio:.2f}x** (median samples/s; the target is >= 0.5x)."]
    lines += ["", "Each label's own command and load:", ""]
    for label, run in res["runs"].items():
        lines.append(f"- {label}: `{run['command']}`, 1-min load average before/after "
                     f"{run['loadavg_before']:.2f}/{run['loadavg_after']:.2f}")
    lines += ["", *provenance_lines(res, ". The CPU is shared with other jobs: wall times are noisy; compare "
                                         "labels measured back to back.")]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=64, help="distinct completions per repeat (default 64)")
    ap.add_argument("--repeats", type=repeat_count, default=3, help="timed repeats (default 3)")
    ap.add_argument("--label", default="after", help="name of this measurement in the results (default after)")
    ap.add_argument("--code-version", help="what to record as the measured commit (default: git HEAD of capscale's folder)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="folder for checker_throughput.{json,md}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "checker_throughput.json"
    res = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    layers = list(sandbox_layers())
    loadavg_before = os.getloadavg()[0]
    run = measure(args.completions, args.repeats)
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    pythonpath = os.environ.get("PYTHONPATH")
    run |= {"layers": layers, "code_version": args.code_version or code_version(),
            "capscale_path": capscale_folder(),
            "command": (f"PYTHONPATH={pythonpath} " if pythonpath else "") + "python " + shlex.join(command),
            "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0]}
    res["runs"][args.label] = run
    res |= {"command": run["command"], "machine": machine("cpu"), "loadavg_before": run["loadavg_before"],
            "loadavg_after": run["loadavg_after"]}
    path.write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, out / "checker_throughput.md")
    print(f"{args.label}: {run['samples_per_s_median']:.1f} samples/s median ({run['samples_per_s_best']:.1f} best), "
          f"layers {layers}")


if __name__ == "__main__":
    main()
