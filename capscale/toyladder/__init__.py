"""``capscale toy-ladder``: a real model ladder trained on CPU from a synthetic, seeded corpus.

Output folder (``--out``, default ``runs/toy-<preset>``)::

    plan.json            preset + seed the folder belongs to (a resumed run must match)
    corpus/tokens.npy    packed training stream (uint16), corpus/sample.txt for reading
    tokenizer/           byte-level BPE trained on the corpus
    tasks/*.jsonl        the toy tasks (same world as the corpus)
    s1/step250/ ...      HF checkpoints (model + tokenizer), one folder per saved step
    ladder.yaml          spec for ``capscale ladder-eval``

Re-running the same command resumes: finished runs are skipped, an interrupted run restarts
from its latest checkpoint. See README.md in this folder for the design.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from capscale.errors import CapscaleError
from capscale.toyladder.corpus import RECIPES
from capscale.toyladder.ladder import PRESETS, format_table, plan, spec_dict, write_spec

FAMILY = "toy"
LAYOUT_VERSION = 2


def family_for(recipe: str) -> str:
    """Recipe A keeps the original family name ``toy``; recipe B is ``toy-b`` (models toy-b-s1, ...)."""
    return FAMILY if recipe == "A" else f"{FAMILY}-{recipe.lower()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="smoke: whole ladder in under a minute (tests); full: the real ladder, under 30 min on 2 cores")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="A",
                        help="document mix of the corpus (A: the original; B: more arithmetic and proverbs, "
                             "fewer facts and copies); same sizes, tokenizer and tasks")
    parser.add_argument("--out", help="output folder (default runs/toy-<preset>, runs/toy-<preset>-b for "
                                      "recipe B); re-run to resume")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, corpus, init and data order")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--runs", help="comma-separated subset of runs to train (e.g. s1,s2); default all")
    parser.add_argument("--tasks-out", help="also write the toy task files here (e.g. evals/tasks/toy)")
    parser.add_argument("--ladder-out", help="also write a ladder spec here, paths relative to its folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_plan_file(out: Path, preset: str, seed: int, recipe: str = "A") -> None:
    """Refuse to mix two presets, seeds or recipes in one folder: resumed checkpoints would be wrong."""
    want = {"preset": preset, "seed": seed, "layout": LAYOUT_VERSION}
    if recipe != "A":  # recipe A folders written before recipes existed stay valid
        want["recipe"] = recipe
    path = out / "plan.json"
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            raise CapscaleError(f"{out} holds a toy ladder with {have}, not {want}; pick another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want))


def corpus_and_tokenizer(out: Path, world, preset, seed: int, progress: bool, recipe: str = "A"):
    """Build (or reload) the tokenizer and the packed token stream; both written atomically.

    The tokenizer is always trained on recipe A's first documents, so every recipe shares one
    vocabulary (as data-recipe comparisons such as DataDecide hold the tokenizer fixed)."""
    import numpy as np
    from transformers import AutoTokenizer

    from capscale.toyladder.corpus import documents
    from capscale.toyladder.tokenizer import pack, train_tokenizer

    tok_dir, tokens_path = out / "tokenizer", out / "corpus" / "tokens.npy"
    if tok_dir.exists() and tokens_path.exists():
        return AutoTokenizer.from_pretrained(tok_dir), np.load(tokens_path)
    t0 = time.perf_counter()
    docs = documents(world, seed, preset.corpus_docs, recipe)
    tokenizer_docs = docs if recipe == "A" else documents(world, seed, preset.tokenizer_docs)
    tokenizer = train_tokenizer(tokenizer_docs[: preset.tokenizer_docs], preset.vocab_size, model_max_length=128)
    stream = pack(tokenizer, docs)
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    (out / "corpus" / "sample.txt").write_text("\n\n".join(docs[:300]) + "\n")
    tmp = tokens_path.with_name(".tokens.tmp.npy")
    np.save(tmp, stream)
    os.replace(tmp, tokens_path)
    tmp_dir = out / ".tokenizer.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.replace(tmp_dir, tok_dir)
    if progress:
        print(f"corpus: {len(docs):,} documents, {len(stream):,} tokens, vocab {len(tokenizer)} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    return AutoTokenizer.from_pretrained(tok_dir), stream


def relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def write_specs(out: Path, task_paths: dict, metas: list[dict], ladder_out: str | None,
                extra_task_paths: dict | None = None, family: str = FAMILY) -> Path:
    """``out/ladder.yaml`` (self-contained: out/tasks) and optionally a spec at ``ladder_out``
    that points at ``extra_task_paths`` (e.g. the shipped evals/tasks/toy) when given."""
    from capscale.toyladder.tasks import GEN_TASKS, MC_TASKS

    def spec_for(where: Path, tasks_by_name: dict) -> dict:
        tasks = [relative(tasks_by_name[n], where) for n in MC_TASKS]
        gen = [relative(tasks_by_name[n], where) for n in GEN_TASKS]
        moved = [dict(m, path=relative(out / m["path"], where)) for m in metas]
        return spec_dict(family, tasks, gen, moved)

    spec_path = out / "ladder.yaml"
    write_spec(spec_path, spec_for(out, task_paths))
    if ladder_out:
        extra = Path(ladder_out)
        extra.parent.mkdir(parents=True, exist_ok=True)
        write_spec(extra, spec_for(extra.parent, extra_task_paths or task_paths))
    return spec_path


def passive_openmp_waits() -> None:
    """Spinning OpenMP workers make 2 threads 3-5x slower than 1 when the cores are shared with other
    processes; passive waiting removes that. libgomp reads the variable once, when torch is first
    imported, so this runs at the start of a training run (never at import: only training wants it)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(args: argparse.Namespace) -> int:
    """Train the whole ladder (resuming what exists) and write tasks, checkpoints and the spec."""
    passive_openmp_waits()
    import torch

    from capscale.toyladder.tasks import write_tasks
    from capscale.toyladder.train import completed_run, train_run
    from capscale.toyladder.world import make_world

    preset = PRESETS[args.preset]
    recipe = getattr(args, "recipe", "A") or "A"
    family = family_for(recipe)
    out = Path(args.out or f"runs/toy-{preset.name}" + ("" if recipe == "A" else f"-{recipe.lower()}"))
    progress = not getattr(args, "no_progress", False)
    torch.set_num_threads(max(1, int(args.threads)))
    t_start = time.perf_counter()
    check_plan_file(out, preset.name, args.seed, recipe)
    world = make_world(args.seed)
    task_paths = write_tasks(world, out / "tasks")
    shipped_paths = write_tasks(world, args.tasks_out) if getattr(args, "tasks_out", None) else None
    tokenizer, stream = corpus_and_tokenizer(out, world, preset, args.seed, progress, recipe)
    configs = plan(preset, args.seed)
    wanted = set(args.runs.split(",")) if getattr(args, "runs", None) else None
    if wanted and not wanted <= {c.name for c in configs}:
        raise CapscaleError(f"--runs {args.runs}: this preset has runs {', '.join(c.name for c in configs)}")
    metas, finals, timings = [], [], {}
    for cfg in configs:
        if wanted is None or cfg.name in wanted:
            t0, c0 = time.perf_counter(), time.process_time()
            train_run(cfg, stream, tokenizer, out / cfg.name, family=family, progress=progress)
            timings[cfg.name] = {"wall_s": round(time.perf_counter() - t0, 1),
                                 "cpu_s": round(time.process_time() - c0, 1)}
        run_metas = completed_run(out / cfg.name, cfg)  # also runs finished by an earlier --runs call
        metas += run_metas
        finals += run_metas[-1:]
        if run_metas:
            write_specs(out, task_paths, metas, getattr(args, "ladder_out", None), shipped_paths, family)
    # cpu_s (summed over threads) next to wall_s tells how much a busy machine slowed the run down
    (out / "timings.json").write_text(json.dumps({
        "runs": timings, "total_wall_s": round(time.perf_counter() - t_start, 1),
        "total_cpu_s": round(time.process_time(), 1), "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }, indent=1))
    print(format_table(finals))
    print(f"ladder spec: {out / 'ladder.yaml'}  ({len(metas)} checkpoints, {time.perf_counter() - t_start:.0f}s)")
    return 0
