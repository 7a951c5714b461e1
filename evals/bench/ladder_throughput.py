"""A whole ladder: (checkpoint, task) pairs per second, capscale serial vs capscale on Ray vs lm-eval looping.

Why: evaluating a ladder is many checkpoints x many tasks. lm-eval has no multi-checkpoint mode,
so teams run one ``lm_eval`` command per checkpoint; capscale runs the whole ladder in one command,
serially or on Ray workers (one checkpoint per worker at a time). This script times the three as a
user runs them, each a fresh command line (process start, imports and model loading included):

* ``capscale ladder-eval SPEC --limit L`` (one process, checkpoints one after another);
* ``capscale ladder-eval SPEC --limit L --ray --ray-workers W`` with a local Ray cluster started by the
  command itself, and with ``--ray auto`` on a cluster started beforehand (``ray start --head``),
  as on a real cluster where it already runs;
* ``lm_eval --model hf --model_args pretrained=CKPT --tasks ... --limit L`` once per checkpoint, in a loop.

On the toy ladder's smoke preset (10 checkpoints x 4 multiple-choice tasks, built first unless
``--ladder`` is given). Before timing anything it checks that the Ray store equals the serial one.

    python evals/bench/ladder_throughput.py                  # -> results/bench/ladder_throughput.{json,md}
    python evals/bench/ladder_throughput.py --limit 8 --out /tmp/lt    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchkit import machine, provenance_lines

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", help="ladder spec (default: build the toy smoke ladder in a temporary folder)")
    ap.add_argument("--limit", type=int, default=64, help="items per task (default 64)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument("--lm-eval-checkpoints", type=int, metavar="K",
                    help="time lm-eval on the first K checkpoints only (pairs/s over their pairs; default all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    return ap.parse_args(argv)


def timed_command(cmd: list[str], cwd: Path | None = None) -> float:
    """Wall seconds of one command line; a failure stops the benchmark with its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def capscale_cmd(spec: Path, out: Path, limit: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capscale.cli", "ladder-eval", str(spec), "--out", str(out), "--limit", str(limit),
            "--no-progress", *extra]


def same_store(a: Path, b: Path) -> bool:
    key = ["checkpoint", "task", "item", "choice"]
    x, y = (pd.read_parquet(p / "choices").sort_values(key).reset_index(drop=True) for p in (a, b))
    return len(x) == len(y) and x.drop(columns="logprob").equals(y.drop(columns="logprob")) and bool(
        ((x["logprob"] - y["logprob"]).abs() <= 1e-6 * x["logprob"].abs()).all())


def lm_eval_loop(spec: Path, tmp: Path, limit: int, batch_size: int, n_checkpoints: int | None = None) -> float:
    """One lm_eval command per checkpoint of the spec (the first ``n_checkpoints``), on the spec's MC tasks."""
    from capscale.toyladder.tasks import write_lm_eval_yamls

    data = yaml.safe_load(spec.read_text())
    task_dir = (spec.parent / data["tasks"][0]).resolve().parent
    yamls = write_lm_eval_yamls(task_dir, tmp / "lm_eval_yamls")
    names = ",".join(p.stem for p in yamls)
    total = 0.0
    for entry in data["checkpoints"][:n_checkpoints]:
        path = (spec.parent / entry["path"]).resolve()
        total += timed_command(["lm_eval", "--model", "hf", "--model_args", f"pretrained={path},dtype=float32",
                                "--tasks", names, "--include_path", str(tmp / "lm_eval_yamls"), "--limit", str(limit),
                                "--batch_size", str(batch_size), "--device", "cpu",
                                "--output_path", str(tmp / "lm_eval_out")], cwd=tmp)
    return total


