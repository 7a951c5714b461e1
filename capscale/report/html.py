"""The report dict -> one self-contained HTML page: inline CSS, a few lines of inline JavaScript to sort the
tables, figures as relative links to PNGs beside it. No network, no external URL: it opens from disk."""

from __future__ import annotations

import html
import json

VERDICT_COLOURS = {"predictable": "#d8f0d8", "noisy": "#fde7c8", "emergent-watch": "#f9d4d4", "flat": "#e4e4e4",
                   "unknown": "#eeeeee", "failed": "#f4b4b4"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 2em 3em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; } .muted { color: #666; } .error { color: #a00; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.sortable { cursor: pointer; background: #f3f3f3; user-select: none; } th.sortable:hover { background: #e6e6e6; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
.badge { padding: 1px 6px; border-radius: 8px; white-space: nowrap; }
figure { display: inline-block; margin: 0.6em 1em 0.6em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; max-width: 1000px; }
.scroll { overflow-x: auto; } .why { font-size: 11px; color: #555; min-width: 14em; margin-top: 2px; }
"""

SORT_JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent.trim(); }
    var n = parseFloat(v);
    return (v !== "" && !isNaN(n) && isFinite(v)) ? n : v.toLowerCase();
  }
  function sortBy(table, index, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      var empty = function (z) { return z === "" || z === "\\u2013"; };
      if (empty(x) !== empty(y)) { return empty(x) ? 1 : -1; }
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.classList.remove("asc", "desc");
      if (i === index) { th.classList.add(descending ? "desc" : "asc"); }
    });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.classList.add("sortable");
      th.addEventListener("click", function () { sortBy(table, i, th.classList.contains("asc")); });
    });
  });
  var wanted = /^#sort=([a-z_]+)(-desc)?$/.exec(window.location.hash);
  if (wanted) {
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
        if (th.getAttribute("data-key") === wanted[1]) { sortBy(table, i, !!wanted[2]); }
      });
    });
  }
  document.body.setAttribute("data-ready", "yes");
})();
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value, digits: int = 3) -> str:
    """Numbers to `digits` significant digits, whole numbers as they are, missing as an en dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e5):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return esc(value)


def num(value, digits: int = 3) -> str:
    """A numeric cell that sorts by its value."""
    v = "" if value is None else json.dumps(value)
    return f'<td class="num" data-v="{esc(v)}">{fmt(value, digits)}</td>'


def text(value, cls: str = "") -> str:
    return f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{esc(value)}</td>'


def interval(value, lower, upper) -> str:
    if value is None:
        return "\u2013"
    return f"{fmt(value)} [{fmt(lower)}, {fmt(upper)}]"


def header(columns) -> str:
    """columns: [(key, label, tooltip)]"""
    cells = "".join(f'<th data-key="{k}" title="{esc(tip)}">{esc(label)}</th>' for k, label, tip in columns)
    return f"<thead><tr>{cells}</tr></thead>"


def badge(verdict: str, why: str = "") -> str:
    colour = VERDICT_COLOURS.get(verdict, "#eee")
    return (f'<td data-v="{esc(verdict)}"><span class="badge" style="background:{colour}">{esc(verdict)}</span>'
            f'<div class="why">{esc(why)}</div></td>')


def figure(src: str, caption: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{esc(src)}" alt="{esc(caption)}" loading="lazy"{size}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def ladder_section(report: dict) -> str:
    ladder = report["ladder"]
    columns = [("family", "family", ""), ("model", "model", ""), ("params", "params", "non-embedding parameters"),
               ("tokens", "tokens", "training tokens at the last checkpoint"),
               ("tokens_per_param", "tokens / param", ""), ("flops", "compute (FLOPs)", "6·N·D"),
               ("checkpoints", "checkpoints", ""), ("last_step", "last step", "")]
    body = "".join("<tr>" + text(r["family"]) + text(r["model"]) + num(r["params"]) + num(r["tokens"])
                   + num(r["tokens_per_param"]) + num(r["flops"]) + num(r["checkpoints"]) + num(r["last_step"])
                   + "</tr>" for r in ladder["runs"])
    held = "; ".join(f"{f}: {', '.join(m)}" for f, m in ladder["held_out"].items()) or "none (too few sizes)"
    notes = "".join(f"<li>{esc(n)}</li>" for n in ladder["notes"])
    fig = report["figures"].get("ladder")
    return (f'<h2 id="ladder">1. The ladder</h2><p>{len(ladder["runs"])} runs in {len(ladder["families"])} '
            f'famil{"y" if len(ladder["families"]) == 1 else "ies"} ({esc(", ".join(ladder["families"]))}), '
            f'{len(ladder["tasks"])} tasks with metric <b>{esc(ladder["metric"])}</b>, {ladder["n_rows"]:,} rows. '
            f"Held out for the backtest (each family's largest size): {esc(held)}.</p>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + (figure(fig, "Every run at its last checkpoint: compute and tokens per parameter against parameters "
                      "(log axes); X marks the targets.") if fig else "")
            + f'<div class="scroll"><table class="sortable">{header(columns)}<tbody>{body}</tbody></table></div>')


