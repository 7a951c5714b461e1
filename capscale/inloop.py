"""``capscale.score``: score a model that is already in memory (a training loop) into the results store.

Every call turns the model's current weights into one ladder point (a checkpoint row in the
manifest plus one pair file per task), exactly the rows ``capscale eval`` writes for the same weights
saved to disk, without saving them. The model is switched to eval mode for the call (dropout off)
and back to its previous mode afterwards; no gradient is kept.

Distributed training (``torch.distributed`` initialised, several ranks):
- ``DistributedDataParallel``: the wrapped module is a full replica on every rank. By default rank 0
  scores everything and the other ranks return None at once (their next collective waits for
  rank 0). With ``split=True`` every rank scores an equal share of each task's items (every
  world-size-th item) and rank 0 gathers the rows (``gather_object``) and writes them: the same
  rows, in the same order, as one rank scoring all items. Every rank must then call ``score``.
- FSDP (``FullyShardedDataParallel`` or ``fully_shard``) is not supported: its forward is a collective
  over shards, which per-item scoring of unequal batches would deadlock. Score an unsharded copy
  (e.g. gathered with ``get_model_state_dict(..., options=StateDictOptions(full_state_dict=True))``
  on rank 0) instead; ``score`` refuses an FSDP module with that advice.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError

IN_MEMORY = "in-memory"  # the manifest's path for a checkpoint that was never saved


def fsdp_types() -> tuple:
    import torch.distributed as dist

    if not dist.is_available():
        return ()
    from torch.distributed import fsdp

    return tuple(t for t in (getattr(fsdp, "FSDPModule", None), getattr(fsdp, "FullyShardedDataParallel", None)) if t)


def unwrap(model):
    """The module to run: DDP's inner module; FSDP is refused (see module docstring)."""
    sharded = fsdp_types()
    if sharded and any(isinstance(m, sharded) for m in model.modules()):
        raise CapscaleError(
            "capscale.score does not score FSDP-sharded models (their forward is a collective over shards); "
            "gather a full state dict on rank 0 into an unsharded copy and score that")
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run_name(checkpoint: str) -> str:
    """The training run a checkpoint belongs to: its name without a trailing step suffix (run-step100 -> run)."""
    return re.sub(r"[-_.]?(step|iter|it)[-_]?\d+$", "", checkpoint) or checkpoint


