"""Turn a ``--task SPEC`` string into an MCTask (``load_task``) or a GenTask (``load_gen_task``).

SPEC is one of: a path to a JSONL file; ``lm-eval:NAME`` (built from lm-eval's own task
objects); or the bare name of a task shipped in ``evals/tasks/`` (e.g. ``capitals``).
Multiple-choice and generative files share the extension, so each loader looks at the first
record and refuses the other kind by name instead of failing on a missing field.
"""

from __future__ import annotations

from pathlib import Path

from capscale.errors import TaskFormatError
from capscale.tasks.generative import GenTask, is_generative_jsonl, load_gen_jsonl
from capscale.tasks.jsonl import load_jsonl_task
from capscale.tasks.schema import MCTask

LMEVAL_PREFIX = "lm-eval:"
# evals/tasks of the source tree; a link there in a checkout, package data in an installed wheel
SHIPPED_TASKS = (Path(__file__).parent / "shipped").resolve()


def shipped_task_path(name: str) -> Path | None:
    """A task of ours in evals/tasks/ by bare name (from a checkout or an installed package)."""
    if not SHIPPED_TASKS.is_dir():
        return None
    hits = sorted(SHIPPED_TASKS.rglob(f"{name}.jsonl"))
    return hits[0] if hits else None


def task_file(spec: str) -> Path:
    """SPEC as a file: the path itself, or a shipped task when SPEC is a bare name."""
    path = Path(spec)
    if not path.exists() and path.suffix == "":
        found = shipped_task_path(spec)
        if found is None:
            raise TaskFormatError(
                f"task {spec!r}: not a file, not 'lm-eval:NAME', and no evals/tasks/**/{spec}.jsonl"
            )
        path = found
    return path


def check_limit(limit: int | None) -> None:
    """--limit N keeps the first N items; 0 would write an empty pair, a negative one drop items from the end."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskFormatError(f"--limit must be a whole number >= 1, got {limit!r}")


def load_task(
    spec: str,
    *,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    delimiter: str | None = None,
    limit: int | None = None,
) -> MCTask:
    check_limit(limit)
    if spec.startswith(LMEVAL_PREFIX):
        from capscale.tasks.lmeval import load_lmeval_task  # lm-eval import is slow: only when asked

        return load_lmeval_task(
            spec[len(LMEVAL_PREFIX):], include_path=include_path, num_fewshot=num_fewshot, limit=limit
        )
    path = task_file(spec)
    if is_generative_jsonl(path):
        raise TaskFormatError(
            f"{path} is a generative task (prompt/answer items, scored by sampling): use `capscale sample`"
        )
    task = load_jsonl_task(path, delimiter=delimiter)
    if limit is not None:
        task.items = task.items[:limit]
    return task


def load_gen_task(
    spec: str,
    *,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
) -> GenTask:
    """A generative task from a JSONL path, a shipped name (``arith_gen``) or ``lm-eval:NAME``."""
    check_limit(limit)
    if spec.startswith(LMEVAL_PREFIX):
        from capscale.tasks.lmeval_gen import load_lmeval_gen_task  # lm-eval import is slow: only when asked

        return load_lmeval_gen_task(
            spec[len(LMEVAL_PREFIX):], include_path=include_path, num_fewshot=num_fewshot, limit=limit
        )
    task = load_gen_jsonl(task_file(spec))
    if limit is not None:
        task.items = task.items[:limit]
    return task
