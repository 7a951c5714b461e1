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


class IgnoresPositionIds(IgnoresCustomMask):
    """A model that honours the 4-D mask but numbers tokens 0..T-1 along the row (as a wrapper that drops
    position_ids would): every choice after the first sits at the wrong positions."""

    def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


@pytest.mark.parametrize("task", ["mc_task", "fewshot_task"])
@pytest.mark.parametrize("wrapper", [IgnoresCustomMask, IgnoresPositionIds])
def test_auto_mode_falls_back_when_the_mask_or_the_positions_are_ignored(scored, task, wrapper, request, monkeypatch):
    import capscale.scoring.loglik as loglik

    monkeypatch.setattr(loglik, "_SHARING_GAP", {})
    loaded, _ = scored
    items = load_jsonl_task(request.getfixturevalue(task)).items
    broken = wrapper(loaded.model)
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


def test_items_sharing_a_fewshot_block_share_rows_and_keep_their_numbers(scored, fewshot_task):
    """Contexts that open with the same block are packed several items to a row: fewer tokens in,
    the same per-choice numbers as one row per choice (the reference path)."""
    from capscale.scoring.loglik import MIN_SHARED_PREFIX, items_per_row, shared_rows
    from capscale.scoring.packing import shared_prefix_clusters

    loaded, _ = scored
    items = load_jsonl_task(fewshot_task).items
    groups = group_by_context(encode_items(loaded.tokenizer, items, loaded.max_length))
    assert max(p for p, _ in shared_prefix_clusters(groups, MIN_SHARED_PREFIX)) >= 30
    assert items_per_row(40, 20, 32) == 4 and items_per_row(30, 470, 512) == 1 == items_per_row(20, 95, 512), \
        "a short prefix does not pay"
    assert items_per_row(40, 20, 32, max_width=100) == 3, "rows stay within their width"
    rows = shared_rows(groups, loaded.model.config.hidden_size)
    assert len(rows) < len(groups) and sum(len(r) for r in rows) < sum(len(pack_group(g)) for g in groups)
    kw = dict(max_length=loaded.max_length, progress=False)
    shared = score_items(loaded.model, loaded.tokenizer, items, mode="shared", **kw)
    auto = score_items(loaded.model, loaded.tokenizer, items, **kw)
    alone = score_items(loaded.model, loaded.tokenizer, items, mode="independent", **kw)
    assert auto.mode == "shared" and auto.tokens_in == shared.tokens_in
    assert shared.tokens_in == sum(len(r) for r in rows)
    assert (np.abs(shared.logprob - alone.logprob) <= float32_tolerance(alone)).all()
    assert (shared.greedy == alone.greedy).all()


def test_a_choice_in_a_shared_row_sees_only_the_prefix_its_item_and_itself(scored, fewshot_task):
    from capscale.scoring.packing import batch_tensors, pack_items

    loaded, _ = scored
    groups = group_by_context(encode_items(loaded.tokenizer, load_jsonl_task(fewshot_task).items, loaded.max_length))
    two = [g for g in groups if not g[0].truncated][:2]
    prefix = 20
    assert all(g[0].context[:prefix] == two[0][0].context[:prefix] for g in two)
    row = pack_items(two, prefix)
    _, pos, mask, _, _ = batch_tensors([row], 0, torch.float32, "cpu")
    allowed = mask[0, 0] == 0
    n1, n2 = (len(g[0].context) - prefix for g in two)
    bodies1 = sum(len(r.continuation) - 1 for r in two[0])
    item2 = prefix + n1 + bodies1  # where the second item's suffix starts
    first_body2 = item2 + n2  # the second item's first choice body
    assert len(two[1][0].continuation) >= 3, "the check needs a body of 2+ tokens"
    for q in range(first_body2, first_body2 + len(two[1][0].continuation) - 1):
        want = list(range(prefix)) + list(range(item2, item2 + n2)) + list(range(first_body2, q + 1))
        assert torch.nonzero(allowed[q]).flatten().tolist() == want
    # positions continue each item's own context, as if it were alone
    assert pos[0, item2].item() == prefix and pos[0, first_body2].item() == len(two[1][0].context)


def test_one_probe_vouches_for_rows_of_items_and_of_choices(scored, fewshot_task, monkeypatch):
    import capscale.scoring.loglik as loglik

    loaded, _ = scored
    items = load_jsonl_task(fewshot_task).items
    calls = []
    real = loglik.self_check
    monkeypatch.setattr(loglik, "self_check", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(loglik, "_SHARING_GAP", {})
    for _ in range(2):
        assert score_items(loaded.model, loaded.tokenizer, items, max_length=loaded.max_length,
                           progress=False).mode == "shared"
    assert calls == ["items"], "a task with shared rows pays one probe, once per architecture"
    groups = group_by_context(encode_items(loaded.tokenizer, items, loaded.max_length))
    first, second = loglik.probe_items(groups)
    assert sum(len(r.continuation) >= 2 for r in first) >= 2, "the first item can show a leak between choices"
    assert first[0].item_index != second[0].item_index
