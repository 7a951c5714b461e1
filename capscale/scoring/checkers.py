"""Judge a generated completion against a generative item's answer.

Four checks (the ``check`` field of a generative item, docs/design.md):

- ``exact``: the stripped completion equals the stripped answer;
- ``number``: the first number in the completion equals the answer (``-1,234.5`` style);
- ``regex``: the stripped completion matches the answer, a regular expression, in full;
- ``python``: prompt (optional) + completion + the item's tests run in the sandbox to their end and exit 0
  (a program that exits early, e.g. ``sys.exit(0)`` before the tests, fails).

The first three are pure functions. :class:`Checker` binds one item to its check and caches
verdicts per distinct completion: PassUntil sampling draws thousands of samples per item and
small models repeat themselves, while a python check costs a process.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

from capscale.scoring.sandbox import require_kernel_isolation, run_python
from capscale.tasks.generative import CHECKS, parse_answer_number, validate_answer_check  # noqa: F401 (re-exported)


# A sign, then digits with comma thousands separators (the group must end the digit run, so
# "1,2345" reads as 1) or plain digits, then decimals; or a bare decimal like ".5"; optional exponent.
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """Cut at the earliest occurrence of any stop string, as lm-eval's ``until`` does."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s, 0, cut)
            if i != -1:
                cut = i
    return text[:cut]


def check_exact(completion: str, answer: str) -> bool:
    return completion.strip() == answer.strip()


def first_number(text: str) -> float | None:
    match = _NUMBER.search(text.strip())
    return None if match is None else float(match.group().replace(",", ""))


def check_number(completion: str, answer: str) -> bool:
    """The first number in the completion equals the answer (rel. tol. 1e-6, abs. tol. 1e-9)."""
    got = first_number(completion)
    if got is None:
        return False
    return math.isclose(got, parse_answer_number(answer), rel_tol=1e-6, abs_tol=1e-9)


def check_regex(completion: str, pattern: str) -> bool:
    return re.fullmatch(pattern, completion.strip()) is not None


def python_program(prompt: str, completion: str, tests: str, include_prompt: bool = True) -> str:
    """HumanEval style: the prompt holds the signature, the completion the body, tests call it."""
    return (prompt if include_prompt else "") + completion + "\n\n" + tests


def check_python(prompt: str, completion: str, tests: str, include_prompt: bool = True, *,
                 unsafe_exec: bool = False, **limits) -> bool:
    """Passed iff the program runs to its end with exit status 0 in the sandbox; ``unsafe_exec`` and
    ``limits`` go to :func:`run_python`."""
    program = python_program(prompt, completion, tests, include_prompt)
    return run_python(program, unsafe_exec=unsafe_exec, **limits).status == "passed"


class Checker:
    """One item's check with a per-completion cache.

    ``item`` is any object with ``id, prompt, answer, check`` (and optionally ``tests`` and
    ``include_prompt``), e.g. :class:`capscale.tasks.generative.GenItem`. ``workers`` python
    checks of distinct completions run at once (each is its own process); ``limits`` go to
    :func:`run_python`. A python item refuses to be checked where there is no kernel isolation for
    generated code, unless ``unsafe_exec`` (``capscale sample --unsafe-exec``).
    """

    def __init__(self, item, *, workers: int = 2, unsafe_exec: bool = False, **limits):
        self.item_id = str(item.id)
        self.prompt = item.prompt
        self.answer = item.answer
        self.check = item.check
        self.tests = getattr(item, "tests", None) or ""
        self.include_prompt = getattr(item, "include_prompt", True)
        self.workers = max(1, int(workers))
        self.unsafe_exec = unsafe_exec
        self.limits = limits
        self._cache: dict[str, bool] = {}
        self._validate()

    def _validate(self) -> None:
        """Fail before sampling on an item no completion could ever pass, or that could not be checked safely."""
        validate_answer_check(self.check, self.answer, self.tests, f"item {self.item_id!r}")
        if self.check == "python":
            require_kernel_isolation(self.unsafe_exec)

    def check_one(self, completion: str) -> bool:
        return self.check_many([completion])[0]

    def check_many(self, completions: list[str]) -> list[bool]:
        """Verdicts in input order; each distinct completion is checked at most once per Checker."""
        new = [c for c in dict.fromkeys(completions) if c not in self._cache]
        if self.check == "python" and self.workers > 1 and len(new) > 1:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(new))) as pool:
                verdicts = list(pool.map(self._judge, new))
        else:
            verdicts = [self._judge(c) for c in new]
        self._cache.update(zip(new, verdicts))
        return [self._cache[c] for c in completions]

    def _judge(self, completion: str) -> bool:
        if self.check == "exact":
            return check_exact(completion, self.answer)
        if self.check == "number":
            return check_number(completion, self.answer)
        if self.check == "regex":
            return check_regex(completion, self.answer)
        return check_python(self.prompt, completion, self.tests, self.include_prompt, unsafe_exec=self.unsafe_exec,
                            **self.limits)
