"""Load our generative JSONL format (docs/design.md): items scored by sampling, not by choices.

``{"id": "g3", "prompt": "890 + 169 =", "answer": "1059", "check": "exact", "stop": ["\\n"], "max_new_tokens": 8}``

Optional per line: ``stop`` (a string or a list of strings), ``max_new_tokens``, ``tests``
(the test code a ``python`` check runs) and ``include_prompt`` (whether the checked program is
prompt + completion). A sidecar ``<file>.yaml`` may set defaults for ``stop``,
``max_new_tokens`` and ``check``, and the task ``name``. Fields we do not know (``rank``,
``relation``, ...) are left alone, so task files can carry metadata for analysis.

Every item is checked here, before any sampling: an answer that can never match (a regex
that does not compile, a "number" that is not one, a python check without tests) would
otherwise cost a whole run and read as a model that never gets it right.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from capscale.errors import TaskFormatError
from capscale.tasks.jsonl import lm_eval_json_dataset, read_jsonl_items, read_sidecar, sidecar_path

CHECKS = ("exact", "number", "regex", "python")
SIDECAR_DEFAULTS = ("stop", "max_new_tokens", "check")


@dataclass(frozen=True)
class GenItem:
    """One prompt to sample from; ``check`` says how a completion is judged against ``answer``."""

    id: str
    prompt: str
    answer: str
    check: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 64
    tests: str | None = None
    include_prompt: bool = True


@dataclass
class GenTask:
    """A named list of generative items; ``source`` says where they came from (for error messages)."""

    name: str
    items: list[GenItem]
    source: str = ""
    meta: dict = field(default_factory=dict)


def parse_stop(value: object, where: str) -> tuple[str, ...]:
    """A string or a list of strings; an empty stop string would end every sample at once."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TaskFormatError(f"{where}: 'stop' must be a string or a list of strings, got {value!r}")
    if any(s == "" for s in value):
        raise TaskFormatError(f"{where}: 'stop' contains an empty string")
    return tuple(value)


