"""Per-choice log-likelihoods for multiple-choice items, lm-eval's numbers at a fraction of the cost.

Four savings over lm-eval's HF backend, none of which changes a number beyond float noise:
1. each context is run once and all its choices are scored against it (``packing``);
2. items whose contexts open with the same long token prefix (a fixed few-shot block) share
   one row, so that prefix is run once per row of items rather than once per item;
3. rows are batched by a token budget, longest first, so padding stays small;
4. the vocabulary projection and log-softmax (float32) run only at the positions that
   predict continuation tokens, not at every context position.
A self-check compares the shared packing with one-row-per-choice scoring on small probes (the
choices of one item; two items in one row) and falls back to the latter for architectures whose
attention ignores a custom mask. Its
verdict is a property of the architecture, not of the weights or the task, so it is cached per
model class, config (minus its path), attention implementation, dtype and device type: a ladder's
checkpoints of one shape, and every task after the first, reuse it for free.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from capscale.errors import ScoringError
from capscale.scoring.encoding import ChoiceRequest, encode_items
from capscale.scoring.packing import (PackedRow, batch_rows, batch_tensors, common_prefix_length, group_by_context,
                                      item_part, pack_group, pack_independent, pack_items, pack_shared_prefix,
                                      shared_prefix_clusters)
from capscale.tasks.schema import MCItem

SELF_CHECK_TOLERANCE = 1e-3
# The self-check's probe: the last PROBE_CONTEXT context tokens and PROBE_CHOICES choices. A leak (a choice
# seeing another, or sitting at the wrong positions) shows with any context; a short one dilutes it least and
# costs least: on a 6-item task of 500-token contexts a 64-token, 4-choice probe was ~10% of the scoring time.
PROBE_CONTEXT = 16
PROBE_CHOICES = 2
_SHARING_GAP: dict[tuple, float] = {}  # (architecture_key, probe kind) -> max |shared - independent| on a probe
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 65536}
MIN_SHARED_PREFIX = 16  # tokens a group of items must share before they are considered for common rows
MIN_SHARING_GAIN = 0.25  # share rows between items only where the cost model saves at least this share
MAX_SHARED_ROW = 8192  # tokens in a row shared by items, at most (and at most the token budget)


@dataclass
class ScoreReport:
    """Per-choice arrays aligned with ``item_index`` / ``choice_index``, plus what was counted."""

    item_index: np.ndarray
    choice_index: np.ndarray
    logprob: np.ndarray
    n_tokens: np.ndarray
    greedy: np.ndarray
    n_truncated_items: int = 0
    n_nonfinite: int = 0
    mode: str = "shared"
    tokens_in: int = 0  # tokens fed to the model (after sharing)
    tokens_requested: int = 0  # sum of len(context)+len(continuation) over choices: lm-eval's workload
    warnings: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=64)
def _takes_logits_to_keep(model_class: type) -> bool:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return major >= 5 and "logits_to_keep" in inspect.signature(model_class.forward).parameters


def supports_logits_to_keep(model) -> bool:
    """Per-row positions (a 2-D ``logits_to_keep``) are understood from transformers 5 on; older
    versions would index them as one shared list and silently score the wrong positions."""
    return _takes_logits_to_keep(type(model))


@torch.no_grad()
def forward_rows(model, batch: list[PackedRow], pad_id: int, device: str):
    """Log-probabilities (float32) at the kept positions of every row, [B, K, V], and each row's kept positions."""
    dtype = next(model.parameters()).dtype
    ids, pos, mask, keep, keep_lists = batch_tensors(batch, pad_id, dtype, device)
    kwargs = dict(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)
    if supports_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=keep).logits
    else:
        full = model(**kwargs).logits
        logits = torch.gather(full, 1, keep[:, :, None].expand(-1, -1, full.shape[-1]))
    # at least float32 (half-precision logits are upcast; a float64 reference model stays float64)
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1), keep_lists


