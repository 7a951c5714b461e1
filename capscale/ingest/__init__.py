"""Turn lm-eval ``--log_samples`` output into per-choice rows of the results store.

Users who already ran lm-eval on a cluster can forecast from those runs without
re-scoring. lm-eval writes, per model, ``results_<ts>.json`` (task configs, model args,
aggregate metrics) and one ``samples_<task>_<ts>.jsonl`` per task (one line per doc, with
every (context, continuation) request and its ``[logprob, is_greedy]`` response).

What lm-eval's sample lines look like, and what this module relies on:
- every value in ``resps`` is a *string* (``"-15.34"``, ``"False"``); ``target`` is also
  ``str()``-ed, so an index 0 arrives as ``"0"`` and a list of golds as ``"[0, 2]"``;
- ``arguments`` is a dict ``gen_args_<i>: {arg_0: context, arg_1: continuation}`` (sorted
  here by the number, so ``gen_args_10`` follows ``gen_args_9``);
- the continuation is ``target_delimiter + choice``; the choice text (whose length
  lm-eval's acc_norm divides by) is the continuation without that delimiter;
- tasks with ``acc_mutual_info`` append one unconditional request ``("", continuation)``
  per choice; those are dropped, they are not choices;
- multiple-input tasks (Winogrande style: the choices sit in the contexts) do not say
  which context is gold, and list targets mean several golds: both are skipped.

Each line's own ``acc``/``acc_norm`` (lm-eval's per-doc metrics) are recomputed from the
rows we build; a disagreement means we misread the task, so the task is skipped rather
than written wrong.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from capscale.errors import StoreError
from capscale.ingest.files import find_runs, read_json, read_samples
from capscale.ingest.identity import checkpoint_names, manifest_record, match_meta, model_identity
from capscale.ingest.rows import SkipTask, TokenCounter, task_rows
from capscale.ladderspec import CheckpointSpec, load_checkpoint_meta
from capscale.store import ResultsStore, corrupt_message

DEFAULT_FAMILY = "lm-eval"


@dataclass
class IngestReport:
    pairs_written: int = 0
    pairs_skipped_existing: int = 0
    tasks_skipped_not_mc: list[tuple[str, str]] = field(default_factory=list)  # (samples file, reason)
    n_rows: int = 0
    warnings: list[str] = field(default_factory=list)


def same_rows(stored: pd.DataFrame, rows: pd.DataFrame) -> bool:
    """Do two pairs hold the same numbers (items, choices, gold, log-likelihoods)? Token counts aside."""
    key = ["item", "choice"]
    cols = key + ["gold", "logprob"]
    a = stored[cols].sort_values(key).reset_index(drop=True)
    b = rows[cols].sort_values(key).reset_index(drop=True)
    return len(a) == len(b) and a.astype(str).equals(b.astype(str))


def resolve_names(src: Path, identities: list, store: ResultsStore, checkpoint: str | None,
                  meta: list[CheckpointSpec] | None, meta_path) -> tuple[dict, dict]:
    """(name per model identity, metadata entry per model identity); errors name the models concerned."""
    if checkpoint is not None:
        if len(identities) > 1:
            names = ", ".join(sorted(p + (f"@{v}" if v else "") for p, v in identities))
            raise StoreError(
                f"{src}: holds runs of {len(identities)} models ({names}); "
                "checkpoint= would give them one name; ingest each model's folder separately"
            )
        names = {identities[0]: checkpoint}
    else:
        manifest = store.read_manifest()
        taken = dict(zip(manifest["checkpoint"].astype(str), manifest["path"].astype(str)))
        names = checkpoint_names(identities, taken)
    if meta is None:
        return names, {}
    entries, missing = {}, []
    for identity in identities:
        entry = match_meta(identity, names[identity], meta)
        if entry is None:
            missing.append(f"{identity[0]}{'@' + identity[1] if identity[1] else ''} (checkpoint {names[identity]!r})")
        else:
            entries[identity] = entry
            names[identity] = entry.checkpoint
    if missing:
        raise StoreError(f"{meta_path}: no entry for {'; '.join(missing)}; add a row per model "
                         "(checkpoint name, or its path)")
    used: dict[str, tuple] = {}
    for identity, name in names.items():
        if name in used:
            raise StoreError(f"{meta_path}: entry {name!r} matches two models, {used[name][0]} and {identity[0]}")
        used[name] = identity
    return names, entries


def ingest_lm_eval(
    src: str | Path,
    store: ResultsStore,
    *,
    tokenizer: str | None = None,
    family: str | None = None,
    checkpoint: str | None = None,
    meta: str | Path | None = None,
    repair: bool = False,
    progress: bool = True,
) -> IngestReport:
    """Write one (checkpoint, task) pair per multiple-choice task found under ``src``.

    Nothing is dropped silently: each model gets its own checkpoint name (:func:`checkpoint_names`);
    a pair already in the store is skipped only when it holds the same numbers (re-running is
    idempotent) and is an error naming both sources when it does not; tasks that cannot give correct
    per-choice rows are skipped and reported; corrupt files raise StoreError (``repair`` rewrites an
    unreadable stored pair). ``meta`` (a ladder spec or a CSV, see
    :func:`capscale.ladderspec.load_checkpoint_meta`) gives every model its family, model, params,
    tokens and step, so the store forecasts directly.
    """
    src = Path(src)
    if not src.exists():
        raise StoreError(f"{src}: no such file or directory")
    meta_specs = load_checkpoint_meta(meta) if meta is not None else None
    runs = find_runs(src)
    if not runs:
        raise StoreError(f"{src}: no samples_*.jsonl found; run lm-eval with --log_samples --output_path")
    store.create()
    report = IngestReport()

    def warn(message: str) -> None:
        report.warnings.append(message)
        warnings.warn(message, stacklevel=3)

    results_cache: dict[Path, dict] = {}
    for run in runs:
        if run.results not in results_cache:
            results_cache[run.results] = read_json(run.results)
            if checkpoint is None and not model_identity(results_cache[run.results])[0]:
                raise StoreError(f"{run.results}: no pretrained path in model_args; pass checkpoint= to name the model")
    identities = sorted({model_identity(r) for r in results_cache.values()}, key=lambda i: (i[0], i[1] or ""))
    names, entries = resolve_names(src, identities, store, checkpoint, meta_specs, meta)
    if meta_specs is not None:
        unused = sorted({s.checkpoint for s in meta_specs} - set(names.values()))
        if unused:
            warn(f"{meta}: {len(unused)} entr{'y' if len(unused) == 1 else 'ies'} match no ingested model: "
                 f"{', '.join(unused[:10])}{' ...' if len(unused) > 10 else ''}")

    counter = TokenCounter(tokenizer) if tokenizer else None
    registered: set[str] = set()
    written_from: dict[tuple[str, str], Path] = {}

    def register(name: str, identity: tuple, results: dict) -> None:
        """Manifest row first, before any pair of the model is written or skipped (a missing row is repaired)."""
        if name in registered:
            return
        record, note = manifest_record(name, identity[0], identity[1], results, entries.get(identity))
        if note:
            warn(f"{name}: {note}")
        store.upsert_checkpoint({**record, **({"family": family} if family else {})},
                                defaults={"family": DEFAULT_FAMILY, "model": name})
        registered.add(name)

    for run in tqdm(runs, desc="lm-eval samples", unit="file", disable=not progress):
        results = results_cache[run.results]
        identity = model_identity(results)
        name = names[identity]
        config = results.get("configs", {}).get(run.task)
        if config is None:
            reason = f"{run.results} has no config for task {run.task!r}"
        elif config.get("output_type") != "multiple_choice":
            reason = f"output_type is {config.get('output_type')!r}, not multiple_choice"
        else:
            reason = None
        if reason is None:
            try:
                samples = read_samples(run.samples)
                rows, info = task_rows(run, samples, config, results, name, None)
            except SkipTask as e:
                reason = str(e)
        if reason is not None:
            report.tasks_skipped_not_mc.append((str(run.samples), reason))
            warn(f"skipped {run.samples}: {reason}")
            continue
        register(name, identity, results)
        if store.has_pair(name, run.task):
            broken = store.broken_file(store.pair_files(name, run.task), full=repair)
            if broken is not None and not repair:
                raise StoreError(corrupt_message(*broken))
            if broken is None:
                if not same_rows(pd.read_parquet(store.pair_path(name, run.task)), rows):
                    before = written_from.get((name, run.task)) or (store.run_info(name, run.task) or {}).get(
                        "samples_file", store.pair_path(name, run.task))
                    raise StoreError(
                        f"{run.samples}: checkpoint {name!r} task {run.task!r} is already in the store from "
                        f"{before} with other numbers: two different models (or runs) under one name; name them "
                        "apart (--meta, --checkpoint) or ingest into another --out")
                report.pairs_skipped_existing += 1
                continue
        if counter is not None:
            rows, info = task_rows(run, samples, config, results, name, counter)
        elif report.pairs_written == 0:
            warn("no tokenizer given: token counts are unknown (n_tokens = -1); pass a tokenizer for per-token metrics")
        store.write_pair(name, run.task, rows, info)
        written_from[(name, run.task)] = run.samples
        report.pairs_written += 1
        report.n_rows += len(rows)
    return report
