"""Split a ladder's checkpoints into N deterministic shards, for job arrays writing into one store.

A SLURM array (``sbatch --array=1-N``) runs ``capscale ladder-eval SPEC --out OUT --shard $I/N`` in
every job. The unit is the checkpoint, not the pair, so each job loads each of its checkpoints once.
Checkpoints are dealt round-robin in the sorted order of their names: shards differ in size by at
most one checkpoint, and the assignment depends only on the set of names (not on the order of the
spec, the machine or the Python hash seed). Adding checkpoints to the spec moves some to other
shards; since every run skips finished pairs, rerunning all shards then does only what is missing.
"""

from __future__ import annotations

import re

from capscale.errors import CapscaleError

SHARD_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 1 <= I <= N; anything else is an error naming the option."""
    match = SHARD_PATTERN.fullmatch(text or "")
    if not match:
        raise CapscaleError(f"--shard must look like I/N (e.g. 2/8), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise CapscaleError(f"--shard {text}: need 1 <= I <= N, got I={index}, N={count}")
    return index, count


def shard_of(names: list[str], index: int, count: int) -> set[str]:
    """The names of shard ``index`` (1-based) of ``count``: every count-th name in sorted order."""
    return {name for k, name in enumerate(sorted(set(names))) if k % count == index - 1}


def select_shard(specs: list, index: int, count: int) -> list:
    """The checkpoint specs of one shard, in the spec's own order."""
    keep = shard_of([s.checkpoint for s in specs], index, count)
    return [s for s in specs if s.checkpoint in keep]
