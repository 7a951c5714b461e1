"""Evaluate checkpoints x tasks into the results store, skipping pairs already done.

The unit of work and of atomic writing is one (checkpoint, task) pair: a rerun of the same
command skips finished pairs, so a killed run resumes where it stopped with no lost or
duplicated rows. A pair whose stored fingerprint (task content, dtype) differs from the
current request is not silently reused: it raises unless ``overwrite`` is set. A finished pair
whose file is unreadable raises too, unless ``repair`` is set: then that pair alone is redone.
A checkpoint whose pairs are all done but which has no manifest row (a store written by an older
capscale, or edited by hand) is registered again, so a rerun always leaves a readable store.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from capscale.errors import CapscaleError, StoreError
from capscale.ladderspec import CheckpointSpec
from capscale.metrics import item_metrics
from capscale.store import ResultsStore, corrupt_message
from capscale.tasks.schema import MCTask


@dataclass
class PairResult:
    checkpoint: str
    task: str
    status: str  # "done", "skipped", "failed"
    n_items: int = 0
    acc: float = float("nan")
    n_truncated: int = 0
    mode: str = ""
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    message: str = ""


@dataclass
class RunSummary:
    pairs: list[PairResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PairResult]:
        return [p for p in self.pairs if p.status == "failed"]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.pairs])


def task_fingerprint(task: MCTask, dtype: str) -> str:
    h = hashlib.sha256()
    for item in task.items:
        h.update(json.dumps([item.id, item.context, list(item.choices), item.gold, item.delimiter]).encode())
    h.update(dtype.encode())
    return h.hexdigest()[:16]


def choice_rows(checkpoint: str, task: MCTask, report) -> pd.DataFrame:
    items = task.items
    choices = [items[i].choices[j] for i, j in zip(report.item_index, report.choice_index)]
    return pd.DataFrame(
        {
            "checkpoint": checkpoint,
            "task": task.name,
            "item": [items[i].id for i in report.item_index],
            "choice": report.choice_index.astype(np.int32),
            "gold": [items[i].gold == j for i, j in zip(report.item_index, report.choice_index)],
            "logprob": report.logprob,
            "n_tokens": report.n_tokens.astype(np.int32),
            "n_chars": np.array([len(c) for c in choices], dtype=np.int32),
            "n_bytes": np.array([len(c.encode("utf-8")) for c in choices], dtype=np.int32),
            "greedy": report.greedy,
        }
    )


def manifest_record(spec: CheckpointSpec, loaded) -> dict:
    params = spec.params if spec.params is not None else loaded.params
    params_total = spec.params_total if spec.params_total is not None else loaded.params_total
    flops = spec.flops
    if flops is None and spec.tokens is not None:
        flops = 6.0 * params * spec.tokens
    return {
        "checkpoint": spec.checkpoint, "family": spec.family, "params": params, "tokens": spec.tokens,
        "flops": flops, "step": spec.step, "path": spec.path, "model": spec.model, "params_total": params_total,
    }


def load_and_register(spec: CheckpointSpec, store: ResultsStore, device: str, dtype: str):
    """Load a checkpoint and record it in the store's manifest (scale metadata measured where missing)."""
    from capscale.models import load_checkpoint

    loaded = load_checkpoint(spec.path, device=device, dtype=dtype)
    store.upsert_checkpoint(manifest_record(spec, loaded))
    return loaded


def pending_tasks(store: ResultsStore, spec: CheckpointSpec, tasks: list[MCTask], dtype: str, overwrite: bool,
                  repair: bool = False):
    """Tasks of ``spec`` still to score: absent, ``overwrite``, or (with ``repair``) unreadable pairs."""
    pending = []
    for task in tasks:
        if not store.has_pair(spec.checkpoint, task.name) or overwrite:
            pending.append(task)
            continue
        broken = store.broken_file(store.pair_files(spec.checkpoint, task.name), full=repair)
        if broken is not None:
            if not repair:
                raise StoreError(corrupt_message(*broken))
            pending.append(task)
            continue
        info = store.run_info(spec.checkpoint, task.name)
        if info is None:
            pending.append(task)
        elif info.get("fingerprint") != task_fingerprint(task, dtype):
            raise StoreError(
                f"{store.pair_path(spec.checkpoint, task.name)}: stored results were made from other task items "
                f"or another dtype than this run's; pass --overwrite to replace them or use another --out"
            )
    return pending


def is_registered(store: ResultsStore, checkpoint: str) -> bool:
    return checkpoint in set(store.read_manifest()["checkpoint"])


def run_note(checkpoint: str, task: MCTask, report, dtype: str, device: str, max_length: int, seconds: float) -> dict:
    """The run note of a scored pair (runs/<pair>.json): what was counted, and the fingerprint."""
    return {
        "checkpoint": checkpoint, "task": task.name, "task_source": task.source,
        "task_meta": task.meta, "fingerprint": task_fingerprint(task, dtype), "dtype": dtype,
        "device": device, "max_length": max_length, "mode": report.mode,
        "n_items": len(task.items), "n_truncated_items": report.n_truncated_items,
        "tokens_in": report.tokens_in, "tokens_requested": report.tokens_requested,
        "seconds": seconds, "warnings": report.warnings,
    }


