"""One task's lm-eval sample lines -> per-choice rows (with lm-eval's own per-doc metrics re-checked)."""

from __future__ import annotations

import ast
import math

import numpy as np
import pandas as pd

from capscale.errors import CheckpointError, StoreError
from capscale.ingest.files import SamplesRun
from capscale.ingest.identity import model_args
from capscale.store import CHOICE_COLUMNS


class SkipTask(Exception):
    """A task we cannot turn into correct per-choice rows; reported, never written."""


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
            raise SkipTask(f"{where}: request {j} is not a (context, continuation) pair of strings")
        if not (isinstance(resp, list) and len(resp) >= 1 and isinstance(resp[0], (list, tuple)) and len(resp[0]) == 2):
            raise SkipTask(f"{where}: response {j} is not [logprob, is_greedy] (not a log-likelihood task)")
        lp = parse_logprob(resp[0][0], f"{where}: choice {j}")
        requests.append((context, continuation, lp, parse_bool(resp[0][1], f"{where}: choice {j}")))
    n = len(requests)
    if "acc_mutual_info" in (sample.get("metrics") or []) and n % 2 == 0:
        half = n // 2
        unconditional = requests[half:]
        if all(c == "" for c, *_ in unconditional) and [r[1] for r in unconditional] == [r[1] for r in requests[:half]]:
            requests = requests[:half]
    if not requests:
        raise SkipTask(f"{where}: no choices")
    if len({c for c, *_ in requests}) > 1:
        raise SkipTask(f"{where}: choices differ in their context (multiple-input task such as winogrande); "
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
                raise SkipTask(f"{where}: target {target} lists several gold choices; one gold per item is required")
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


def task_rows(run: SamplesRun, samples: list[tuple[int, dict]], config: dict, results: dict,
              checkpoint: str, counter: TokenCounter | None) -> tuple[pd.DataFrame, dict]:
    """All rows of one (checkpoint, task), or SkipTask / StoreError; nothing is written here."""
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
                raise SkipTask(f"{where}: continuation {continuation!r} of choice {j} does not start with the "
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
                    raise SkipTask(f"{where}: lm-eval's per-doc {metric}={theirs} but these rows give {value}; "
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
