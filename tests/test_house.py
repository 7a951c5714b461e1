"""The shape of the package: a light, torch-free forecasting side, no import-time side effects, no import
cycles, small modules, and a README "From Python" block that runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "capscale"
HEAVY = ("torch", "transformers", "lm_eval", "tokenizers", "accelerate", "vllm")
# The forecasting side: works from a ladder table or a store, without a GPU and without torch loaded.
FORECASTING = ("capscale.laws", "capscale.trends", "capscale.ladder", "capscale.plots", "capscale.trendplots",
               "capscale.schema", "capscale.estimators")
MAX_LINES = 600
# Modules allowed over MAX_LINES: the sandbox (one process boundary, kept in one place on purpose).
OVER_LIMIT = {
    "capscale/scoring/sandbox.py",
    "capscale/scoring/sandbox_child.py",
}


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter (nothing imported yet) in the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def test_forecasting_side_imports_without_torch():
    code = f"""
import importlib, pkgutil, sys
import capscale, capscale.laws, capscale.trends, capscale.ladder, capscale.plots, capscale.trendplots
for package in (capscale.laws, capscale.trends):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
for name in ("load_ladder", "read_items", "AutoPredictor", "run_backtest", "analyse_ladder", "save_predictor"):
    getattr(capscale, name)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the forecasting side loaded {done.stdout.strip()}"


def test_backtest_help_leaves_the_environment_alone():
    """Building the parser and printing ``capscale backtest --help`` (what the console script does) must not
    change os.environ: no thread policy, no library variables set behind the user's back."""
    code = """
import json, os, sys
before = dict(os.environ)
from capscale.cli import main
try:
    main(["backtest", "--help"])
except SystemExit as e:
    assert e.code == 0, e.code
sys.stdout.flush()
print("\\nENV " + json.dumps({"before": before, "after": dict(os.environ)}))
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the toy ladder used to set it
    done = run_python(code, env=env)
    assert done.returncode == 0, done.stderr
    assert "--holdout" in done.stdout  # it did print the backtest help
    seen = json.loads(done.stdout.rsplit("\nENV ", 1)[1])
    changed = {k for k in set(seen["before"]) | set(seen["after"]) if seen["before"].get(k) != seen["after"].get(k)}
    assert not changed, f"capscale backtest --help changed {sorted(changed)}"


@pytest.fixture(scope="module")
def graph():
    """The import graph of capscale, function-level (lazy) imports included (grimp parses every module)."""
    return grimp.build_graph("capscale", include_external_packages=True)


def strongly_connected(graph, modules: set[str]) -> list[list[str]]:
    """Import cycles among ``modules`` (Tarjan's strongly connected components of size > 1)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycles(graph):
    ours = {m for m in graph.modules if m == "capscale" or m.startswith("capscale.")}
    assert len(ours) > 50  # the graph really holds the package
    assert strongly_connected(graph, ours) == []


def test_forecasting_side_never_imports_the_scoring_side(graph):
    """No chain of imports (lazy ones included) from the forecasting side to capscale.scoring or to any
    module that imports torch / transformers / lm-eval."""
    heavy = set().union(*(graph.find_modules_that_directly_import(p) for p in HEAVY if p in graph.modules))
    assert "capscale.models" in heavy  # the check sees the torch modules
    targets = sorted(heavy | {"capscale.scoring"})
    arrows = [(f, t, graph.find_shortest_chain(importer=f, imported=t, as_packages=True))
              for f in FORECASTING for t in targets
              if graph.chain_exists(importer=f, imported=t, as_packages=True)]
    assert arrows == []


def test_modules_are_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {p: n for p, n in sizes.items() if n > MAX_LINES and p not in OVER_LIMIT}
    assert over == {}, f"modules over {MAX_LINES} lines (split them by concern): {over}"
    assert all(p in sizes for p in OVER_LIMIT), "an allowed module is gone: drop it from OVER_LIMIT"


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_from_python_runs_as_written():
    code = readme_python_block()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10
    done = run_python(code + f"\nimport sys\nprint('heavy:', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr
    value, lower, upper = map(float, re.search(r"arith acc: ([\d.]+) \[([\d.]+), ([\d.]+)\]", done.stdout).groups())
    assert 0.0 <= lower <= value <= upper <= 1.0
    assert "facts" in done.stdout and "predicted" in done.stdout  # the backtest table
    assert "heavy: []" in done.stdout  # the main job needs no torch


def test_wheel_ships_the_task_files(tmp_path):
    """A non-editable install runs the shipped task names: the wheel holds every JSONL of evals/tasks."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "capscale", src / "capscale", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "evals" / "tasks", src / "evals" / "tasks")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("capscale-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"capscale/tasks/shipped/{p.relative_to(ROOT / 'evals' / 'tasks')}"
               for p in (ROOT / "evals" / "tasks").rglob("*.jsonl")}
    assert len(shipped) >= 9
    assert shipped <= names, sorted(shipped - names)
