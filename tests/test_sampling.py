"""PassUntil sampling: same samples on any batch size, a killed run resumes with identical counts,
greedy equals transformers' greedy decoding, and the sampled pass rate agrees with the exact one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.errors import StoreError
from capscale.models import load_checkpoint
from capscale.sampling import PairState, SamplingConfig, SamplingRun, sample_pair, sampling_fingerprint
from capscale.estimators import item_interval
from capscale.store import ResultsStore
from capscale.tasks.generative import load_gen_jsonl


def write_gen_task(path: Path, items: list[dict]) -> Path:
    with path.open("w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    return path


@pytest.fixture(scope="module")
def llama(checkpoints):
    return load_checkpoint(str(checkpoints["llama"]))


@pytest.fixture(scope="module")
def gen_task(tmp_path_factory):
    """Answers a random-init model hits with probability ~1e-2: single tokens within a 1-token budget,
    and empty answers that are correct when the first token starts with the stop string 'a'."""
    items = [{"id": f"w{i}", "prompt": p, "answer": a, "check": "exact", "stop": [], "max_new_tokens": 1}
             for i, (p, a) in enumerate([("the cat sat on", "mat"), ("one two", "three"), ("red blue", "green")])]
    items += [{"id": f"e{i}", "prompt": p, "answer": "", "check": "exact", "stop": ["a"], "max_new_tokens": 3}
              for i, p in enumerate(["the dog", "seven eight nine"])]
    items += [{"id": "long", "prompt": "apple stone", "answer": "river tree", "check": "exact", "stop": ["."],
               "max_new_tokens": 4}]
    return load_gen_jsonl(write_gen_task(tmp_path_factory.mktemp("gen") / "gen.jsonl", items))


def run_state(loaded, task, **kw) -> PairState:
    config = SamplingConfig(**{"until": 2, "max_samples": 40, "seed": 3, **kw})
    state = PairState.fresh(sampling_fingerprint(task, config, loaded.dtype), len(task.items))
    return SamplingRun(loaded, task, config, state, progress=False).run()


def test_same_samples_on_any_batch_size(llama, gen_task):
    states = [run_state(llama, gen_task, batch=b, round_size=r, max_samples=24) for b, r in ((1, 5), (7, 13), (64, None))]
    for other in states[1:]:
        assert other.n_drawn == states[0].n_drawn
        assert other.n_correct == states[0].n_correct
        assert other.completions == states[0].completions
        assert other.greedy_text == states[0].greedy_text
    assert sum(len(c) for c in states[0].completions) > 15  # genuinely random completions, not one string


def test_another_seed_gives_other_samples(llama, gen_task):
    assert run_state(llama, gen_task, seed=3).completions != run_state(llama, gen_task, seed=4).completions


def test_counts_stop_at_the_kth_success(llama, gen_task):
    state = run_state(llama, gen_task, until=2, max_samples=400)
    for n, c, comp in zip(state.n_drawn, state.n_correct, state.completions):
        assert c == 2 or n == 400
        assert sum(count for count, _ in comp.values()) == n
        assert sum(count for count, ok in comp.values() if ok) == c


def test_greedy_equals_transformers_generate(llama, gen_task):
    import torch

    state = run_state(llama, gen_task, max_samples=0)
    tok = llama.tokenizer
    for item, text in zip(gen_task.items, state.greedy_text):
        ids = torch.tensor([tok.encode(item.prompt, add_special_tokens=False)])
        out = llama.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=item.max_new_tokens, pad_token_id=tok.pad_token_id or 0)
        expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        for s in item.stop:
            expected = expected.split(s)[0]
        assert text == expected


def test_sampled_pass_rate_agrees_with_exact_probability(llama, gen_task):
    """The sampler's estimate must contain the exact probability (99% Jeffreys interval); answers the
    model cannot produce within max_new_tokens have exact probability 0 and are never sampled."""
    state = run_state(llama, gen_task, until=30, max_samples=6000, exact=True, batch=512)
    exact = np.array(state.exact_p, dtype=float)
    assert ((exact > 1e-3) & (exact < 0.5)).sum() >= 4
    assert all(c == 0 for p, c in zip(exact, state.n_correct) if p < 1e-9)
    lo, hi = item_interval(np.array(state.n_drawn), np.array(state.n_correct), level=0.99)
    zero = np.array(state.n_correct) == 0  # then only the upper bound says something
    inside = ((exact >= lo) | zero) & (exact <= hi)
    assert inside.all(), list(zip(exact, lo, hi))


class Interrupt(Exception):
    pass


def test_killed_run_resumes_with_identical_counts(llama, gen_task, tmp_path, monkeypatch):
    config = SamplingConfig(until=2, max_samples=150, seed=1, batch=32, round_size=64)
    monkeypatch.setattr("capscale.sampling.SAVE_EVERY_S", 0.0)  # save after every round
    reference = ResultsStore(tmp_path / "ref")
    sample_pair(llama, "ck", gen_task, reference, config, progress=False)

    store = ResultsStore(tmp_path / "resumed")
    saves = {"n": 0}
    original = SamplingRun.save_state

    def save_then_die(self):
        original(self)
        saves["n"] += 1
        if saves["n"] == 4:
            raise Interrupt

    monkeypatch.setattr(SamplingRun, "save_state", save_then_die)
    with pytest.raises(Interrupt):
        sample_pair(llama, "ck", gen_task, store, config, progress=False)
    assert store.progress_path("ck", gen_task.name).exists() and not store.has_samples("ck", gen_task.name)
    monkeypatch.setattr(SamplingRun, "save_state", original)
    result = sample_pair(llama, "ck", gen_task, store, config, progress=False)
    assert result.status == "resumed"
    assert not store.progress_path("ck", gen_task.name).exists()
    pd.testing.assert_frame_equal(store.read_samples(), reference.read_samples())
    pd.testing.assert_frame_equal(store.read_completions(), reference.read_completions())


def test_changed_settings_refuse_to_mix(llama, gen_task, tmp_path):
    store = ResultsStore(tmp_path / "s")
    sample_pair(llama, "ck", gen_task, store, SamplingConfig(until=1, max_samples=5), progress=False)
    assert sample_pair(llama, "ck", gen_task, store, SamplingConfig(until=1, max_samples=5, batch=3),
                       progress=False).status == "skipped"
    with pytest.raises(StoreError, match="other settings"):
        sample_pair(llama, "ck", gen_task, store, SamplingConfig(until=1, max_samples=6), progress=False)


def test_cli_sample_then_summary(checkpoints, gen_task, tmp_path, capsys):
    out = tmp_path / "store"
    args = ["sample", "--model", str(checkpoints["llama"]), "--name", "tiny", "--task", gen_task.source,
            "--out", str(out), "--until", "2", "--max-samples", "50", "--exact", "--no-progress"]
    assert main(args) == 0
    rows = pd.read_parquet(out / "samples")
    assert list(rows["item"]) == [it.id for it in gen_task.items]
    assert set(rows["stop_reason"]) <= {"until", "budget"}
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    assert main(["summary", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert {"pass_until", "pass_at_1", "greedy_acc", "exact_p"} <= set(table["metric"])
    assert (table.loc[table["metric"] == "pass_until", "value"] > 0).all()


def test_cli_sample_bad_input_exits_2(checkpoints, tmp_path, capsys):
    bad = write_gen_task(tmp_path / "bad.jsonl", [{"id": "x", "prompt": "a", "answer": "b", "check": "fuzzy"}])
    assert main(["sample", "--model", str(checkpoints["llama"]), "--task", str(bad), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["sample", "--model", str(checkpoints["llama"]), "--task", "arith_gen", "--out",
                 str(tmp_path / "o"), "--until", "0", "--no-progress"]) == 2
    assert "--until must be >= 1" in capsys.readouterr().err


def test_sampling_uses_no_deprecated_cache_api(llama, gen_task):
    """transformers 5.x warns that forward(past_key_values=...) goes in 5.40; the sampler passes the cache
    under the name the model's forward takes (cache, or past_key_values on 4.x), so nothing warns."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        state = run_state(llama, gen_task, max_samples=8)
    assert sum(state.n_drawn) > 0
