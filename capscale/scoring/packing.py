"""Pack the choices of one context into one sequence, and rows into token-budget batches.

A packed row is ``context + cont_1[:-1] + cont_2[:-1] + ...``. Choice j's tokens get the
position ids they would have right after the context and attend only to the context and
to their own earlier tokens, so each choice sees exactly what it would see alone (the
prefix-sharing mask). The first token of every continuation is predicted from the last
context position, which all choices share; a continuation's last token is never an input.
Compared with lm-eval, which runs ``context + continuation`` once per choice, the context
is encoded once per item instead of once per choice.

Items whose contexts start with the same long token prefix (a fixed few-shot block, as in
MMLU's ``first_n`` exemplars, or a long instruction) can share one row too:
``prefix + suffix_1 + bodies_1 + suffix_2 + bodies_2 + ...``, each item's suffix attending to
the prefix and itself, each choice to the prefix, its item's suffix and its own tokens. Every
row is a tree of segments (``parents``); a token attends to the earlier tokens of its own
segment and of that segment's ancestors, which is exactly the causal view it would have alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from capscale.scoring.encoding import ChoiceRequest

PAD_SEGMENT = -1


@dataclass
class PackedRow:
    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0 = context (or the shared prefix); the others as ``parents`` links them
    parents: list[int] = field(default_factory=lambda: [-1])  # parent segment of each segment; root 0
    requests: list[ChoiceRequest] = field(default_factory=list)
    # for each request: the row indices whose logits predict its continuation tokens
    logit_rows: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def group_by_context(requests: list[ChoiceRequest]) -> list[list[ChoiceRequest]]:
    """Choices whose (truncated) contexts are identical share one packed row; order is stable."""
    groups: dict[tuple[int, tuple[int, ...]], list[ChoiceRequest]] = {}
    for r in requests:
        groups.setdefault((r.item_index, r.context), []).append(r)
    return list(groups.values())


def pack_group(group: list[ChoiceRequest]) -> PackedRow:
    """One item's row: its whole context is the row's prefix (segment 0), each choice a segment under it."""
    return pack_items([group], len(group[0].context))


def common_prefix_length(contexts: list[tuple[int, ...]]) -> int:
    """Length of the longest token prefix all ``contexts`` share."""
    first, n = contexts[0], min(len(c) for c in contexts)
    for k in range(n):
        if any(c[k] != first[k] for c in contexts):
            return k
    return n


def shared_prefix_clusters(groups: list[list[ChoiceRequest]], min_prefix: int) -> list[tuple[int, list[list[ChoiceRequest]]]]:
    """(prefix length, groups) for groups whose contexts share their first ``min_prefix`` tokens,
    prefix length = their longest common prefix; clusters of one group get prefix length 0."""
    clusters: dict[tuple[int, ...], list[list[ChoiceRequest]]] = {}
    for g in groups:
        context = g[0].context
        key = context[:min_prefix] if len(context) >= min_prefix else ("alone", id(g))
        clusters.setdefault(key, []).append(g)
    out = []
    for members in clusters.values():
        shared = common_prefix_length([g[0].context for g in members]) if len(members) > 1 else 0
        out.append((shared if shared >= min_prefix else 0, members))
    return out


def pack_items(groups: list[list[ChoiceRequest]], prefix_length: int) -> PackedRow:
    """One row for several items whose contexts share their first ``prefix_length`` tokens."""
    prefix = list(groups[0][0].context[:prefix_length])
    row = PackedRow(tokens=prefix[:], positions=list(range(prefix_length)), segments=[0] * prefix_length)
    for group in groups:
        context = group[0].context
        n_ctx = len(context)
        item_seg = 0  # an item whose whole context is the prefix has no segment of its own
        if n_ctx > prefix_length:
            item_seg = len(row.parents)
            row.parents.append(0)
        row.tokens += list(context[prefix_length:])
        row.positions += list(range(prefix_length, n_ctx))
        row.segments += [item_seg] * (n_ctx - prefix_length)
        last_context = len(row.tokens) - 1  # the prefix's last token when the suffix is empty
        for r in group:
            body = list(r.continuation[:-1])
            start = len(row.tokens)
            seg = len(row.parents)
            row.parents.append(item_seg)
            row.tokens += body
            row.positions += list(range(n_ctx, n_ctx + len(body)))
            row.segments += [seg] * len(body)
            row.requests.append(r)
            row.logit_rows.append([last_context] + list(range(start, start + len(body))))
    return row


def item_part(group: list[ChoiceRequest], prefix_length: int) -> int:
    """The tokens one item adds to a row after a shared prefix: its context's rest and its choices' bodies."""
    return len(group[0].context) - prefix_length + sum(len(r.continuation) - 1 for r in group)


def pack_shared_prefix(groups: list[list[ChoiceRequest]], prefix_length: int, per_row: int) -> list[PackedRow]:
    """Rows of ``prefix + (suffix + bodies) per item``, about ``per_row`` items each: ceil(n / per_row)
    rows balanced by width (each item goes to the narrowest row, largest items first), so a batch of
    them carries little padding."""
    n_rows = -(-len(groups) // max(1, per_row))
    bins: list[list[list[ChoiceRequest]]] = [[] for _ in range(n_rows)]
    widths = [0] * n_rows
    for g in sorted(groups, key=lambda g: -item_part(g, prefix_length)):
        k = widths.index(min(widths))
        bins[k].append(g)
        widths[k] += item_part(g, prefix_length)
    return [pack_items(b, prefix_length) for b in bins]


def pack_independent(requests: list[ChoiceRequest]) -> list[PackedRow]:
    """One row per choice (no sharing): the fallback for models whose attention ignores custom masks."""
    return [pack_group([r]) for r in requests]


def batch_rows(rows: list[PackedRow], token_budget: int) -> list[list[PackedRow]]:
    """Longest rows first; a batch holds as many rows as fit ``rows x longest <= token_budget``."""
    order = sorted(rows, key=lambda r: -len(r))
    batches: list[list[PackedRow]] = []
    current: list[PackedRow] = []
    for row in order:
        width = len(current[0]) if current else len(row)
        if current and (len(current) + 1) * width > token_budget:
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches


def segment_ancestors(batch: list[PackedRow]) -> torch.Tensor:
    """[B, S, S] bool: entry (s, t) says segment t is s or one of its ancestors (s may attend to t)."""
    n_seg = max(len(r.parents) for r in batch)
    out = torch.zeros((len(batch), n_seg, n_seg), dtype=torch.bool)
    for b, r in enumerate(batch):
        for s in range(len(r.parents)):
            t = s
            while t >= 0:
                out[b, s, t] = True
                t = r.parents[t]
    return out


def batch_tensors(batch: list[PackedRow], pad_id: int, dtype: torch.dtype, device: str):
    """input_ids, position_ids, additive 4D mask [B,1,T,T] and the logit positions to keep [B,K]."""
    width = max(len(r) for r in batch)
    n = len(batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), PAD_SEGMENT, dtype=torch.long)
    for b, r in enumerate(batch):
        ids[b, : len(r)] = torch.tensor(r.tokens)
        pos[b, : len(r)] = torch.tensor(r.positions)
        seg[b, : len(r)] = torch.tensor(r.segments)
    causal = torch.ones((width, width), dtype=torch.bool).tril_()  # [T(query), T(key)]
    ancestors = segment_ancestors(batch)  # [B, S, S]: key segment visible from query segment
    mask = torch.full((n, 1, width, width), torch.finfo(dtype).min, dtype=dtype)
    pads = torch.arange(width)
    for b, r in enumerate(batch):
        s = seg[b, : len(r)]
        # two 1-D gathers (query segments, then key segments): no [T, T] index tensors
        allowed = ancestors[b][s][:, s] & causal[: len(r), : len(r)]
        mask[b, 0, : len(r), : len(r)].masked_fill_(allowed, 0.0)
        mask[b, 0, pads[len(r):], pads[len(r):]] = 0.0  # pads attend to themselves: no empty softmax rows
    keep_lists = [sorted({i for rows in r.logit_rows for i in rows}) for r in batch]
    k = max(len(x) for x in keep_lists)
    keep = torch.tensor([x + [x[-1]] * (k - len(x)) for x in keep_lists], dtype=torch.long)
    return ids.to(device), pos.to(device), mask.to(device), keep.to(device), keep_lists
