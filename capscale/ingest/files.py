"""Finding and reading lm-eval output: samples_<task>_<ts>.jsonl files, their results_<ts>.json, sample lines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from capscale.errors import StoreError


SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$")

@dataclass
class SamplesRun:
    """One lm-eval invocation's files for one task."""

    samples: Path
    task: str
    results: Path


def find_runs(src: Path) -> list[SamplesRun]:
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
        runs.append(SamplesRun(samples, m.group("task"), results))
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
