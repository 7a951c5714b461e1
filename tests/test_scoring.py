"""Scorer invariants: batch size and prefix sharing change speed, never the numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capscale.models import load_checkpoint
from capscale.scoring.loglik import score_items
from capscale.scoring.packing import batch_rows, group_by_context, pack_group
from capscale.scoring.encoding import encode_items
from capscale.tasks.jsonl import load_jsonl_task


@pytest.fixture(scope="module")
def scored(checkpoints, mc_task):
    loaded = load_checkpoint(str(checkpoints["llama"]))
    items = load_jsonl_task(mc_task).items
    return loaded, items


@pytest.mark.parametrize("budget", [16, 200, 100_000])
def test_numbers_do_not_depend_on_token_budget(scored, budget):
    loaded, items = scored
    ref = score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length, token_budget=4096,
                      progress=False)
    got = score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length, token_budget=budget,
                      progress=False)
    assert np.abs(ref.logprob - got.logprob).max() < 1e-5
    assert (ref.greedy == got.greedy).all()


def float32_tolerance(report) -> np.ndarray:
    """How far two float32 computations of the same choice logprob may differ, per choice.

    Each token's log-probability comes from float32 logits through a float32 log-softmax: another
    batch shape (packed vs one row per choice) changes the reduction order inside the matmuls and
    moves it by a few ulps of the larger of |log p_t| and the logit scale (~1). Sums are taken in
    float64 (``score_rows``), so they add no rounding of their own. Over the choice's tokens that is
    at most 4 * eps32 * sum_t max(|log p_t|, 1) <= 4 * eps32 * (|logprob| + n_tokens).
    (A float32 sum alone would round a -113 total to its 7.6e-6 spacing: what made an absolute 1e-5
    bound fail at 1.5e-5.)"""
    return 4 * np.finfo(np.float32).eps * (np.abs(report.logprob) + report.n_tokens)


def test_shared_prefix_equals_one_row_per_choice(scored):
    loaded, items = scored
    shared = score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length, mode="shared",
                         progress=False)
    alone = score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length, mode="independent",
                        progress=False)
    assert (np.abs(shared.logprob - alone.logprob) <= float32_tolerance(alone)).all()
    assert shared.tokens_in < alone.tokens_in, "sharing must feed fewer tokens"


class IgnoresCustomMask(torch.nn.Module):
    """A model whose attention ignores a 4-D mask and applies plain causal masking, as flash-attention-2
    and some remote-code models do: prefix sharing would let each choice see the previous choices."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False):
        return self.inner(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache)


def test_auto_mode_falls_back_when_the_mask_is_ignored(scored):
    loaded, items = scored
    broken = IgnoresCustomMask(loaded.model)
    kw = dict(max_length=loaded.max_length, progress=False)
    with pytest.warns(UserWarning, match="disagreed"):
        auto = score_items(broken, loaded.tokenizer, items, **kw)
    assert auto.mode == "independent" and auto.warnings
    exact = score_items(loaded.model, loaded.tokenizer, items, mode="independent", **kw)
    assert (np.abs(auto.logprob - exact.logprob) <= float32_tolerance(exact)).all()
    wrong = score_items(broken, loaded.tokenizer, items, mode="shared", **kw)
    assert np.abs(wrong.logprob - exact.logprob).max() > 1e-2, "the probe must have had a leak to find"


def test_self_check_runs_once_per_architecture(scored, checkpoints, monkeypatch):
    import capscale.scoring.loglik as loglik

    loaded, items = scored
    calls = []
    real = loglik.self_check
    monkeypatch.setattr(loglik, "self_check", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(loglik, "_SHARING_GAP", {})
    for _ in range(3):
        assert score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length,
                           progress=False).mode == "shared"
    other = load_checkpoint(str(checkpoints["llama"]))  # another copy of the weights: same architecture
    score_items(other.model, other.tokenizer, items[:5], max_length=other.max_length, progress=False)
    assert len(calls) == 1
    gpt2 = load_checkpoint(str(checkpoints["gpt2"]))
    score_items(gpt2.model, gpt2.tokenizer, items, max_length=gpt2.max_length, progress=False)
    assert len(calls) == 2, "another architecture is checked again"


def test_contexts_are_encoded_once_per_item_with_lm_evals_ids(scored):
    from capscale.scoring.encoding import effective_context, encode_pair, prefix_token_id
    from capscale.tasks.schema import MCItem

    loaded, items = scored
    tok = loaded.tokenizer
    items = items + [MCItem("empty", "", ("a cat", "dog"), 0), MCItem("spaces", "the cat  ", ("sat", "ran"), 1)]
    prefix_id = prefix_token_id(tok)
    got = encode_items(tok, items, loaded.max_length)
    want = []
    for it in items:
        for j in range(len(it.choices)):
            ctx, cont = encode_pair(tok, it.context, it.continuation(j), prefix_id, tok.decode([prefix_id]))
            want.append((tuple(effective_context(ctx, cont, loaded.max_length)[0]), tuple(cont)))
    assert [(r.context, r.continuation) for r in got] == want


def test_each_context_is_packed_once_with_all_its_choices(scored):
    loaded, items = scored
    requests = encode_items(loaded.tokenizer, items, loaded.max_length)
    groups = group_by_context(requests)
    untruncated = [g for g in groups if not g[0].truncated]
    assert all(len(g) == len(items[g[0].item_index].choices) for g in untruncated)
    row = pack_group(untruncated[0])
    ctx = len(untruncated[0][0].context)
    assert row.tokens[:ctx] == list(untruncated[0][0].context)
    assert len(row) == ctx + sum(len(r.continuation) - 1 for r in untruncated[0])
    # every choice's first token is predicted from the last context position
    assert all(rows[0] == ctx - 1 for rows in row.logit_rows)


def test_batches_respect_token_budget(scored):
    loaded, items = scored
    rows = [pack_group(g) for g in group_by_context(encode_items(loaded.tokenizer, items, loaded.max_length))]
    for batch in batch_rows(rows, 200):
        assert len(batch) == 1 or len(batch) * max(len(r) for r in batch) <= 200
    assert sum(len(b) for b in batch_rows(rows, 200)) == len(rows)