TRIAGE_COLUMNS = [
    ("task", "task", ""), ("family", "family", ""),
    ("verdict", "verdict", "predictable / noisy / emergent-watch / flat, and why"), ("n_runs", "runs", "runs (final checkpoints) in the family"),
    ("last", "largest run", "the metric at the largest run's last checkpoint"),
    ("spread", "spread", "range of the final checkpoints' values across the ladder"),
    ("noise", "noise", "std of the last checkpoints of each run around their trend (or stderr)"),
    ("relative_noise", "noise / spread", ""),
    ("method", "method (in-ladder)", "the method the ladder's own rolling-origin backtests chose"),
    ("in_ladder_error", "in-ladder error", "mean |error| of that method on the ladder's rolling origins"),
    ("relative_error", "error / spread", ""),
    ("backtest", "held-out forecast vs truth", "largest size held out, forecast from the rest"),
    ("inside", "inside interval", "is the truth inside the forecast's interval"),
    ("trend", "trend", "capscale trends class"), ("trend_p", "trend p", "p-value of the class"),
    ("hidden", "hidden progress", "a continuous metric improving where this one does not"),
]


def backtest_cells(backtest: dict | None) -> str:
    if not backtest:
        return text("\u2013") + text("\u2013")
    if backtest.get("error"):
        return text(backtest["error"], "error") + text("\u2013")
    parts = []
    for run in backtest["runs"]:
        if run["predicted"] is None:
            parts.append(f"{run['model']}: no forecast ({run['reason']})")
        else:
            parts.append(f"{run['model']}: {interval(run['predicted'], run['lower'], run['upper'])} vs {fmt(run['actual'])}")
    inside = f"{backtest['inside']}/{backtest['n']}" if backtest["n"] else "\u2013"
    share = backtest["inside"] / backtest["n"] if backtest["n"] else None
    return (f'<td data-v="{esc(backtest["mae"] if backtest["mae"] is not None else "")}">{esc("; ".join(parts))}</td>'
            f'<td class="num" data-v="{esc("" if share is None else share)}">{inside}</td>')


def triage_section(report: dict) -> str:
    rows = []
    for r in report["triage"]:
        method = f'<td data-v="{esc(r["method"])}">{esc(r["method"])}<div class="why">{esc(r["form"])}</div></td>'
        hidden = {True: "yes", False: "no", None: "\u2013"}[r["hidden_progress"]]
        rows.append(
            "<tr>" + text(r["task"]) + text(r["family"]) + badge(r["verdict"], r["why"]) + num(r["n_runs"])
            + num(r["last"]) + num(r["spread"])
            + num(r["noise"]).replace("</td>", f' <span class="muted">({esc(r["noise_source"])})</span></td>')
            + num(r["relative_noise"], 2)
            + (text(r["error"], "error") if r["error"] else method)
            + num(r["in_ladder_error"]) + num(r["relative_error"], 2) + backtest_cells(r["backtest"])
            + text(r["trend"] or "\u2013") + num(r["trend_p"], 2)
            + f'<td title="{esc(r["hidden_detail"])}">{hidden}</td></tr>')
    cov = report["coverage"]
    coverage = (f"Held-out backtest over all tasks: the truth was inside the {cov['level']:.0%} interval for "
                f"<b>{cov['inside']} of {cov['n']}</b> forecasts, mean |error| {fmt(cov['mae'])}." if cov["n"]
                else "No held-out forecast could be made (the ladder is too short to hold out a size).")
    counts = {}
    for r in report["triage"]:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    tally = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))
    return (f'<h2 id="triage">2. Predictability triage</h2><p>One row per task and family ({tally}). Click a column '
            "to sort. <i>noise</i>: the standard deviation of each run's last checkpoints around their own trend "
            "(or the stderr), against the <i>spread</i> of the final checkpoints across the ladder; <i>method</i>: "
            "what the ladder's own rolling-origin backtests chose, with its mean error there; <i>held-out</i>: the "
            "largest size forecast from the others. Verdict: emergent-watch when the curve changes shape inside the "
            "ladder (emergent, U-shaped) or a continuous metric shows hidden progress; flat when there is no trend; "
            "noisy when the noise is 25% or more of the spread, or the in-ladder error half of it; else "
            f"predictable.</p><p>{coverage}</p>"
            f'<div class="scroll"><table class="sortable" id="triage-table">{header(TRIAGE_COLUMNS)}<tbody>'
            + "".join(rows) + "</tbody></table></div>")


