"""Shared fixtures: real tiny checkpoints (tokenizer trained here) and real task files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = (
    "the a cat dog sat on mat red blue green big small runs jumps river tree house apple stone "
    "seven eight nine one two three plus minus equals is was under over near far"
).split()


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def write_mc_task(path: Path, n_items: int = 24, seed: int = 0, long_every: int = 0, long_words: int = 120) -> Path:
    """A JSONL multiple-choice task; every ``long_every``-th context is long enough to need truncation."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n_items):
            n_ctx = long_words if long_every and i % long_every == 0 else rng.randint(3, 14)
            ctx = random_text(rng, n_ctx)
            if i % 5 == 0:
                ctx += " "  # trailing space: lm-eval moves it into the continuation
            n_choices = rng.choice([2, 3, 4])
            choices = [random_text(rng, rng.randint(1, 4)) for _ in range(n_choices)]
            f.write(json.dumps({"id": f"q{i}", "context": ctx, "choices": choices, "gold": rng.randrange(n_choices)}) + "\n")
    return path


def write_fewshot_task(path: Path, n_items: int = 16, seed: int = 3, shot_words: int = 7) -> Path:
    """A JSONL task whose contexts open with the same fixed "few-shot" block (as MMLU's first_n
    exemplars): the case where items share rows. Every 5th item also ends its context with a space."""
    rng = random.Random(seed)
    shots = random_text(rng, shot_words) + " equals one\n" + random_text(rng, 2) + " equals two\n"
    with path.open("w") as f:
        for i in range(n_items):
            ctx = shots + random_text(rng, rng.randint(1, 6)) + " equals" + (" " if i % 5 == 0 else "")
            n_choices = rng.choice([2, 3, 4])
            choices = [random_text(rng, rng.randint(1, 3)) for _ in range(n_choices)]
            f.write(json.dumps({"id": f"s{i}", "context": ctx, "choices": choices, "gold": rng.randrange(n_choices)}) + "\n")
    return path


def write_lm_eval_yaml(task_dir: Path, name: str, data_file: Path) -> Path:
    """The 4-line-style lm-eval YAML that runs a capscale JSONL task unchanged."""
    from capscale.tasks.jsonl import lm_eval_yaml

    task_dir.mkdir(parents=True, exist_ok=True)
    path = task_dir / f"{name}.yaml"
    path.write_text(lm_eval_yaml(name, str(data_file)))
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from capscale.tinymodels import train_tokenizer

    rng = random.Random(0)
    return train_tokenizer([random_text(rng, 40) for _ in range(400)], vocab_size=300)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Random-init Llama and GPT-2 checkpoints; both have a 64-token window so truncation is exercised."""
    from capscale.tinymodels import save_random_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {
        "llama": save_random_checkpoint(root / "llama", tokenizer, arch="llama", d_model=32, max_length=64, seed=1),
        "gpt2": save_random_checkpoint(root / "gpt2", tokenizer, arch="gpt2", d_model=32, max_length=64, seed=2),
    }


@pytest.fixture(scope="session")
def mc_task(tmp_path_factory) -> Path:
    return write_mc_task(tmp_path_factory.mktemp("task") / "toymc.jsonl", n_items=24, long_every=6)


@pytest.fixture(scope="session")
def fewshot_task(tmp_path_factory) -> Path:
    return write_fewshot_task(tmp_path_factory.mktemp("fewshot") / "toyshots.jsonl")


@pytest.fixture(scope="session")
def smoke_ladder(tmp_path_factory) -> Path:
    """The toy ladder's smoke preset (10 real checkpoints, ~25 s), built once per test session."""
    import argparse

    from capscale.toyladder import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path_factory.mktemp("toy") / "smoke"
    assert run(parser.parse_args(["--preset", "smoke", "--out", str(out), "--no-progress"])) == 0
    return out
