"""Answer checks for generative items, and the Checker's de-duplication and caching."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from capscale.cli import main
from capscale.errors import TaskFormatError
from capscale.scoring import checkers
from capscale.scoring.checkers import (
    Checker,
    check_exact,
    check_number,
    check_python,
    check_regex,
    first_number,
    truncate_at_stop,
)
from capscale.scoring.sandbox import SandboxResult, SandboxUnavailable, kernel_isolation

PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n"
GOOD = "    return a + b\n"
BAD = "    return a - b\n"
ISOLATION = kernel_isolation()
needs_isolation = pytest.mark.skipif(not ISOLATION.available, reason=f"no kernel isolation here: {ISOLATION.reason} "
                                     "(apt-get install bubblewrap)")


def item(check: str, answer: str = "", **kw):
    return SimpleNamespace(id="g1", prompt=kw.pop("prompt", "Q:"), answer=answer, check=check, **kw)


@pytest.mark.parametrize("text, stop, expected", [
    ("1059\nQ: next", ("\n",), "1059"),
    ("abc", (), "abc"),
    ("a.b\nc", ("\n", "."), "a"),  # earliest occurrence wins, not the first stop listed
    ("xENDyEND", ("END",), "x"),
    ("no stop here", ("\n\n", "Q:"), "no stop here"),
    ("ab", ("",), "ab"),  # an empty stop string is ignored
])
def test_truncate_at_stop(text, stop, expected):
    assert truncate_at_stop(text, stop) == expected


def test_exact_ignores_surrounding_whitespace_only():
    assert check_exact(" 1059\n", "1059")
    assert check_exact("Paris", " Paris ")
    assert not check_exact("1059.", "1059")
    assert not check_exact("pa ris", "paris")


@pytest.mark.parametrize("completion, answer, expected", [
    (" 1059", "1059", True),
    ("1059 apples", "1059", True),
    ("The answer is -1,234.5.", "-1234.5", True),
    ("-1,234.5", "-1,234.5", True),
    ("1,000,000", "1000000", True),
    ("3.0", "3", True),
    ("+7", "7", True),
    (".5", "0.5", True),
    ("0.333333333", "1/3", True),  # within 1e-6 relative
    ("1e3", "1000", True),
    ("1,2345", "12345", False),  # not a thousands separator: the first number is 1
    ("12 then 13", "13", False),  # only the first number counts
    ("1058", "1059", False),
    ("no number", "1059", False),
    ("", "0", False),
    ("0.0000000001", "0", True),  # absolute tolerance 1e-9
])
def test_number(completion, answer, expected):
    assert check_number(completion, answer) is expected


def test_first_number():
    assert first_number("x = -3.25, y = 2") == -3.25
    assert first_number("2024-01-01") == 2024
    assert first_number("none") is None


def test_regex_is_a_full_match_of_the_stripped_completion():
    assert check_regex("  Paris\n", r"Paris|paris")
    assert check_regex("42", r"\d+")
    assert not check_regex("42 is it", r"\d+")
    assert not check_regex("Parisian", r"Paris")


@needs_isolation
def test_python_check_on_a_humaneval_style_item():
    assert check_python(PROMPT, GOOD, TESTS)
    assert not check_python(PROMPT, BAD, TESTS)
    assert not check_python(PROMPT, "    return (", TESTS)  # syntax error
    assert not check_python(PROMPT, "    while True: pass\n", TESTS, timeout_s=0.5)
    # include_prompt=False: the completion is the whole program
    assert check_python(PROMPT, PROMPT + GOOD, TESTS, include_prompt=False)
    assert not check_python(PROMPT, GOOD, TESTS, include_prompt=False)


@needs_isolation
def test_python_check_fails_a_program_that_escapes():
    assert not check_python(PROMPT, "    import os; os.system('true'); return a + b\n", TESTS)


@needs_isolation
@pytest.mark.parametrize("exit_early", [
    "exit()", "quit()", "import sys; sys.exit(0)", "import os; os._exit(0)",
    "\ndef main():\n    return 0\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(main())",
])
def test_python_check_fails_a_program_that_exits_before_its_tests(exit_early):
    assert not check_python(PROMPT, BAD + exit_early + "\n", TESTS)
    assert not check_python(PROMPT, GOOD + exit_early + "\n", TESTS)  # the tests never ran: no pass either
    assert check_python(PROMPT, GOOD, TESTS)


@needs_isolation
def test_parallel_checks_cannot_influence_each_other():
    """Each completion runs in its own sandbox: what one leaves behind, another does not see."""
    leave = GOOD + "import os\nopen('mark', 'w').write('x')\nos.environ['MARK'] = '1'\n"
    look = GOOD + "import os\nassert not os.path.exists('mark') and 'MARK' not in os.environ\n"
    completions = [leave + f"# {i}\n" if i % 2 == 0 else look + f"# {i}\n" for i in range(8)]
    assert Checker(item("python", prompt=PROMPT, tests=TESTS), workers=4).check_many(completions) == [True] * 8


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """A machine without bubblewrap: PATH without bwrap, the cached probe forgotten before and after."""
    monkeypatch.setenv("PATH", str(tmp_path))
    kernel_isolation.cache_clear()
    yield
    kernel_isolation.cache_clear()


def test_python_items_refuse_to_be_checked_without_kernel_isolation(no_bwrap):
    with pytest.raises(SandboxUnavailable, match="--unsafe-exec"):
        Checker(item("python", prompt=PROMPT, tests=TESTS))
    assert Checker(item("exact", "a")).check_one("a")  # other checks run no code
    unsafe = Checker(item("python", prompt=PROMPT, tests=TESTS), unsafe_exec=True)
    assert unsafe.check_many([GOOD, BAD, GOOD + "exit()\n"]) == [True, False, False]


def test_cli_sample_refuses_python_tasks_without_kernel_isolation(no_bwrap, tmp_path, capsys):
    task = tmp_path / "code.jsonl"
    task.write_text(json.dumps({"id": "add", "prompt": PROMPT, "answer": "", "check": "python", "tests": TESTS}) + "\n")
    out = tmp_path / "out"
    assert main(["sample", "--model", str(tmp_path / "no-such-model"), "--task", str(task), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--unsafe-exec" in err and "bubblewrap" in err
    assert not out.exists() or not any(out.rglob("*.parquet"))  # refused before any model was loaded


@needs_isolation
def test_checker_dispatch_and_input_order():
    assert Checker(item("exact", "1059")).check_many([" 1059", "1058", "1059\n"]) == [True, False, True]
    assert Checker(item("number", "-1234.5")).check_many(["-1,234.5 dollars", "x"]) == [True, False]
    assert Checker(item("regex", r"[A-Z]\w+")).check_many(["Paris", "paris"]) == [True, False]
    py = Checker(item("python", prompt=PROMPT, tests=TESTS))
    assert py.check_many([GOOD, BAD, GOOD]) == [True, False, True]
    assert py.check_one(GOOD) is True


def test_checker_without_optional_attributes():
    bare = SimpleNamespace(id=7, prompt="Q:", answer="a", check="exact")
    assert Checker(bare).check_many(["a"]) == [True]


def fake_sandbox(calls: list[str]):
    def fake_run_python(code: str, unsafe_exec: bool = False, **limits) -> SandboxResult:
        calls.append(code)
        ok = "a + b" in code
        return SandboxResult(ok, "passed" if ok else "failed", 0 if ok else 1, "", "", 0.0)
    return fake_run_python


def test_identical_completions_are_checked_once(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(checkers, "run_python", fake_sandbox(calls))
    c = Checker(item("python", prompt=PROMPT, tests=TESTS), unsafe_exec=True)
    assert c.check_many([GOOD] * 50) == [True] * 50
    assert len(calls) == 1
    assert c.check_many([GOOD] * 10 + [BAD] * 10) == [True] * 10 + [False] * 10
    assert len(calls) == 2  # GOOD came from the cache, BAD was new
    assert c.check_one(BAD) is False and len(calls) == 2


def test_distinct_python_completions_run_in_parallel_threads(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(checkers, "run_python", fake_sandbox(calls))
    completions = [f"    return a + b  # {i}\n" for i in range(6)] + [BAD]
    result = Checker(item("python", prompt=PROMPT, tests=TESTS), workers=3, unsafe_exec=True).check_many(completions)
    assert result == [True] * 6 + [False] and len(calls) == 7


def test_limits_reach_the_sandbox(monkeypatch):
    seen = {}

    def fake_run_python(code, **limits):
        seen.update(limits)
        return SandboxResult(True, "passed", 0, "", "", 0.0)

    monkeypatch.setattr(checkers, "run_python", fake_run_python)
    Checker(item("python", prompt=PROMPT, tests=TESTS), timeout_s=1.5, memory_mb=128, unsafe_exec=True).check_one(GOOD)
    assert seen == {"timeout_s": 1.5, "memory_mb": 128, "unsafe_exec": True}


@pytest.mark.parametrize("bad, message", [
    (item("fuzzy", "x"), "'check' must be one of .*got 'fuzzy'"),
    (item("python", tests=""), "needs 'tests'"),
    (item("regex", "(unclosed"), "not a valid regular expression"),
    (item("number", "about ten"), "not a number"),
])
def test_unusable_items_raise_task_format_error_naming_the_item(bad, message):
    with pytest.raises(TaskFormatError, match=message) as e:
        Checker(bad)
    assert "'g1'" in str(e.value)


@needs_isolation
def test_checker_accepts_the_generative_item_class():
    generative = pytest.importorskip("capscale.tasks.generative")
    it = generative.GenItem(id="p1", prompt=PROMPT, answer="", check="python", tests=TESTS)
    assert Checker(it).check_many([GOOD, BAD]) == [True, False]
