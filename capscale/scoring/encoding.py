"""Tokenize (context, continuation) pairs exactly as lm-eval's HF backend does.

lm-eval (api/model.py ``_encode_pair`` and ``loglikelihood``) moves trailing whitespace
of the context into the continuation, encodes ``context`` and ``context + continuation``
separately and takes the continuation tokens as the tail of the joint encoding. An empty
context is replaced by the prefix token (BOS, else EOS). Copying these rules is what makes
our per-choice numbers identical to lm-eval's.

Because every choice of an item shares the same context encoding, the scorer can run the
context once and score all choices against it; ``effective_context`` applies lm-eval's
left truncation so that sharing stays exact when contexts do not fit the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from capscale.errors import ScoringError
from capscale.tasks.schema import MCItem


@dataclass(frozen=True)
class ChoiceRequest:
    item_index: int
    choice_index: int
    context: tuple[int, ...]  # after truncation: what the model actually sees
    continuation: tuple[int, ...]
    truncated: bool


def prefix_token_id(tokenizer) -> int:
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ScoringError("tokenizer has neither a BOS nor an EOS token; cannot score an empty context")


def encode_text(tokenizer, text: str, prefix_text: str | None) -> list[int]:
    """lm-eval's tok_encode: tokenizer defaults, but no second BOS if the text already starts with one."""
    return encode_texts(tokenizer, [text], prefix_text)[0]


def encode_texts(tokenizer, texts: list[str], prefix_text: str | None) -> list[list[int]]:
    """:func:`encode_text` of many texts in two batched tokenizer calls (fast tokenizers encode a batch
    in parallel, in Rust); the ids are exactly those of one ``encode`` per text."""
    out: list[list[int] | None] = [None] * len(texts)
    for special in (True, False):
        where = [k for k, t in enumerate(texts) if bool(prefix_text and t.startswith(prefix_text)) != special]
        if where:
            ids = tokenizer([texts[k] for k in where], add_special_tokens=special)["input_ids"]
            for k, row in zip(where, ids):
                out[k] = list(row)
    return out


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's _encode_pair: trailing whitespace of the context moves to the front of the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_empty_context(tokenizer, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """An empty context is the prefix token (BOS, else EOS), as in lm-eval."""
    cont = tokenizer.encode(continuation, add_special_tokens=False)
    if not cont:
        return [prefix_id], []
    if cont[0] != prefix_id:
        return [prefix_id], cont
    return cont[:1], cont[1:]


def encode_pair(tokenizer, context: str, continuation: str, prefix_id: int, prefix_text: str | None):
    if context == "":
        return encode_empty_context(tokenizer, continuation, prefix_id)
    context, continuation = split_whitespace(context, continuation)
    whole = encode_text(tokenizer, context + continuation, prefix_text)
    ctx = encode_text(tokenizer, context, prefix_text)
    return ctx, whole[len(ctx):]


def effective_context(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], bool]:
    """lm-eval feeds ``(ctx + cont)[-(max_length + 1):][:-1]``: keep the context tail that fits."""
    keep = max_length + 1 - len(continuation)
    if len(context) <= keep:
        return context, False
    return context[-keep:], True


def encode_items(tokenizer, items: list[MCItem], max_length: int) -> list[ChoiceRequest]:
    """Every choice of every item as lm-eval encodes it (:func:`encode_pair`), with the context encoded
    once per item instead of once per choice and all texts in batched tokenizer calls."""
    prefix_id = prefix_token_id(tokenizer)
    prefix_text = tokenizer.decode([prefix_id])
    contexts, wholes, pairs = [], [], []  # pairs: (item, choice, index into contexts, index into wholes)
    empty: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for i, item in enumerate(items):
        if item.context == "":
            for j in range(len(item.choices)):
                empty[(i, j)] = encode_empty_context(tokenizer, item.continuation(j), prefix_id)
            continue
        contexts.append(split_whitespace(item.context, "")[0])
        for j in range(len(item.choices)):
            context, continuation = split_whitespace(item.context, item.continuation(j))
            pairs.append((i, j, len(contexts) - 1, len(wholes)))
            wholes.append(context + continuation)
    context_ids = encode_texts(tokenizer, contexts, prefix_text)
    whole_ids = encode_texts(tokenizer, wholes, prefix_text)
    encoded = dict(empty)
    for i, j, c, w in pairs:
        ctx = context_ids[c]
        encoded[(i, j)] = (ctx, whole_ids[w][len(ctx):])
    requests = []
    for i, item in enumerate(items):
        for j in range(len(item.choices)):
            ctx, cont = encoded[(i, j)]
            if not cont:
                raise ScoringError(f"item {item.id!r} choice {j}: continuation {item.continuation(j)!r} has no tokens")
            if len(cont) > max_length:
                raise ScoringError(
                    f"item {item.id!r} choice {j}: continuation has {len(cont)} tokens, "
                    f"more than the model's window of {max_length}"
                )
            ctx, truncated = effective_context(ctx, cont, max_length)
            requests.append(ChoiceRequest(i, j, tuple(ctx), tuple(cont), truncated))
    return requests
