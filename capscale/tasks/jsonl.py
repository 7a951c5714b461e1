"""Load our multiple-choice JSONL format (docs/design.md): one item per line.

``{"id": "q17", "context": "...", "choices": ["...", "..."], "gold": 1}``

A sidecar ``<file>.yaml`` (same stem) may set ``target_delimiter`` and ``name``.
Every error names the file and the 1-based line, because users fix these files by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from capscale.errors import TaskFormatError
from capscale.tasks.schema import MCItem, MCTask, validate_items


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".yaml")


def read_sidecar(path: Path) -> dict:
    """Optional per-task settings next to the JSONL file."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        data = yaml.safe_load(side.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"{side}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise TaskFormatError(f"{side}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise TaskFormatError(f"{side}: expected a mapping of settings")
    return data


def parse_mc_line(obj: object, where: str, delimiter: str) -> MCItem:
    if not isinstance(obj, dict):
        raise TaskFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("id", "context", "choices", "gold") if k not in obj]
    if missing:
        raise TaskFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    choices = obj["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise TaskFormatError(f"{where}: 'choices' must be a list of strings")
    if not choices:
        raise TaskFormatError(f"{where}: empty choice list")
    gold = obj["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise TaskFormatError(f"{where}: 'gold' must be an integer index, got {gold!r}")
    if not 0 <= gold < len(choices):
        raise TaskFormatError(f"{where}: gold={gold} is out of range for {len(choices)} choices")
    if not isinstance(obj["context"], str):
        raise TaskFormatError(f"{where}: 'context' must be a string")
    return MCItem(
        id=str(obj["id"]),
        context=obj["context"],
        choices=tuple(choices),
        gold=gold,
        delimiter=str(obj.get("target_delimiter", delimiter)),
    )


def read_jsonl_items(path: Path, parse) -> list:
    """``parse(obj, where)`` on every non-empty line; non-UTF-8 text, malformed JSON and duplicate ids
    name file:line."""
    if not path.is_file():
        raise TaskFormatError(f"{path}: not a file (a task is one JSONL file)")
    items, seen = [], {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskFormatError(f"{where}: not UTF-8 text (byte {e.start} of the line); save the file as "
                                      "UTF-8") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            item = parse(obj, where)
            if item.id in seen:
                raise TaskFormatError(f"{where}: duplicate item id {item.id!r} (first on line {seen[item.id]})")
            seen[item.id] = lineno
            items.append(item)
    return items


def load_jsonl_task(path: str | Path, delimiter: str | None = None, name: str | None = None) -> MCTask:
    """Read and validate a multiple-choice JSONL file; ``delimiter`` overrides the sidecar."""
    path = Path(path)
    if not path.exists():
        raise TaskFormatError(f"{path}: task file not found")
    side = read_sidecar(path)
    delim = delimiter if delimiter is not None else str(side.get("target_delimiter", " "))
    items = read_jsonl_items(path, lambda obj, where: parse_mc_line(obj, where, delim))
    task = MCTask(name=name or side.get("name") or path.stem, items=items, source=str(path),
                  meta={"target_delimiter": delim})
    validate_items(task.items, str(path))
    return task


def lm_eval_json_dataset(task_name: str, data_file: str, header: str = "") -> str:
    """The head of an lm-eval task config that reads one of our JSONL files as its test split."""
    return (
        header
        + f"task: {task_name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n"
        "test_split: test\n"
    )


def lm_eval_yaml(task_name: str, data_file: str, header: str = "") -> str:
    """The lm-eval task config that runs a multiple-choice JSONL file of ours unchanged, so lm-eval
    and capscale score the same strings (``data_files`` resolves against lm-eval's working directory)."""
    return (
        lm_eval_json_dataset(task_name, data_file, header)
        + "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