def forecasts_section(report: dict) -> str:
    parts = ['<h2 id="forecasts">3. Forecasts</h2>']
    for target in report["targets"]:
        default = " (default: no --target given; 4× the largest run at the ladder's tokens per parameter)" \
            if target.get("default") else ""
        parts.append(f"<h3>Target {esc(target['label'])}{esc(default)}</h3><p class=muted>params "
                     f"{fmt(target['params'])}, tokens {fmt(target['tokens'])}, compute {fmt(target['flops'])} FLOPs</p>")
        columns = [("task", "task", ""), ("family", "family", ""), ("value", "forecast [90%]", ""),
                   ("i50", "50%", ""), ("i80", "80%", ""), ("loss", "task loss [90%]", "two-step's intermediate loss"),
                   ("method", "method", ""), ("warnings", "warnings", "")]
        rows = []
        for r in (r for r in report["forecasts"] if r["target"] == target["label"]):
            if r.get("error"):
                rows.append("<tr>" + text(r["task"]) + text(r["family"]) + f'<td colspan="6" class="error">'
                            f"{esc(r['error'])}</td></tr>")
                continue
            i50, i80 = r["intervals"].get("0.5", [None, None]), r["intervals"].get("0.8", [None, None])
            rows.append("<tr>" + text(r["task"]) + text(r["family"])
                        + f'<td class="num" data-v="{r["value"]}">{interval(r["value"], r["lower"], r["upper"])}</td>'
                        + f'<td class="num">[{fmt(i50[0])}, {fmt(i50[1])}]</td><td class="num">[{fmt(i80[0])}, '
                        f"{fmt(i80[1])}]</td>"
                        + f'<td class="num">{interval(r["loss"], r["loss_lower"], r["loss_upper"])}</td>'
                        + text(f"{r['method_used']}: {r['form_used']}") + text("; ".join(r["warnings"]))
                        + "</tr>")
        parts.append(f'<div class="scroll"><table class="sortable">{header(columns)}<tbody>{"".join(rows)}'
                     "</tbody></table></div>")
    parts.append("<p>One figure per task: the data (small points: every checkpoint; large: each run's last), each "
                 "family's fit along its own tokens per parameter with the forecast interval as a band, the "
                 "targets' forecasts, and the held-out run's forecast (open circle) against its truth (star). "
                 "Two-step fits add their two steps: task loss along compute, and the metric against the loss.</p>")
    for task, src in report["figures"].get("tasks", {}).items():
        parts.append(figure(src, f"{task}"))
    return "".join(parts)


def decisions_section(report: dict) -> str:
    section = report.get("decisions")
    if not section:
        return ""
    if section.get("error"):
        return f'<h2 id="decisions">4a. Decisions</h2><p class="error">{esc(section["error"])}</p>'
    table = section["table"]
    body = ""
    if table:
        columns = list(table[0])
        body = (f'<table class="sortable">{header([(c, c, "") for c in columns])}<tbody>'
                + "".join("<tr>" + "".join(num(r.get(c)) if isinstance(r.get(c), (int, float)) else text(r.get(c))
                                           for c in columns) + "</tr>" for r in table) + "</tbody></table>")
    return (f'<h2 id="decisions">4a. Decisions</h2><p>{esc(section["summary"])}</p>{body}'
            + "".join(f"<p class=muted>{esc(n)}</p>" for n in section["notes"])
            + "".join(figure(src, "") for src in section["figures"]))


def trends_section(report: dict) -> str:
    trends = report["trends"]
    parts = ['<h2 id="trends">4. Trends</h2><p>Each family\'s curve along compute, classified by '
             "<code>capscale trends</code> (improving, flat, inverse, u_shaped, inverted_u, emergent) with its "
             "noise band; below, the continuous metric of the hidden-progress check where one was tested.</p>"]
    if trends["error"]:
        parts.append(f'<p class="error">trends failed: {esc(trends["error"])}</p>')
    parts += [f"<p class=muted>note: {esc(n)}</p>" for n in trends["notes"]]
    parts += [f"<p class=muted>skipped {esc(t)} ({esc(f)}): {esc(why)}</p>" for t, f, why in trends["skipped"]]
    parts += [figure(src, task) for task, src in report["figures"].get("trends", {}).items()]
    return "".join(parts)


def provenance_section(report: dict) -> str:
    p = report["provenance"]
    rows = [("capscale", p["capscale"]), ("command", p["command"]), ("ladder", p["ladder"]),
            ("ladder sha256", p["ladder_sha256"]), ("generated", p["generated"]),
            ("seeds", json.dumps(p["seeds"])), ("settings", json.dumps(p["settings"])),
            ("software", f"python {p['python']}, numpy {p['numpy']}, pandas {p['pandas']}, scipy {p['scipy']}, "
                         f"matplotlib {p['matplotlib']} ({p['platform']})"),
            ("wall time", f"{p.get('seconds', 0):.0f} s"), ("numbers", "report.json (beside this page)")]
    body = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>" for k, v in rows)
    return f'<h2 id="provenance">5. Provenance</h2><table>{body}</table>'


def render(report: dict) -> str:
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("ladder", "ladder"), ("triage", "triage"), ("forecasts", "forecasts"),
        *((("decisions", "decisions"),) if report.get("decisions") else ()), ("trends", "trends"),
        ("provenance", "provenance")))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(report['title'])}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(report['title'])}</h1><p class=muted>{esc(report['provenance']['command'])} · "
            f"{esc(report['provenance']['generated'])}</p><nav>{nav}</nav>"
            + ladder_section(report) + triage_section(report) + forecasts_section(report)
            + decisions_section(report) + trends_section(report) + provenance_section(report)
            + f"<script>{SORT_JS}</script></body></html>\n")