def main(argv=None) -> int:
    args = parse_args(argv)
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capscale-ladder-") as tmp_name:
        tmp = Path(tmp_name)
        if args.ladder:
            spec = Path(args.ladder).resolve()
        else:
            timed_command([sys.executable, "-m", "capscale.cli", "toy-ladder", "--preset", "smoke", "--out",
                           str(tmp / "smoke"), "--no-progress"])
            spec = tmp / "smoke" / "ladder.yaml"
        data = yaml.safe_load(spec.read_text())
        pairs = len(data["checkpoints"]) * len(data["tasks"])
        rows = []

        def add(name: str, seconds: float, n_pairs: int = pairs) -> None:
            rows.append({"runner": name, "seconds": seconds, "pairs": n_pairs, "pairs_per_s": n_pairs / seconds,
                         "loadavg": os.getloadavg()[0]})
            print(f"{name:55s} {seconds:8.1f} s  {n_pairs / seconds:6.3f} pairs/s", flush=True)

        add("capscale ladder-eval (serial, one process)", timed_command(capscale_cmd(spec, tmp / "serial", args.limit)))
        add(f"capscale ladder-eval --ray (local cluster started by the command, {args.workers} workers)",
            timed_command(capscale_cmd(spec, tmp / "ray", args.limit, "--ray", "--ray-workers", str(args.workers))))
        assert same_store(tmp / "serial", tmp / "ray"), "the Ray store differs from the serial one"
        ray_cli = str(Path(sys.executable).with_name("ray"))
        # `ray stop` stops every Ray process of this user: never start (and stop) a cluster beside another one
        if subprocess.run([ray_cli, "status"], env=ENV, capture_output=True).returncode == 0:
            print("a Ray cluster already runs on this machine: the 'running cluster' row is skipped "
                  "(stopping ours would stop it too)", flush=True)
        else:
            subprocess.run([ray_cli, "start", "--head", "--num-cpus", str(args.workers), "--include-dashboard",
                            "false"], env=ENV, check=True, capture_output=True)
            try:
                add(f"capscale ladder-eval --ray auto (running cluster, {args.workers} workers)",
                    timed_command(capscale_cmd(spec, tmp / "ray-auto", args.limit, "--ray", "auto", "--ray-workers",
                                               str(args.workers))))
            finally:
                subprocess.run([ray_cli, "stop", "--force"], env=ENV, capture_output=True)
            assert same_store(tmp / "serial", tmp / "ray-auto")
        if not args.skip_lm_eval:
            k = min(args.lm_eval_checkpoints or len(data["checkpoints"]), len(data["checkpoints"]))
            add(f"lm_eval once per checkpoint (batch size {args.batch_size}; {k} checkpoints)",
                lm_eval_loop(spec, tmp, args.limit, args.batch_size, k), k * len(data["tasks"]))
        shutil.rmtree(tmp / "lm_eval_out", ignore_errors=True)
    command = [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else list(argv))
    res = {"command": "python " + shlex.join(command), "args": vars(args), "machine": machine("cpu"), "rows": rows,
           "checkpoints": len(data["checkpoints"]), "tasks": len(data["tasks"]),
           "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0]}
    write_report(Path(args.out), res)
    return 0


def write_report(out: Path, res: dict) -> None:
    """ladder_throughput.{json,md} from the measured rows."""
    args = argparse.Namespace(**res["args"])
    pairs = res["checkpoints"] * res["tasks"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder_throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# Ladder throughput: capscale serial vs Ray vs lm-eval per checkpoint", "",
             f"Toy smoke ladder: {res['checkpoints']} checkpoints x {res['tasks']} multiple-choice tasks = {pairs} "
             f"pairs, {args.limit} items per task, float32 on CPU. Each runner is timed as fresh command lines "
             "(process start, imports and model loading included). The Ray and serial stores were checked equal.",
             "", "| runner | pairs | wall s | pairs/s | load |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['runner']} | {r['pairs']} | {r['seconds']:.1f} | **{r['pairs_per_s']:.3f}** | "
              + ("—" if r["loadavg"] is None else f"{r['loadavg']:.1f}") + " |" for r in res["rows"]]
    for note in res.get("notes", []):
        lines += ["", note]
    lines += ["", *provenance_lines(res, ". The load column is the 1-min load average after each runner."), ""]
    (out / "ladder_throughput.md").write_text("\n".join(lines))
    print(f"wrote {out / 'ladder_throughput.json'} and {out / 'ladder_throughput.md'}")


if __name__ == "__main__":
    sys.exit(main())
