"""The results store under many writers, killed writers and damaged files: nothing is lost, a rerun
repairs what is missing, and a corrupt file is named (and rewritten alone with --repair)."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import pandas as pd
import pytest

from capscale.cli import main
from capscale.store import ResultsStore, atomic_write_bytes, open_temporary, remove_if_abandoned
from tests.conftest import write_mc_task

ROUNDS = 3


def run_cli(argv: list[str], barrier) -> None:
    """One writer: the real CLI in its own process, released together with the others."""
    import torch

    torch.set_num_threads(1)
    barrier.wait(timeout=120)
    sys.exit(main(argv))


def writer_context(checkpoint: str):
    """Processes forked from a server that has imported everything a writer imports (transformers loads
    most of it lazily, at the first checkpoint load): each writer then starts in a second, not ten.
    A fork server, not a fork of this process: torch's thread pools are not fork-safe once used."""
    from capscale.models import load_checkpoint

    load_checkpoint(checkpoint)
    packages = ("capscale", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(sorted(m for m in sys.modules if m.split(".")[0] in packages))
    return ctx


def write_gen_task(path):
    items = [{"id": f"g{i}", "prompt": p, "answer": "cat", "check": "exact", "max_new_tokens": 2}
             for i, p in enumerate(["the dog sat on", "one two", "red blue"])]
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


def write_spec(path, checkpoint, task):
    path.write_text(
        f"family: toy\ntasks: [{task}]\ncheckpoints:\n"
        f"  - {{checkpoint: l0, path: {checkpoint}, params: 1000, tokens: 20000, step: 10}}\n"
        f"  - {{checkpoint: l1, path: {checkpoint}, params: 1000, tokens: 40000, step: 20}}\n"
    )
    return path


def test_concurrent_writers_lose_nothing(checkpoints, tmp_path):
    """Per round, six processes write one store at once: three evals of distinct checkpoints, a fourth
    eval of one of those names (the same pairs and manifest row twice), a ladder-eval of two more
    checkpoints and a sample run. Then every pair and every manifest row is there exactly once."""
    t1 = write_mc_task(tmp_path / "t1.jsonl", n_items=6, seed=1)
    t2 = write_mc_task(tmp_path / "t2.jsonl", n_items=6, seed=2)
    gen = write_gen_task(tmp_path / "g.jsonl")
    model = str(checkpoints["llama"])
    spec = write_spec(tmp_path / "ladder.yaml", model, t1)
    ctx = writer_context(model)
    for round_ in range(ROUNDS):
        out = str(tmp_path / f"out{round_}")
        common = ["--out", out, "--no-progress"]
        evals = [["eval", "--model", model, "--name", name, "--task", str(t1), "--task", str(t2), *common]
                 for name in ("w0", "w1", "w2", "w0")]
        jobs = evals + [["ladder-eval", str(spec), *common],
                        ["sample", "--model", model, "--name", "s0", "--task", str(gen), "--until", "1",
                         "--max-samples", "4", "--batch", "4", *common]]
        barrier = ctx.Barrier(len(jobs))
        procs = [ctx.Process(target=run_cli, args=(argv, barrier)) for argv in jobs]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0] * len(jobs), f"round {round_}"

        store = ResultsStore(out)
        manifest = store.read_manifest()
        assert sorted(manifest["checkpoint"]) == ["l0", "l1", "s0", "w0", "w1", "w2"], f"round {round_}"
        assert manifest.set_index("checkpoint").loc["l1", "tokens"] == 40000
        choices = store.read_choices()
        pairs = choices.groupby(["checkpoint", "task"]).size()
        assert sorted(pairs.index) == sorted([(w, t) for w in ("w0", "w1", "w2") for t in ("t1", "t2")]
                                             + [("l0", "t1"), ("l1", "t1")])
        assert not choices.duplicated(["checkpoint", "task", "item", "choice"]).any()
        assert len(store.read_samples()) == 3
        assert len(list(store.choices_dir.glob("*.parquet"))) == 8
        leftovers = [p for d in (store.root, store.choices_dir, store.runs_dir, store.samples_dir)
                     for p in d.glob(".*.tmp")]
        assert leftovers == []
        assert main(["summary", out]) == 0


