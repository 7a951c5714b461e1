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

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from capscale.errors import CheckpointError, StoreError
from capscale.ladderspec import CheckpointSpec, load_checkpoint_meta
from capscale.store import CHOICE_COLUMNS, ResultsStore, corrupt_message, same_path

SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$")
DEFAULT_FAMILY = "lm-eval"


@dataclass
class IngestReport:
    pairs_written: int = 0
    pairs_skipped_existing: int = 0
    tasks_skipped_not_mc: list[tuple[str, str]] = field(default_factory=list)  # (samples file, reason)
    n_rows: int = 0
    warnings: list[str] = field(default_factory=list)


class _SkipTask(Exception):
    """A task we cannot turn into correct per-choice rows; reported, never written."""


@dataclass
class _Run:
    """One lm-eval invocation's files for one task."""

    samples: Path
    task: str
    results: Path


# --- finding and reading files ----------------------------------------------------------

def find_runs(src: Path) -> list[_Run]:
    """Every samples_<task>_<ts>.jsonl under ``src`` with the results file of the same timestamp beside it."""
    runs = []
    for samples in sorted(src.rglob("samples_*.jsonl")):
        m = SAMPLES_RE.match(samples.name)
        if m is None:
            raise StoreError(f"{samples}: name is not samples_<task>_<timestamp>.jsonl as lm-eval writes it")
        ts = m.group("ts")
        results = samples.parent / f"results_{ts}.json"
        if not results.exists():
            # lm-eval names it <stem>_<ts>.json when --output_path ends in .json
            others = sorted(samples.parent.glob(f"*_{ts}.json"))
            if len(others) != 1:
                raise StoreError(
                    f"{samples}: no results_{ts}.json beside it; lm-eval writes both in one run, "
                    "copy the results file along with the samples"
                )
            results = others[0]
        runs.append(_Run(samples, m.group("task"), results))
    return runs


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: cannot read lm-eval results file: {e}") from e


