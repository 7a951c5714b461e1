"""The toy ladder: deterministic world/corpus/tasks, a real smoke-preset training run whose
checkpoints load with transformers, resume to identical weights, and feed ``capscale ladder-eval``."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from capscale.errors import CapscaleError
from capscale.toyladder import add_arguments, run
from capscale.toyladder.corpus import documents
from capscale.toyladder.tasks import GEN_TASKS, MC_TASKS, build_tasks, jsonl_text
from capscale.toyladder.world import make_world

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_corpus_is_deterministic_for_a_seed_and_differs_across_seeds():
    world = make_world(0)
    first = documents(world, 0, 300)
    assert first == documents(make_world(0), 0, 300)
    assert first != documents(world, 1, 300)
    assert documents(make_world(1), 1, 300) != documents(make_world(0), 1, 300)
    assert make_world(0).entities == make_world(0).entities != make_world(1).entities


def test_corpus_never_states_the_held_out_sums():
    world = make_world(0)
    sums = [line.split(" = ")[0] for doc in documents(world, 0, 3000) for line in doc.splitlines() if " = " in line]
    stated = {tuple(int(x) for x in s.split(" + ")) for s in sums}
    assert len(stated) > 1000
    assert not stated & set(world.heldout_sums)


def test_tasks_are_deterministic_and_well_formed():
    tasks = build_tasks(make_world(0))
    assert tasks == build_tasks(make_world(0))
    assert set(tasks) == set(MC_TASKS) | set(GEN_TASKS)
    for name in MC_TASKS:
        items = tasks[name]
        assert len({it["id"] for it in items}) == len(items)
        for it in items:
            assert len(set(it["choices"])) == len(it["choices"]) and 0 <= it["gold"] < len(it["choices"])
        golds = [it["gold"] for it in items]
        assert max(golds.count(g) for g in set(golds)) - min(golds.count(g) for g in set(golds)) <= 1
    for name in GEN_TASKS:
        assert all(it["check"] == "exact" and it["answer"] for it in tasks[name])


def test_shipped_toy_tasks_match_the_generator():
    shipped = REPO / "evals" / "tasks" / "toy"
    if not shipped.is_dir():
        pytest.skip("evals/tasks/toy not generated yet")
    for name, rows in build_tasks(make_world(0)).items():
        assert (shipped / f"{name}.jsonl").read_text(encoding="utf-8") == jsonl_text(rows), name


@pytest.fixture(scope="module")
def smoke(smoke_ladder):
    return smoke_ladder  # built once per session (conftest), shared with tests/test_scale.py


@pytest.mark.slow
def test_smoke_ladder_writes_a_loadable_spec(smoke):
    spec = yaml.safe_load((smoke / "ladder.yaml").read_text())
    assert spec["family"] == "toy"
    assert [Path(t).stem for t in spec["tasks"]] == list(MC_TASKS)
    ckpts = spec["checkpoints"]
    models = {c["model"] for c in ckpts}
    assert len(models) >= 5
    assert len({c["checkpoint"] for c in ckpts}) == len(ckpts)
    for c in ckpts:
        assert (smoke / c["path"] / "config.json").exists()
        assert c["flops"] == pytest.approx(6 * c["params"] * c["tokens"])
        assert c["params"] < c["params_total"]
    finals = {}
    for c in ckpts:
        finals[c["model"]] = c  # listed in step order
    sizes = [c["params"] for c in finals.values()]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


@pytest.mark.slow
def test_smoke_checkpoints_load_with_transformers(smoke):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capscale.models import count_params

    spec = yaml.safe_load((smoke / "ladder.yaml").read_text())
    for c in spec["checkpoints"][-2:]:
        path = smoke / c["path"]
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert count_params(model) == (c["params"], c["params_total"])
        ids = tok("Mimek lives in", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert torch.isfinite(logits).all()
        assert tok.decode(tok("12 + 34 = 46").input_ids) == "12 + 34 = 46"


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(smoke, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import capscale.toyladder.train as train

    spec = yaml.safe_load((smoke / "ladder.yaml").read_text())
    last = spec["checkpoints"][-1]
    run_name = last["path"].split("/")[0]
    copy = tmp_path / "smoke"
    shutil.copytree(smoke, copy)
    shutil.rmtree(copy / run_name)
    (copy / "ladder.yaml").unlink()

    real_save = train.save_checkpoint

    def save_then_die(model, tokenizer, optimizer, run_dir, meta):
        path = real_save(model, tokenizer, optimizer, run_dir, meta)
        if optimizer is not None and run_dir.name == run_name:
            raise KeyboardInterrupt  # killed right after an intermediate checkpoint
        return path

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(parse(["--preset", "smoke", "--out", str(copy), "--no-progress"]))
    monkeypatch.undo()
    partial = train.finished_steps(copy / run_name)
    assert len(partial) == 1 and (copy / run_name / f"step{partial[0]}" / train.OPTIMIZER_FILE).exists()

    assert run(parse(["--preset", "smoke", "--out", str(copy), "--no-progress"])) == 0
    want = load_file(smoke / last["path"] / "model.safetensors")
    got = load_file(copy / last["path"] / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch_equal(want[k], got[k]) for k in want)
    assert yaml.safe_load((copy / "ladder.yaml").read_text()) == spec
    assert not list((copy / run_name).rglob(train.OPTIMIZER_FILE))  # finished runs keep no optimizer state


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.slow
def test_ladder_eval_runs_on_the_smoke_spec(smoke, tmp_path):
    import pandas as pd

    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "capscale.cli", "ladder-eval", str(smoke / "ladder.yaml"),
           "--out", str(out), "--limit", "12", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = yaml.safe_load((smoke / "ladder.yaml").read_text())
    rows = pd.read_parquet(out / "choices")
    pairs = set(zip(rows["checkpoint"], rows["task"]))
    assert pairs == {(c["checkpoint"], t) for c in spec["checkpoints"] for t in MC_TASKS}


def test_plan_follows_the_token_budget_rule():
    from capscale.toyladder.ladder import FULL, plan, shape_params

    configs = plan(FULL, 0)
    assert len({c.name for c in configs if "x" not in c.name}) >= 5
    for cfg, shape in zip(configs, FULL.shapes):
        params, _ = shape_params(shape, FULL.vocab_size)
        tokens = cfg.steps * cfg.tokens_per_step
        assert shape.tokens_per_param * params <= tokens < shape.tokens_per_param * params + cfg.tokens_per_step
        assert cfg.checkpoint_steps[-1] == cfg.steps and len(cfg.checkpoint_steps) >= 4
    assert any(s.tokens_per_param > 20 for s in FULL.shapes)  # an over-trained run


def test_refuses_to_mix_presets_in_one_folder(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"preset": "full", "seed": 0, "layout": 2}))
    with pytest.raises(CapscaleError, match="pick another --out"):
        run(parse(["--preset", "smoke", "--out", str(tmp_path), "--no-progress"]))