def as_tasks(tasks) -> list:
    """MCTask objects, or task specs (path, shipped name, lm-eval:NAME) loaded here; one or many."""
    from capscale.tasks import MCTask, load_task

    if isinstance(tasks, (str, MCTask)):
        tasks = [tasks]
    loaded = [t if isinstance(t, MCTask) else load_task(str(t)) for t in tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise CapscaleError(f"two tasks share a name: {sorted({n for n in names if names.count(n) > 1})}")
    return loaded


def in_memory_checkpoint(module, tokenizer, max_length: int | None, path: str):
    """A LoadedCheckpoint around a live module: device and dtype from its parameters."""
    from capscale.models import LoadedCheckpoint, count_params, max_context_length

    first = next(module.parameters())
    params, total = count_params(module)
    return LoadedCheckpoint(model=module, tokenizer=tokenizer, path=path, device=str(first.device),
                            dtype=str(first.dtype).removeprefix("torch."),
                            max_length=max_length or max_context_length(module.config, tokenizer),
                            params=params, params_total=total)


def task_values(rows: pd.DataFrame) -> dict[str, float]:
    from capscale.metrics import item_metrics, task_metrics

    table = task_metrics(item_metrics(rows))
    return dict(zip(table["metric"], table["value"].astype(float)))


def split_pair(loaded, checkpoint: str, task, rank: int, world: int, **options):
    """This rank's share of one pair (every world-th item), gathered on rank 0 into the whole pair:
    (rows, run note) on rank 0, None elsewhere."""
    import torch.distributed as dist

    from capscale.evaluate import scored_pair

    share = replace(task, items=task.items[rank::world])
    part = scored_pair(loaded, checkpoint, share, **options)[:2] if share.items else None
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    if rank != 0:
        return None
    parts = [p for p in parts if p is not None]
    order = {it.id: k for k, it in enumerate(task.items)}
    rows = pd.concat([rows for rows, _ in parts], ignore_index=True)
    rows = rows.iloc[np.lexsort((rows["choice"].to_numpy(), rows["item"].map(order).to_numpy()))]
    note = dict(parts[0][1], n_items=len(task.items), ranks=world,
                mode="/".join(sorted({n["mode"] for _, n in parts})),
                seconds=max(n["seconds"] for _, n in parts),
                warnings=[w for _, n in parts for w in n["warnings"]])
    for key in ("n_truncated_items", "tokens_in", "tokens_requested"):
        note[key] = sum(n[key] for _, n in parts)
    from capscale.evaluate import task_fingerprint

    note["fingerprint"] = task_fingerprint(task, loaded.dtype)
    return rows.reset_index(drop=True), note


def score(model, tokenizer, tasks, *, checkpoint: str, step: float | None = None, tokens: float | None = None,
          out=None, family: str = "", params: float | None = None, flops: float | None = None,
          model_name: str | None = None, max_length: int | None = None, token_budget: int | None = None,
          mode: str = "auto", split: bool = False, overwrite: bool = False, path: str = IN_MEMORY,
          progress: bool = False) -> dict[str, dict[str, float]] | None:
    """Score ``model`` (already loaded, any device) on ``tasks``; returns {task: {metric: value}}.

    With ``out`` the rows go into that results store as checkpoint ``checkpoint`` (a pair already
    there is kept and read back, unless ``overwrite``), and the manifest records family, model
    (``model_name``, default the checkpoint name without its step suffix), step, tokens, params
    (default: counted, non-embedding) and flops (default 6 * params * tokens), so ``capscale summary OUT``
    and the forecasters read the run as a ladder. Returns None on ranks other than 0 (see module doc).
    """
    import torch

    from capscale.evaluate import manifest_record
    from capscale.ladderspec import CheckpointSpec
    from capscale.store import ResultsStore

    rank, world = dist_rank_world()
    if world > 1 and not split and rank != 0:
        return None
    task_list = as_tasks(tasks)
    module = unwrap(model)
    loaded = in_memory_checkpoint(module, tokenizer, max_length, path)
    spec = CheckpointSpec(path=path, checkpoint=checkpoint, model=model_name or run_name(checkpoint),
                          family=family, step=step, params=params, tokens=tokens, flops=flops)
    store = ResultsStore(out) if out is not None and rank == 0 else None
    if store is not None:
        store.upsert_checkpoint(manifest_record(spec, loaded))
    options = dict(token_budget=token_budget, mode=mode, progress=progress)
    was_training = module.training
    module.eval()
    results: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            for task in task_list:
                rows = pair_rows(loaded, spec, task, store, overwrite, rank, world if split else 1, options)
                if rows is not None:
                    results[task.name] = task_values(rows)
    finally:
        module.train(was_training)
    return results if rank == 0 else None


def pair_rows(loaded, spec, task, store, overwrite: bool, rank: int, world: int, options: dict):
    """One task's rows on rank 0 (stored ones reused, new ones written), None on the other ranks.
    ``world`` > 1 splits the items across the ranks; every rank must call this then."""
    from capscale.evaluate import scored_pair

    rows = stored_rows(store, spec, task, loaded.dtype, overwrite) if store is not None else None
    if world > 1:
        import torch.distributed as dist

        already = [rows is not None]
        dist.broadcast_object_list(already, src=0)  # all ranks skip a stored pair, or none does
        if already[0]:
            return rows
        pair = split_pair(loaded, spec.checkpoint, task, rank, world, **options)
        if pair is None:
            return None
        rows, note = pair
    elif rows is not None:
        return rows
    else:
        rows, note, _ = scored_pair(loaded, spec.checkpoint, task, **options)
    if store is not None:
        store.write_pair(spec.checkpoint, task.name, rows, note)
    return rows


def stored_rows(store, spec, task, dtype: str, overwrite: bool) -> pd.DataFrame | None:
    """The stored rows of a finished pair (None when it is still to score); other items or dtype is an error."""
    from capscale.evaluate import pending_tasks

    if pending_tasks(store, spec, [task], dtype, overwrite):
        return None
    return pd.read_parquet(store.pair_path(spec.checkpoint, task.name))