def done_result(checkpoint: str, task: MCTask, rows: pd.DataFrame, report, seconds: float) -> PairResult:
    return PairResult(
        checkpoint, task.name, "done", len(task.items), float(item_metrics(rows)["acc"].mean()),
        report.n_truncated_items, report.mode, seconds, report.tokens_requested / max(seconds, 1e-9),
        "; ".join(report.warnings),
    )


def scored_pair(loaded, checkpoint: str, task: MCTask, *, token_budget: int | None = None, mode: str = "auto",
                progress: bool = True) -> tuple[pd.DataFrame, dict, PairResult]:
    """(per-choice rows, run note, result) of one pair scored with an already-loaded model; nothing written."""
    from capscale.scoring.loglik import score_items

    start = time.perf_counter()
    report = score_items(
        loaded.model, loaded.tokenizer, task.items, max_length=loaded.max_length, device=loaded.device,
        token_budget=token_budget, mode=mode, progress=progress, desc=f"{checkpoint}/{task.name}",
    )
    seconds = time.perf_counter() - start
    rows = choice_rows(checkpoint, task, report)
    note = run_note(checkpoint, task, report, loaded.dtype, loaded.device, loaded.max_length, seconds)
    return rows, note, done_result(checkpoint, task, rows, report, seconds)


def score_task(loaded, checkpoint: str, task: MCTask, store: ResultsStore, *, token_budget: int | None = None,
               mode: str = "auto", progress: bool = True) -> PairResult:
    """Score one (checkpoint, task) pair and write it atomically into the store.

    The one place a pair is made: the serial loop, the Ray workers and ``capscale.score`` all come
    through :func:`scored_pair`, so every path writes the same rows and run note."""
    rows, note, result = scored_pair(loaded, checkpoint, task, token_budget=token_budget, mode=mode,
                                     progress=progress)
    store.write_pair(checkpoint, task.name, rows, note)
    return result


def evaluate_checkpoint(spec: CheckpointSpec, tasks: list[MCTask], store: ResultsStore, *, device: str = "cpu",
                        dtype: str = "float32", token_budget: int | None = None, mode: str = "auto",
                        overwrite: bool = False, repair: bool = False, progress: bool = True,
                        keep_going: bool = True, on_pair=None) -> list[PairResult]:
    """Every pending task of one checkpoint: loaded once, its tasks scored one after another.

    ``on_pair(result)`` is called as each pair ends (skipped, done or failed): the progress bar."""
    report = on_pair or (lambda result: None)
    results: list[PairResult] = []

    def add(result: PairResult) -> None:
        results.append(result)
        report(result)

    todo = pending_tasks(store, spec, tasks, dtype, overwrite, repair)
    todo_names = {t.name for t in todo}
    for task in tasks:
        if task.name not in todo_names:
            add(PairResult(spec.checkpoint, task.name, "skipped", len(task.items)))
    if not todo and is_registered(store, spec.checkpoint):
        return results
    try:
        loaded = load_and_register(spec, store, device, dtype)
    except CapscaleError as e:
        if not keep_going:
            raise
        for task in todo:
            add(PairResult(spec.checkpoint, task.name, "failed", message=str(e)))
        if not todo:  # only the manifest row was missing: its pairs cannot be summarised without it
            for pair in results:
                pair.status, pair.message = "failed", f"no row in checkpoints.csv and cannot register it: {e}"
        return results
    for task in todo:
        try:
            add(score_task(loaded, spec.checkpoint, task, store, token_budget=token_budget, mode=mode,
                           progress=progress))
        except CapscaleError as e:
            if not keep_going:
                raise
            add(PairResult(spec.checkpoint, task.name, "failed", message=str(e)))
    return results


def evaluate(
    specs: list[CheckpointSpec],
    tasks: list[MCTask],
    store: ResultsStore,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    token_budget: int | None = None,
    mode: str = "auto",
    overwrite: bool = False,
    repair: bool = False,
    progress: bool = True,
    keep_going: bool = True,
) -> RunSummary:
    """Score every pending (checkpoint, task) pair; failures of one checkpoint do not stop the others."""
    store.create()
    store.remove_stale_temporaries()
    summary = RunSummary()
    with tqdm(total=len(specs) * len(tasks), desc="pairs", unit="pair", disable=not progress) as outer:
        def on_pair(result: PairResult) -> None:
            outer.set_postfix_str(f"{result.checkpoint} / {result.task}")
            outer.update(1)

        for spec in specs:
            summary.pairs += evaluate_checkpoint(
                spec, tasks, store, device=device, dtype=dtype, token_budget=token_budget, mode=mode,
                overwrite=overwrite, repair=repair, progress=progress, keep_going=keep_going, on_pair=on_pair,
            )
    return summary