def read_samples(path: Path) -> list[tuple[int, dict]]:
    """(1-based line number, sample) per doc; lm-eval writes a doc once per filter, keep the first."""
    out: list[tuple[int, dict]] = []
    seen: dict[str, tuple[int, list]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise StoreError(f"{path}:{line_no}: malformed JSON line: {e}") from e
            missing = [k for k in ("doc_id", "arguments", "resps", "target") if not isinstance(sample, dict)
                       or k not in sample]
            if missing:
                raise StoreError(f"{path}:{line_no}: sample lacks {missing}; not an lm-eval --log_samples line")
            key = str(sample["doc_id"])
            if key in seen:
                first_line, first_resps = seen[key]
                if sample["resps"] != first_resps:
                    raise StoreError(
                        f"{path}:{line_no}: doc_id {key} already appeared at line {first_line} with other responses"
                    )
                continue
            seen[key] = (line_no, sample["resps"])
            out.append((line_no, sample))
    if not out:
        raise StoreError(f"{path}: no samples")
    return out


# --- model identity and manifest --------------------------------------------------------

def model_args(results: dict) -> dict:
    """lm-eval 0.4.x stores model_args as a dict; older files as 'k=v,k=v'."""
    args = results.get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        parsed = {}
        for part in args.split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                parsed[k.strip()] = v.strip()
        args = parsed
    return args


def model_identity(results: dict) -> tuple[str, str | None]:
    """(pretrained path or hub id, revision or None): what distinguishes one evaluated model."""
    args = model_args(results)
    pretrained = args.get("pretrained") or args.get("model") or results.get("model_name") or ""
    revision = args.get("revision")
    if revision in (None, "", "main"):
        revision = None
    return str(pretrained), (str(revision) if revision is not None else None)


def path_parts(pretrained: str) -> list[str]:
    """The folders of a model path or hub id, root excluded ('/ckpt/runA/step20' -> ckpt, runA, step20)."""
    path = Path(pretrained.rstrip("/"))
    return [part for part in path.parts if part != path.anchor] or [pretrained]


def suffix_name(identity: tuple[str, str | None], depth: int) -> str:
    """The last ``depth`` folders joined by '-'; a revision (e.g. Pythia's step143000) is kept after '@'."""
    pretrained, revision = identity
    name = "-".join(path_parts(pretrained)[-depth:])
    return f"{name}@{revision}" if revision else name


def checkpoint_names(identities, taken: dict[str, str]) -> dict[tuple[str, str | None], str]:
    """A unique checkpoint name per model: the shortest tail of its path that no other model of this
    ingest, and no checkpoint of another path already in the store (``taken``: name -> path), uses.
    A model alone keeps its folder name; runA/step20 and runB/step20 become runA-step20 and runB-step20.
    A model already in the store (same path and revision) keeps its name there, so ingesting its runs
    again, alone or with others, never files them under a second name. Two models whose whole paths
    give one name are an error naming both."""
    known = {}
    for identity in identities:
        same = [name for name, path in taken.items()
                if same_path(path, identity[0]) and (name.rpartition("@")[2] if "@" in name else None) == identity[1]]
        if len(same) == 1:
            known[identity] = same[0]
    rest = [identity for identity in identities if identity not in known]
    depth = {identity: 1 for identity in rest}
    while True:
        names = {identity: suffix_name(identity, depth[identity]) for identity in rest}
        groups: dict[str, list] = {}
        for identity, name in names.items():
            groups.setdefault(name, []).append(identity)
        clashes = [(name, group) for name, group in groups.items()
                   if len(group) > 1 or name in known.values()
                   or (name in taken and not same_path(taken[name], group[0][0]))]
        if not clashes:
            return {**known, **names}
        for name, group in clashes:
            longer = [i for i in group if depth[i] < len(path_parts(i[0]))]
            if not longer:
                others = [i[0] + (f"@{i[1]}" if i[1] else "") for i in group]
                if len(group) == 1:
                    others.append(f"{taken.get(name, name)} (already in the store)")
                raise StoreError(f"models {' and '.join(others)} would both be named {name!r}; name them with "
                                 "--meta (a checkpoint per path) or ingest them into separate stores")
            for identity in longer:
                depth[identity] += 1


def match_meta(identity: tuple[str, str | None], name: str, meta: list[CheckpointSpec]) -> CheckpointSpec | None:
    """The metadata entry of a model: by checkpoint name, else (without a revision) by path."""
    for spec in meta:
        if spec.checkpoint == name:
            return spec
    pretrained, revision = identity
    if revision is None:
        hits = [spec for spec in meta if spec.path and same_path(spec.path, pretrained)]
        if len(hits) == 1:
            return hits[0]
    return None


def non_embedding_params(pretrained: str, reported_total: int | None) -> tuple[int | None, int | None, str | None]:
    """(params, params_total, note). lm-eval reports only the total (embeddings included); the
    ladder's ``params`` is non-embedding, so count it from config.json on the meta device
    (no weights loaded) when the checkpoint directory is here."""
    config_path = Path(pretrained) / "config.json" if pretrained else None
    if config_path is None or not config_path.exists():
        return None, reported_total, (
            f"checkpoint {pretrained!r} is not a local directory: non-embedding params unknown (left NaN)"
        )
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from capscale.models import count_params

        config = AutoConfig.from_pretrained(config_path.parent)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params, total = count_params(model)
    except Exception as e:  # any failure only costs the parameter count, never the rows
        return None, reported_total, f"cannot count parameters from {config_path}: {e} (params left NaN)"
    if reported_total is not None and total != reported_total:
        return None, reported_total, (
            f"{config_path} describes {total} parameters but lm-eval reported {reported_total}: "
            "not the evaluated model? (params left NaN)"
        )
    return params, total, None


def manifest_record(checkpoint: str, pretrained: str, revision: str | None, results: dict,
                    meta: CheckpointSpec | None) -> tuple[dict, str | None]:
    """The model's manifest row (unknown fields None) and a note on what could not be measured.
    ``meta`` (from --meta) gives family, model and the scale; params are counted only where it has none."""
    given = {k: getattr(meta, k) for k in ("family", "model", "step", "params", "params_total", "tokens", "flops")
             } if meta is not None else {}
    note = None
    if given.get("params") is None:
        reported = results.get("config", {}).get("model_num_parameters")
        reported = int(reported) if isinstance(reported, (int, float)) and reported > 0 else None
        given["params"], counted_total, note = non_embedding_params(pretrained, reported)
        given["params_total"] = given.get("params_total") or counted_total
    if given.get("step") is None and revision and re.fullmatch(r"step(\d+)", revision):
        given["step"] = int(revision[4:])
    if given.get("flops") is None and given.get("params") is not None and given.get("tokens") is not None:
        given["flops"] = 6.0 * given["params"] * given["tokens"]
    record = {"checkpoint": checkpoint, "path": pretrained, **{k: v for k, v in given.items() if v not in ("", None)}}
    return record, note


# --- one task's samples -> rows ---------------------------------------------------------

def target_delimiter(config: dict, results: dict) -> str:
    """The delimiter lm-eval put before each choice; with a chat template it drops it unless gen_prefix
    ends without whitespace (lm-eval api/task.py construct_requests)."""
    delimiter = config.get("target_delimiter", " ")
    delimiter = " " if delimiter is None else str(delimiter)
    if results.get("chat_template"):
        gen_prefix = config.get("gen_prefix")
        if not (gen_prefix and not gen_prefix[-1:].isspace()):
            delimiter = ""
    return delimiter


def parse_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return value == "True"
    raise StoreError(f"{where}: is_greedy {value!r} is not True/False")


def parse_logprob(value, where: str) -> float:
    try:
        lp = float(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: log-likelihood {value!r} is not a number") from e
    if not math.isfinite(lp):
        raise StoreError(f"{where}: log-likelihood is {lp}; the run's logits were not finite")
    return lp


def choice_requests(sample: dict, where: str) -> list[tuple[str, str, float, bool]]:
    """(context, continuation, logprob, greedy) per choice, unconditional mutual-info requests dropped."""
    args = sample["arguments"]
    if isinstance(args, dict):
        keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else -1)
        args = [args[k] for k in keys]
    requests = []
    resps = sample["resps"]
    if not isinstance(resps, list) or len(resps) != len(args):
        raise StoreError(f"{where}: 'arguments' and 'resps' do not pair up one response per request")
    for j, (arg, resp) in enumerate(zip(args, resps)):
        if isinstance(arg, dict):
            context, continuation = arg.get("arg_0"), arg.get("arg_1")
        elif isinstance(arg, (list, tuple)) and len(arg) == 2:
            context, continuation = arg
        else:
            context = continuation = None
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise _SkipTask(f"{where}: request {j} is not a (context, continuation) pair of strings")
        if not (isinstance(resp, list) and len(resp) >= 1 and isinstance(resp[0], (list, tuple)) and len(resp[0]) == 2):
            raise _SkipTask(f"{where}: response {j} is not [logprob, is_greedy] (not a log-likelihood task)")
        lp = parse_logprob(resp[0][0], f"{where}: choice {j}")
        requests.append((context, continuation, lp, parse_bool(resp[0][1], f"{where}: choice {j}")))
    n = len(requests)
    if "acc_mutual_info" in (sample.get("metrics") or []) and n % 2 == 0:
        half = n // 2
        unconditional = requests[half:]
        if all(c == "" for c, *_ in unconditional) and [r[1] for r in unconditional] == [r[1] for r in requests[:half]]:
            requests = requests[:half]
    if not requests:
        raise _SkipTask(f"{where}: no choices")
    if len({c for c, *_ in requests}) > 1:
        raise _SkipTask(f"{where}: choices differ in their context (multiple-input task such as winogrande); "
                        "the samples do not say which context is gold")
    return requests


def gold_index(target, choices: list[str], where: str) -> int:
    """lm-eval's rule: a digit string is an index (doc_to_target rendered an int), else the choice text."""
    if isinstance(target, bool):
        raise StoreError(f"{where}: target {target!r} is neither a choice index nor a choice text")
    if isinstance(target, int):
        index = target
    elif isinstance(target, str) and target.isdigit() and int(target) < len(choices):
        index = int(target)
    elif isinstance(target, str) and target in choices:
        index = choices.index(target)
    else:
        if isinstance(target, str) and target.startswith("["):
            try:
                value = ast.literal_eval(target)
            except (SyntaxError, ValueError):
                value = None
            if isinstance(value, list):
                raise _SkipTask(f"{where}: target {target} lists several gold choices; one gold per item is required")
        raise StoreError(
            f"{where}: target {target!r} is neither a choice index nor one of the choices {choices!r}"
        )
    if not 0 <= index < len(choices):
        raise StoreError(f"{where}: gold index {index} is out of range for {len(choices)} choices")
    return index


class TokenCounter:
    """Continuation token counts exactly as lm-eval's HF backend splits (context, continuation)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        from capscale.scoring.encoding import prefix_token_id

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises many types here
            raise CheckpointError(f"{path}: cannot load tokenizer: {e}") from e
        self.path = path
        self.prefix_id = prefix_token_id(self.tokenizer)
        self.prefix_text = self.tokenizer.decode([self.prefix_id])

    def count(self, context: str, continuation: str) -> int:
        from capscale.scoring.encoding import encode_pair

        _, cont = encode_pair(self.tokenizer, context, continuation, self.prefix_id, self.prefix_text)
        return len(cont)


def task_rows(run: _Run, samples: list[tuple[int, dict]], config: dict, results: dict,
              checkpoint: str, counter: TokenCounter | None) -> tuple[pd.DataFrame, dict]:
    """All rows of one (checkpoint, task), or _SkipTask / StoreError; nothing is written here."""
    delimiter = target_delimiter(config, results)
    ids = [s["doc"].get("id") if isinstance(s.get("doc"), dict) else None for _, s in samples]
    use_doc_ids = all(i is not None for i in ids) and len({str(i) for i in ids}) == len(ids)
    check_metrics = not config.get("process_results")  # custom process_results: acc may mean something else
    cols: dict[str, list] = {c: [] for c in CHOICE_COLUMNS}
    n_mutual_info = 0
    for (line_no, sample), doc_key in zip(samples, ids):
        where = f"{run.samples}:{line_no}"
        requests = choice_requests(sample, where)
        if len(requests) < len(sample["resps"]):
            n_mutual_info += 1
        choices = []
        for j, (_, continuation, _, _) in enumerate(requests):
            if not continuation.startswith(delimiter):
                raise _SkipTask(f"{where}: continuation {continuation!r} of choice {j} does not start with the "
                                f"task's target_delimiter {delimiter!r}")
            choices.append(continuation[len(delimiter):])
        gold = gold_index(sample["target"], choices, where)
        logprobs = [r[2] for r in requests]
        n_chars = [len(c) for c in choices]
        if check_metrics:
            lls = np.asarray(logprobs, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):  # an empty choice: inf/nan, as in lm-eval
                normed = lls / np.asarray(n_chars, dtype=np.float64)
            ours = {"acc": float(int(np.argmax(lls)) == gold), "acc_norm": float(int(np.argmax(normed)) == gold)}
            for metric, value in ours.items():
                theirs = sample.get(metric)
                if isinstance(theirs, (int, float)) and float(theirs) != value:
                    raise _SkipTask(f"{where}: lm-eval's per-doc {metric}={theirs} but these rows give {value}; "
                                    "the gold index or choice texts were misread")
        item = str(doc_key) if use_doc_ids else str(sample["doc_id"])
        for j, (context, continuation, lp, greedy) in enumerate(requests):
            cols["checkpoint"].append(checkpoint)
            cols["task"].append(run.task)
            cols["item"].append(item)
            cols["choice"].append(j)
            cols["gold"].append(j == gold)
            cols["logprob"].append(lp)
            cols["n_tokens"].append(counter.count(context, continuation) if counter else -1)
            cols["n_chars"].append(n_chars[j])
            cols["n_bytes"].append(len(choices[j].encode("utf-8")))
            cols["greedy"].append(greedy)
    rows = pd.DataFrame(cols)
    for c in ("choice", "n_tokens", "n_chars", "n_bytes"):
        rows[c] = rows[c].astype(np.int32)
    rows["gold"] = rows["gold"].astype(bool)
    rows["greedy"] = rows["greedy"].astype(bool)
    info = {
        "source": "lm-eval", "checkpoint": checkpoint, "task": run.task,
        "samples_file": str(run.samples), "results_file": str(run.results),
        "lm_eval_version": results.get("lm_eval_version"), "model_args": model_args(results),
        "num_fewshot": config.get("num_fewshot"), "target_delimiter": delimiter,
        "n_items": len(samples), "item_ids": "doc id" if use_doc_ids else "doc_id",
        "n_items_mutual_info_requests_dropped": n_mutual_info,
        "tokenizer": counter.path if counter else None,
        "lm_eval_metrics": results.get("results", {}).get(run.task, {}),
    }
    return rows, info


# --- the entry point --------------------------------------------------------------------

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
            except _SkipTask as e:
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
