"""capscale report: the toy report renders with every task, its figures and no external URL; a task that
cannot be fitted is a row with its error; bad input is one error line; headless Chromium loads the page from
disk without console errors and its sort script works."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from capscale.cli import main
from capscale.report.targets import parse_target
from capscale.report.triage import checkpoint_noise, verdict

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "results" / "toy"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """Every src/href of a page and the cells of the triage table."""

    def __init__(self):
        super().__init__()
        self.links, self.rows, self._row, self._in_triage, self._cell = [], [], None, False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "table" and attrs.get("id") == "triage-table":
            self._in_triage = True
        if self._in_triage and tag == "tr":
            self._row = []
        if self._row is not None and tag == "td":
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append(self._row)
            self._row = None
        if tag == "table":
            self._in_triage = False


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-report")
    code = main(["report", str(TOY / "ladder.csv"), "--out", str(out), "--n-boot", "40", "--n-sim", "99", "--no-progress",
                 "--target", "params=1e6,tokens=2e7"])
    assert code == 0
    return out


def test_toy_report_has_every_task_every_figure_and_no_external_url(toy_report):
    report = json.loads((toy_report / "report.json").read_text())
    page = parse(toy_report / "index.html")
    tasks = sorted(pd.read_csv(TOY / "ladder.csv").query("metric == 'acc'")["task"].unique())
    assert sorted(row[0] for row in page.rows) == tasks
    assert [r["task"] for r in report["triage"]] == tasks
    for row in report["triage"]:  # every task got a fit, a held-out forecast of toy-s5 and a trend class
        assert row["error"] == "" and row["method"] and row["trend"]
        assert [r["model"] for r in row["backtest"]["runs"]] == ["toy-s5"]
        assert row["verdict"] in ("predictable", "noisy", "emergent-watch", "flat")
    forecasts = [f for f in report["forecasts"] if f["target"] == "N=1e+06, D=2e+07"]
    assert sorted(f["task"] for f in forecasts) == tasks
    assert all(f["lower"] <= f["value"] <= f["upper"] for f in forecasts)
    images = [link for link in page.links if link.endswith(".png")]
    assert len(images) == 1 + 2 * len(tasks)  # the ladder, a forecast figure and a trend figure per task
    for link in page.links:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", link, re.I) or link.startswith("#"), link
        if not link.startswith("#"):
            assert (toy_report / link).is_file(), link
    html = (toy_report / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert len(report["provenance"]["ladder_sha256"]) == 64
    assert report["provenance"]["command"].startswith("capscale report ") and "--n-boot 40" in report["provenance"]["command"]


def test_toy_report_emergent_arith_is_flagged(toy_report):
    """The toy arith task jumps from the floor at the largest run: the triage must not call it predictable."""
    report = json.loads((toy_report / "report.json").read_text())
    arith = next(r for r in report["triage"] if r["task"] == "arith")
    assert arith["trend"] == "emergent" and arith["verdict"] == "emergent-watch"
    assert arith["hidden_progress"] is True


def test_failing_task_is_a_row_with_its_error(tmp_path):
    table = pd.read_csv(TOY / "ladder.csv")
    table = table[table["task"].isin(["facts", "copy"])]
    lonely = table[(table["task"] == "facts") & (table["model"] == "toy-s3")].assign(task="lonely")
    path = tmp_path / "ladder.csv"
    pd.concat([table, lonely]).to_csv(path, index=False)
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out), "--n-boot", "20", "--n-sim", "49", "--jobs", "1",
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["task"]: r for r in report["triage"]}
    assert set(rows) == {"copy", "facts", "lonely"}
    assert rows["lonely"]["error"] and rows["lonely"]["verdict"] == "failed"
    assert rows["facts"]["error"] == "" and rows["facts"]["method"]
    page = parse(out / "index.html")
    assert any(row[0] == "lonely" and rows["lonely"]["error"][:30] in " ".join(row) for row in page.rows)


@pytest.mark.parametrize("args, message", [
    (["--target", "params=7e9"], "give both params and tokens"),
    (["--target", "params=abc,tokens=1e9"], "params must be a number"),
    (["--target", "size=7e9"], "expected KEY=VALUE pairs"),
    (["--tasks", "nosuch"], "--tasks: ['nosuch']"),
    (["--metric", "nosuch"], "no rows with metric 'nosuch'"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    code = main(["report", str(TOY / "ladder.csv"), "--out", str(tmp_path / "r"), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["report", str(TOY / "ladder.csv"), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_target_parsing():
    assert parse_target("params=7e9, tokens=4e12") == {"params": 7e9, "tokens": 4e12, "flops": 6 * 7e9 * 4e12}
    assert parse_target("flops=1e23")["flops"] == 1e23


def test_checkpoint_noise_ignores_a_run_learning_steadily():
    """A run rising on a straight line in log(step) has no checkpoint noise; a zig-zag has."""
    steps = [1000, 2000, 4000, 8000]
    smooth = pd.DataFrame({"model": "m", "step": steps, "value": [0.1, 0.2, 0.3, 0.4]})
    noisy = smooth.assign(value=[0.1, 0.3, 0.2, 0.4])
    assert checkpoint_noise(smooth)[0] == pytest.approx(0.0, abs=1e-12)
    assert checkpoint_noise(noisy) [0] > 0.05 and checkpoint_noise(noisy)[1] == "checkpoints"


def test_verdict_rules():
    assert verdict("flat", True, 0.1, 0.1)[0] == "emergent-watch"  # hidden progress under a flat score
    assert verdict("flat", False, 0.1, 0.1)[0] == "flat"
    assert verdict("improving", None, 0.4, 0.1)[0] == "noisy"
    assert verdict("improving", None, 0.05, 0.8)[0] == "noisy"
    assert verdict("improving", None, 0.05, 0.1)[0] == "predictable"


def chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line)]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it): the browser test needs it")
def test_page_loads_in_headless_chromium_without_console_errors(toy_report, tmp_path):
    broken = tmp_path / "broken.html"  # the check itself must be able to fail
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert console_errors(chromium("--dump-dom", broken.as_uri()).stderr)

    url = (toy_report / "index.html").as_uri()
    shot = tmp_path / "page.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1400,2400", url)
    assert console_errors(result.stderr) == []
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = chromium("--dump-dom", url + "#sort=relative_noise-desc")
    assert console_errors(dom.stderr) == []
    assert 'data-ready="yes"' in dom.stdout  # the page's script ran to its end
    page = Page()
    page.feed(dom.stdout)
    report = json.loads((toy_report / "report.json").read_text())
    by_noise = sorted(report["triage"], key=lambda r: -r["relative_noise"])
    assert [row[0] for row in page.rows] == [r["task"] for r in by_noise]


def test_inputs_give_each_method_its_kind_of_items_from_a_store_or_a_rows_file(tmp_path):
    """The report reads a store once, and hands every method the per-item data `capscale backtest` would
    (ladder.read_items): per-item metrics for two-step, per-choice rows for auto, from a store or --items FILE."""
    from capscale.ladder import read_items
    from capscale.report.inputs import read_inputs
    from capscale.store import ResultsStore

    two_step = read_inputs(str(TOY), None, "two-step")
    assert two_step.items is not None and len(two_step.items) == len(read_items(TOY, "items"))
    assert len(read_inputs(str(TOY), None, "auto").items) == len(read_items(TOY, "choices"))
    rows = tmp_path / "choices.csv"
    ResultsStore(TOY).read_choices().to_csv(rows, index=False)
    from_file = read_inputs(str(TOY / "ladder.csv"), str(rows), "auto")
    assert {"choice", "gold", "logprob"} <= set(from_file.items.columns)
    assert len(read_inputs(str(TOY / "ladder.csv"), str(rows), "direct").items) == len(from_file.trend_items)