def token_index(batch: list[PackedRow], keep_lists: list[list[int]]):
    """For every continuation token of every request of the batch: (row, kept slot, token id, request ordinal)."""
    rows, slots, tokens, owner, requests = [], [], [], [], []
    for b, (row, keep_list) in enumerate(zip(batch, keep_lists)):
        where = {p: k for k, p in enumerate(keep_list)}
        for req, logit_rows in zip(row.requests, row.logit_rows):
            n = len(requests)
            requests.append(req)
            for position, token in zip(logit_rows, req.continuation):
                rows.append(b)
                slots.append(where[position])
                tokens.append(token)
                owner.append(n)
    return rows, slots, tokens, owner, requests


@torch.no_grad()
def score_batch(model, batch: list[PackedRow], pad_id: int, device: str):
    """(request, logprob, greedy) for every request of one batch, with a fixed number of tensor ops
    per batch (not per choice: on a GPU each small op is a launch and each float() a sync)."""
    logprobs, keep_lists = forward_rows(model, batch, pad_id, device)
    rows, slots, tokens, owner, requests = token_index(batch, keep_lists)
    at = (torch.tensor(rows, device=logprobs.device), torch.tensor(slots, device=logprobs.device))
    target = torch.tensor(tokens, device=logprobs.device)
    index = torch.tensor(owner, device=logprobs.device)
    token_lp = logprobs[at[0], at[1], target]
    missed = (logprobs.argmax(dim=-1)[at[0], at[1]] != target).double()
    # summed in float64: a float32 sum would round the total to float32's spacing at its size
    # (7.6e-6 at |logprob| 64-128, 1.2e-4 above 1024), more than the tokens' own error
    totals = torch.zeros(len(requests), dtype=torch.float64, device=logprobs.device)
    totals.index_add_(0, index, token_lp.double())
    misses = torch.zeros(len(requests), dtype=torch.float64, device=logprobs.device).index_add_(0, index, missed)
    return list(zip(requests, totals.tolist(), (misses == 0).tolist()))


def score_rows(model, rows: list[PackedRow], pad_id: int, device: str, token_budget: int, progress: bool, desc: str):
    """Yield (request, logprob, greedy) for every request in ``rows``."""
    batches = batch_rows(rows, token_budget)
    total = sum(len(r) for r in rows)
    with tqdm(total=total, unit="tok", desc=desc, disable=not progress, leave=False) as bar:
        for batch in batches:
            yield from score_batch(model, batch, pad_id, device)
            bar.update(sum(len(r) for r in batch))


def architecture_key(model, device: str) -> tuple:
    """What decides whether the packed mask is honoured: class, config (not its path), attention
    implementation, dtype and device type; weights and tasks do not."""
    config = getattr(model, "config", None)
    described = config.to_dict() if config is not None else {}
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        described.pop(volatile, None)
    digest = hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
    dtype = next(model.parameters()).dtype
    return (type(model).__module__, type(model).__qualname__, getattr(config, "_attn_implementation", None),
            str(dtype), torch.device(device).type, digest)


def probe_group(groups: list[list[ChoiceRequest]]) -> list[ChoiceRequest] | None:
    """The cheapest group able to show a leak between choices, context cut to its last PROBE_CONTEXT tokens.

    A leak needs two choices whose packed bodies are non-empty (continuations of 2+ tokens): a
    1-token choice is predicted from the last context position, before every body. None when no
    group of the task has two such choices: then sharing is exact by construction."""
    candidates = [[r for r in g if len(r.continuation) >= 2] for g in groups]
    candidates = [g[:PROBE_CHOICES] for g in candidates if len(g) >= 2]
    if not candidates:
        return None
    group = min(candidates, key=lambda g: sum(len(r.continuation) for r in g))
    return [replace(r, context=r.context[-PROBE_CONTEXT:]) for r in group]