def test_cleanup_never_takes_a_live_writers_temporary(tmp_path):
    """A killed run's temporaries are deleted; one that a writer still holds is left alone."""
    target = tmp_path / "choices" / "a--t.parquet"
    target.parent.mkdir()
    fd, tmp = open_temporary(target)
    assert tmp.exists() and not remove_if_abandoned(tmp)
    os.close(fd)  # the writer dies: the kernel releases its lock
    assert remove_if_abandoned(tmp) and not tmp.exists()
    abandoned = target.parent / ".a--t.parquet.xyz.tmp"  # left by an older capscale (no lock at all)
    abandoned.write_bytes(b"partial")
    assert ResultsStore(tmp_path).remove_stale_temporaries() == 1 and not abandoned.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_at_write_time(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


def eval_args(checkpoint, tasks, out):
    args = ["eval", "--model", str(checkpoint), "--out", str(out), "--no-progress"]
    for t in tasks:
        args += ["--task", str(t)]
    return args


def test_rerun_repairs_a_missing_manifest_row(checkpoints, tmp_path, capsys):
    tasks = [write_mc_task(tmp_path / f"k{i}.jsonl", n_items=5, seed=i) for i in range(2)]
    out = tmp_path / "store"
    args = eval_args(checkpoints["gpt2"], tasks, out)
    assert main(args) == 0
    pair_mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "choices").glob("*.parquet")}
    manifest = out / "checkpoints.csv"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")  # the row a lost update would drop
    assert main(["summary", str(out)]) == 2
    assert "no row in checkpoints.csv" in capsys.readouterr().err
    assert main(args) == 0
    assert ResultsStore(out).read_manifest()["checkpoint"].tolist() == ["gpt2"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "choices").glob("*.parquet")} == pair_mtimes
    assert main(["summary", str(out)]) == 0


def test_corrupt_pair_is_named_and_repair_rewrites_only_it(checkpoints, tmp_path, capsys):
    tasks = [write_mc_task(tmp_path / f"c{i}.jsonl", n_items=5, seed=i) for i in range(2)]
    out = tmp_path / "store"
    args = eval_args(checkpoints["llama"], tasks, out)
    assert main(args) == 0
    before = ResultsStore(out).read_choices().sort_values(["task", "item", "choice"]).reset_index(drop=True)
    bad, good = out / "choices" / "llama--c0.parquet", out / "choices" / "llama--c1.parquet"
    good_mtime = good.stat().st_mtime_ns
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a truncated copy, a full disk
    capsys.readouterr()
    for command in (["summary", str(out)], ["trends", str(out)],
                    ["backtest", str(out), "--holdout", "model == 'llama'"], args):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(bad) in err and "--repair" in err, command
    assert main(args + ["--repair"]) == 0
    assert good.stat().st_mtime_ns == good_mtime
    after = ResultsStore(out).read_choices().sort_values(["task", "item", "choice"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before)


def test_corrupt_samples_are_named_and_repaired(checkpoints, tmp_path, capsys):
    gen = write_gen_task(tmp_path / "g.jsonl")
    out = tmp_path / "store"
    args = ["sample", "--model", str(checkpoints["llama"]), "--task", str(gen), "--out", str(out), "--until", "1",
            "--max-samples", "6", "--batch", "8", "--no-progress"]
    assert main(args) == 0
    before = ResultsStore(out).read_completions()
    bad = out / "completions" / "llama--g.parquet"
    bad.write_bytes(b"not parquet at all")
    capsys.readouterr()
    assert main(["summary", str(out)]) == 0  # summary reads samples/, not completions/
    assert main(args) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(args + ["--repair"]) == 0
    pd.testing.assert_frame_equal(ResultsStore(out).read_completions(), before)