def parse_max_new_tokens(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TaskFormatError(f"{where}: 'max_new_tokens' must be a positive integer, got {value!r}")
    return value


def parse_check(value: object, where: str) -> str:
    if value not in CHECKS:
        raise TaskFormatError(f"{where}: 'check' must be one of {', '.join(CHECKS)}; got {value!r}")
    return value


def validate_gen_item(item: GenItem, where: str) -> None:
    """What makes an item unanswerable whatever the model writes; shared by every loader."""
    parse_max_new_tokens(item.max_new_tokens, where)
    parse_stop(list(item.stop), where)
    validate_answer_check(item.check, item.answer, item.tests, where)


def parse_answer_number(answer: str) -> float:
    """A ``number`` item's answer as a float; commas as thousands separators and fractions like 1/3 accepted."""
    return float(Fraction(answer.strip().replace(",", "")))


def validate_answer_check(check: str, answer: str, tests: str | None, where: str) -> None:
    """The check exists and can judge this answer (also run by the checker on items built in code)."""
    parse_check(check, where)
    if check == "python" and not tests:
        raise TaskFormatError(f"{where}: check 'python' needs 'tests' (the code that judges the program)")
    if check == "regex":
        try:
            re.compile(answer)
        except re.error as e:
            raise TaskFormatError(f"{where}: answer {answer!r} is not a valid regular expression ({e})") from e
    if check == "number":
        try:
            parse_answer_number(answer)
        except (ValueError, ZeroDivisionError):
            raise TaskFormatError(f"{where}: check 'number' but answer {answer!r} is not a number") from None


def read_defaults(path: Path) -> tuple[dict, dict]:
    """The sidecar's settings and its validated item defaults (errors name the sidecar)."""
    side = read_sidecar(path)
    where = str(sidecar_path(path))
    defaults = {}
    if "stop" in side:
        defaults["stop"] = parse_stop(side["stop"], where)
    if "max_new_tokens" in side:
        defaults["max_new_tokens"] = parse_max_new_tokens(side["max_new_tokens"], where)
    if "check" in side:
        defaults["check"] = parse_check(side["check"], where)
    return side, defaults


def parse_gen_line(obj: object, where: str, defaults: dict) -> GenItem:
    if not isinstance(obj, dict):
        raise TaskFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "choices" in obj and "prompt" not in obj:
        raise TaskFormatError(
            f"{where}: a multiple-choice item (it has 'choices'); generative items have "
            "prompt/answer/check: use `capscale eval` for this file"
        )
    required = ("id", "prompt", "answer") + (() if "check" in defaults else ("check",))
    missing = [k for k in required if k not in obj]
    if missing:
        raise TaskFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("prompt", "answer"):
        if not isinstance(obj[key], str):
            raise TaskFormatError(f"{where}: '{key}' must be a string, got {obj[key]!r}")
    tests = obj.get("tests")
    if tests is not None and not isinstance(tests, str):
        raise TaskFormatError(f"{where}: 'tests' must be a string of code")
    include_prompt = obj.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise TaskFormatError(f"{where}: 'include_prompt' must be true or false, got {include_prompt!r}")
    item = GenItem(
        id=str(obj["id"]),
        prompt=obj["prompt"],
        answer=obj["answer"],
        check=parse_check(obj.get("check", defaults.get("check")), where),
        stop=parse_stop(obj["stop"], where) if "stop" in obj else defaults.get("stop", ()),
        max_new_tokens=(parse_max_new_tokens(obj["max_new_tokens"], where) if "max_new_tokens" in obj
                        else defaults.get("max_new_tokens", GenItem.max_new_tokens)),
        tests=tests,
        include_prompt=include_prompt,
    )
    validate_gen_item(item, where)
    return item


def load_gen_jsonl(path: str | Path, name: str | None = None) -> GenTask:
    """Read and validate a generative JSONL file; per-line fields override the sidecar's defaults."""
    path = Path(path)
    if not path.exists():
        raise TaskFormatError(f"{path}: task file not found")
    side, defaults = read_defaults(path)
    items: list[GenItem] = read_jsonl_items(path, lambda obj, where: parse_gen_line(obj, where, defaults))
    if not items:
        raise TaskFormatError(f"{path}: task has no items")
    return GenTask(name=name or side.get("name") or path.stem, items=items, source=str(path),
                   meta={"defaults": defaults})


def is_generative_jsonl(path: str | Path) -> bool:
    """True when the first record has a prompt and no choices: enough to route a file to the right
    loader without reading it all. Unreadable files say False and are reported by the loader."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and "prompt" in obj and "choices" not in obj
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def lm_eval_gen_yaml(
    task_name: str,
    data_file: str,
    until: list[str] | tuple[str, ...],
    max_gen_toks: int,
    repeats: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    header: str = "",
) -> str:
    """The lm-eval ``generate_until`` config that runs a generative JSONL file of ours unchanged.

    Greedy by default (``temperature`` is used only with ``do_sample``). Sampling sets
    ``top_p: 1.0`` and ``top_k: 0`` so that Hugging Face's default top-k of 50 does not
    truncate the distribution: each of the ``repeats`` samples is a plain temperature sample.
    exact_match ignores surrounding whitespace, as the model writes `` 1059`` after ``=``.
    ``data_files`` resolves against lm-eval's working directory.
    """
    if do_sample:
        sampling = f"  do_sample: true\n  temperature: {float(temperature)!r}\n  top_p: 1.0\n  top_k: 0\n"
    else:
        sampling = "  do_sample: false\n  temperature: 0.0\n"
    return (
        lm_eval_json_dataset(task_name, data_file, header)
        + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n"
        f"  until: {json.dumps(list(until), ensure_ascii=False)}\n"
        f"  max_gen_toks: {int(max_gen_toks)}\n"
        + sampling
        + f"repeats: {int(repeats)}\n"
        "metric_list:\n"
        "  - metric: exact_match\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "    regexes_to_ignore:\n"
        '      - "^\\\\s+"\n'
        '      - "\\\\s+$"\n'
    )
