"""Draw many sampled completions per prompt with one prompt encoding (shared prefill).

Massive sampling (PassUntil, Hu et al. 2023) draws thousands of completions per item. lm-eval's
``repeats`` clones the request and re-encodes the prompt for every sample; here each prompt of
a batch is run once, its KV cache is gathered into one row per sample, and only the new tokens
are decoded, with finished rows dropped from the batch as they stop.

Reproducibility on any batch size: the random number that picks token ``t`` of sample ``j`` of an
item is a hash of (seed, item key, j, t) — a counter-based generator — and the token is drawn by
inverse-CDF from the model's distribution. So a sample is the same whichever batch, round or
resumed run draws it (up to float noise in the logits, which moves a draw only when the uniform
falls within ~1e-7 of a CDF boundary).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
TWO_POW_53 = float(2**53)


def item_key(item_id: str) -> int:
    """A stable 32-bit key per item id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1(item_id.encode("utf-8")).digest()[:4], "little")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 without int64 overflow (split c into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser with good avalanche (xorshift-multiply rounds)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(seed: int, keys: torch.Tensor, sample_index: torch.Tensor, step: int) -> torch.Tensor:
    """Uniform (0, 1) float64 per row, a pure function of (seed, key, sample index, step).

    Two 32-bit hashes give 53 bits, so probabilities down to ~1e-16 are resolved.
    """
    base = _mix32((keys.long() & MASK32) ^ _mix32(torch.full_like(keys, seed & MASK32, dtype=torch.long)))
    base = _mix32(base ^ _mix32((sample_index.long() & MASK32) ^ 0x68E31DA4))
    words = []
    for stream in (0, 1):
        salt = ((step & 0xFFFFFF) << 1 | stream) ^ 0x1B56C4E9
        words.append(_mix32(base ^ _mix32(torch.full_like(base, salt))))
    high, low = words[0] >> 5, words[1] >> 6  # 27 + 26 bits
    return ((high * 67108864 + low).double() + 0.5) / TWO_POW_53


def draw_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float,
                greedy: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF draw of one token per row from softmax(logits / T), nucleus-truncated to top_p.

    ``greedy`` rows (and every row when temperature is 0) take the argmax instead.
    """
    argmax = logits.argmax(dim=-1)
    if temperature == 0:
        return argmax
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)  # keep the smallest prefix reaching top_p
    cdf = probs.cumsum(dim=-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)
    if top_p < 1.0:
        picked = order.gather(1, picked[:, None]).squeeze(1)
    if greedy is not None:
        picked = torch.where(greedy.to(picked.device), argmax, picked)
    return picked


@dataclass(frozen=True)
class SampleRun:
    """``count`` consecutive samples (indices start, start+1, ...) of one item; start = -1 means greedy."""

    item: int
    start: int
    count: int


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    key: int
    max_new_tokens: int
    stop: tuple[str, ...]


def left_pad(seqs: list[tuple[int, ...]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


class StopWatcher:
    """Decides when a row has produced a stop string, decoding only a short tail of its tokens."""

    def __init__(self, tokenizer, stops: list[tuple[str, ...]]):
        self.tokenizer = tokenizer
        self.stops = stops
        longest = max((len(s) for group in stops for s in group), default=0)
        self.tail = longest + 4  # a stop string of k characters spans at most k tokens (+ partial bytes)

    def hit(self, row_stops: tuple[str, ...], tokens: list[int]) -> bool:
        if not row_stops:
            return False
        text = self.tokenizer.decode(tokens[-self.tail:], skip_special_tokens=True)
        return any(s in text for s in row_stops)


def cache_keyword(model) -> str:
    """The forward() keyword that takes the KV cache, which the output also carries under that name:
    ``cache`` where the model accepts it (transformers 5.x, which deprecates ``past_key_values`` and
    drops it in 5.40), else ``past_key_values`` (transformers 4.x). Decided by the signature, not a
    version string, so remote-code models of either style work too."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Prompt], runs: list[SampleRun], *, seed: int, temperature: float,
             top_p: float, device, prune_below: float = 0.5) -> list[list[list[int]]]:
    """Completions (token ids, stop text not removed) for every sample of every run, in run order.

    Each distinct prompt of ``runs`` is encoded once; its cache is gathered into one row per sample.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_id = tokenizer.eos_token_id
    distinct = sorted({r.item for r in runs})
    where = {item: k for k, item in enumerate(distinct)}
    ids, mask = left_pad([prompts[i].ids for i in distinct], pad_id, device)
    position = (mask.cumsum(dim=1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    cache_kw = cache_keyword(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, **extra)
    cache = getattr(out, cache_kw)

    row_prompt = [where[r.item] for r in runs for _ in range(r.count)]
    row_item = [r.item for r in runs for _ in range(r.count)]
    row_index = [(r.start + k if r.start >= 0 else -1) for r in runs for k in range(r.count)]
    gather = torch.tensor(row_prompt, device=device)
    cache.batch_select_indices(gather)
    logits = out.logits[:, -1, :].float()[gather]
    attn = mask[gather]
    next_pos = mask.sum(dim=1)[gather]
    keys = torch.tensor([prompts[i].key for i in row_item], dtype=torch.long)
    sample_index = torch.tensor([max(j, 0) for j in row_index], dtype=torch.long)
    is_greedy = torch.tensor([j < 0 for j in row_index])
    limits = [prompts[i].max_new_tokens for i in row_item]
    watcher = StopWatcher(tokenizer, [prompts[i].stop for i in distinct])

    n_rows = len(row_item)
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    batch_rows = list(range(n_rows))  # which row sits at each position of the batch dimension
    active = [True] * n_rows
    step = 0  # token position inside the completion: the same for every row of the batch
    while True:
        positions = [b for b, a in enumerate(active) if a]
        rows = [batch_rows[b] for b in positions]
        u = counter_uniform(seed, keys[rows], sample_index[rows], step)
        picked = draw_tokens(logits[positions], u, temperature, top_p, is_greedy[rows]).tolist()
        feed = [pad_id] * len(batch_rows)  # finished rows ride along on padding until pruned
        for b, row, tok in zip(positions, rows, picked):
            feed[b] = tok
            if tok == eos_id:
                active[b] = False
                continue
            tokens[row].append(tok)
            if len(tokens[row]) >= limits[row] or watcher.hit(prompts[row_item[row]].stop, tokens[row]):
                active[b] = False
        n_active = sum(active)
        if n_active == 0:
            break
        if n_active <= prune_below * len(batch_rows):
            index = [b for b, a in enumerate(active) if a]
            cache.batch_select_indices(torch.tensor(index, device=device))
            attn, next_pos = attn[index], next_pos[index]
            feed = [feed[b] for b in index]
            batch_rows = [batch_rows[b] for b in index]
            active = [True] * len(index)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        out = model(input_ids=torch.tensor(feed, device=device)[:, None], attention_mask=attn,
                    position_ids=next_pos[:, None], use_cache=True, **{cache_kw: cache})
        cache = getattr(out, cache_kw)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
        step += 1
    result: list[list[list[int]]] = []
    k = 0
    for r in runs:
        result.append(tokens[k:k + r.count])
        k += r.count
    return result