def probe_items(groups: list[list[ChoiceRequest]]) -> list[list[ChoiceRequest]] | None:
    """Two items in one row, contexts cut to their last PROBE_CONTEXT tokens, for the check of rows shared
    by several items: any token of the second item would see the first one through a leak. The first is
    the choices probe where the task has one, so a pass also vouches for sharing between choices."""
    if len(groups) < 2:
        return None
    first = (probe_group(groups) or groups[0])[:2]
    taken = (first[0].item_index, first[0].choice_index)
    other = next(g for g in groups if all((r.item_index, r.choice_index) != taken for r in g))
    # half the choices probe's context each: the row then costs what the choices probe costs
    return [[replace(r, context=r.context[-(PROBE_CONTEXT // 2):]) for r in g] for g in (first, other[:2])]


def probe_rows(kind: str, groups: list[list[ChoiceRequest]]) -> tuple[PackedRow, list[ChoiceRequest]] | None:
    """(packed row, its requests) for a probe of ``kind``: "choices" (one item) or "items" (two)."""
    if kind == "choices":
        probe = probe_group(groups)
        return None if probe is None else (pack_group(probe), probe)
    probe = probe_items(groups)
    if probe is None:
        return None
    shared = common_prefix_length([g[0].context for g in probe])
    return pack_items(probe, shared), [r for g in probe for r in g]


def self_check(model, groups: list[list[ChoiceRequest]], pad_id: int, device: str, kind: str = "choices") -> float:
    """Max |shared - independent| logprob on the probe of ``kind`` (0.0 when sharing cannot differ).

    The packed row and the one-row-per-choice rows go through the model as one batch: on a small
    task the check's cost is its number of forward calls (each a fixed number of ops), not its tokens."""
    probe = probe_rows(kind, groups)
    if probe is None:
        return 0.0
    packed, requests = probe
    scored = score_batch(model, [packed, *pack_independent(requests)], pad_id, device)
    shared, alone = scored[: len(requests)], scored[len(requests):]  # row order: the packed row's requests first
    return max(abs(lp - alone_lp) for (_, lp, _), (_, alone_lp, _) in zip(shared, alone))


def sharing_gap(model, groups: list[list[ChoiceRequest]], pad_id: int, device: str, kind: str = "choices") -> float:
    """The self-check's gap for this architecture, computed once per process (see architecture_key)."""
    key = (architecture_key(model, device), kind)
    if key not in _SHARING_GAP:
        if probe_rows(kind, groups) is None:
            return 0.0  # nothing to learn from this task; a later task may have a probe
        gap = self_check(model, groups, pad_id, device, kind)
        if gap != gap:  # NaN: non-finite logits, a property of these weights; let the caller report them
            return gap
        _SHARING_GAP[key] = gap
    return _SHARING_GAP[key]


def items_per_row(prefix: int, part: float, d_model: int, max_width: int = MAX_SHARED_ROW) -> int:
    """How many items whose contexts share ``prefix`` tokens (each adding ``part`` tokens of its own) one
    row should hold: the m minimising the work per item, 1 when sharing does not pay.

    Per token the layers cost ~24 d^2 FLOPs per layer; a masked attention computes every (query, key)
    pair of the row, ~4 d per pair per layer, dense. A row of m items costs b (p + m s) + a (p + m s)^2
    with b / a = 6 d; per item that is smallest at m* = sqrt(p (6 d + p)) / s. Rows are shared only when
    that saves at least MIN_SHARING_GAIN of the work (what the model leaves out — the mask's build, a
    wider row's memory traffic — must not eat the gain): a short prefix in front of long items (an
    instruction line) keeps one row per item. Rows stay within ``max_width`` tokens (the [T, T] mask
    and, on CPU, the attention weights grow with its square)."""
    if prefix <= 0 or part <= 0:
        return 1
    m = max(1, min(int(np.sqrt(prefix * (6 * d_model + prefix)) / part), int((max_width - prefix) / part)))

    def work_per_item(k):
        width = prefix + k * part
        return (6 * d_model * width + width ** 2) / k

    return m if work_per_item(m) <= (1 - MIN_SHARING_GAIN) * work_per_item(1) else 1


def shared_rows(groups: list[list[ChoiceRequest]], d_model: int,
                token_budget: int = DEFAULT_TOKEN_BUDGET["cpu"]) -> list[PackedRow]:
    """One row per item, except rows of several items where their contexts share a prefix of at least
    MIN_SHARED_PREFIX tokens and sharing it pays (``items_per_row``)."""
    rows = []
    for prefix, members in shared_prefix_clusters(groups, MIN_SHARED_PREFIX):
        parts = [item_part(g, prefix) for g in members]
        m = items_per_row(prefix, float(np.mean(parts)), d_model, min(token_budget, MAX_SHARED_ROW))
        if m < 2:
            rows += [pack_group(g) for g in members]
        else:
            rows += pack_shared_prefix(members, prefix, m)
    return rows


def model_width(model) -> int:
    """The residual width d_model (``items_per_row``'s cost model); 1024 when the config does not say."""
    return int(getattr(getattr(model, "config", None), "hidden_size", None) or 1024)


def score_items(
    model,
    tokenizer,
    items: list[MCItem],
    *,
    max_length: int,
    device: str = "cpu",
    token_budget: int | None = None,
    mode: str = "auto",
    progress: bool = True,
    desc: str = "scoring",
) -> ScoreReport:
    """Score every choice of every item. ``mode``: auto | shared | independent."""
    if mode not in ("auto", "shared", "independent"):
        raise ValueError(f"mode must be auto, shared or independent, got {mode!r}")
    budget = token_budget or DEFAULT_TOKEN_BUDGET["cuda" if str(device).startswith("cuda") else "cpu"]
    requests = encode_items(tokenizer, items, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups = group_by_context(requests)
    notes: list[str] = []
    candidate = shared_rows(groups, model_width(model), budget) if mode != "independent" else []
    share_items = 0 < len(candidate) < len(groups)  # some rows hold several items
    if mode == "auto":
        # a NaN gap means non-finite logits: keep sharing and let the finiteness check below report it
        items_gap = sharing_gap(model, groups, pad_id, device, "items") if share_items else 0.0
        share_items = share_items and not items_gap > SELF_CHECK_TOLERANCE
        # the items probe holds the task's leak-prone choices: its pass vouches for them too
        gap = 0.0 if share_items else sharing_gap(model, groups, pad_id, device)
        mode = "independent" if gap > SELF_CHECK_TOLERANCE else "shared"
        if mode == "independent":
            notes.append(
                f"prefix sharing disagreed with per-choice scoring by {gap:.2e} on this architecture; "
                "scored one row per choice instead (slower, exact)"
            )
        elif items_gap > SELF_CHECK_TOLERANCE:
            notes.append(f"rows shared by items disagreed with per-choice scoring by {items_gap:.2e} on this "
                         "architecture; scored one row per item instead")
        for note in notes:
            warnings.warn(note)
    if mode == "independent":
        rows = pack_independent(requests)
    else:
        rows = candidate if share_items else [pack_group(g) for g in groups]
    index = {(r.item_index, r.choice_index): k for k, r in enumerate(requests)}
    logprob = np.full(len(requests), np.nan)
    greedy = np.zeros(len(requests), dtype=bool)
    for req, lp, gr in score_rows(model, rows, pad_id, device, budget, progress, desc):
        k = index[(req.item_index, req.choice_index)]
        logprob[k], greedy[k] = lp, gr
    nonfinite = ~np.isfinite(logprob)
    if nonfinite.any():
        bad = requests[int(np.flatnonzero(nonfinite)[0])]
        raise ScoringError(
            f"{int(nonfinite.sum())} choice log-likelihoods are NaN/inf (first: item {items[bad.item_index].id!r}, "
            f"choice {bad.choice_index}); the model's logits are not finite — check the checkpoint and --dtype"
        )
    truncated_items = {r.item_index for r in requests if r.truncated}
    if truncated_items:
        notes.append(f"{len(truncated_items)} of {len(items)} items had contexts left-truncated to fit {max_length} tokens")
    return ScoreReport(
        item_index=np.array([r.item_index for r in requests]),
        choice_index=np.array([r.choice_index for r in requests]),
        logprob=logprob,
        n_tokens=np.array([len(r.continuation) for r in requests]),
        greedy=greedy,
        n_truncated_items=len(truncated_items),
        mode=mode,
        tokens_in=sum(len(r) for r in rows),
        tokens_requested=sum(len(r.context) + len(r.continuation) for r in requests),
        warnings=notes,
    )
