"""``capscale report LADDER --out DIR``: the options the report adds to the fit options, and the run:
read the inputs once, collect the numbers, draw the figures, write ``DIR/index.html`` and ``DIR/report.json``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from capscale.errors import CapscaleError


def add_arguments(p) -> None:
    """Options of ``capscale report`` beyond the fit options (capscale.cli.add_fit_options)."""
    p.add_argument("ladder", help="ladder table (CSV/Parquet) or results store folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.html, report.json and figures/")
    p.add_argument("--target", action="append", default=[], metavar="SPEC",
                   help="forecast target, e.g. \"params=7e9,tokens=4e12\" or \"flops=1e23\" (repeatable; default: "
                        "4x the largest run at the ladder's tokens per parameter)")
    p.add_argument("--tasks", "--task", dest="tasks", action="append", metavar="NAMES",
                   help="only these tasks (comma-separated or repeated; default all with the metric)")
    p.add_argument("--n-sim", type=int, default=999, help="parametric-bootstrap draws per trend test (default 999)")
    p.add_argument("--jobs", type=int, default=2,
                   help="worker processes: 2 runs the full-ladder fits and the held-out backtests side by side "
                        "(default 2; 1 = in this process)")


def split_names(values) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for v in values for name in v.split(",") if name.strip()]


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CapscaleError(f"{out}: is a file; --out must name a folder (created if missing)")
    source_files = [p for p in out.glob("*") if p.name not in ("index.html", "report.json", "figures")] \
        if out.is_dir() else []
    if source_files and not (out / "report.json").exists():
        raise CapscaleError(f"{out}: folder exists and holds other files ({source_files[0].name}, ...); give an "
                            "empty or new folder, or a previous report's folder")


def write_figures(collected, out: Path, progress: bool) -> dict:
    """figures/ladder.png, figures/forecast--<task>.png, figures/trends/<task>.png; paths relative to out."""
    import shutil

    from capscale.progress import task_bar
    from capscale.report import figures
    from capscale.store import safe_name
    from capscale.trendplots import plot_trends

    report = collected.report
    folder = out / "figures"
    if folder.exists():
        shutil.rmtree(folder)  # a rerun leaves no figure of a task no longer in the report
    folder.mkdir(parents=True)
    paths = {"ladder": str(figures.ladder_figure(report["ladder"]["runs"], report["targets"], collected.colours,
                                                 folder / "ladder.png").relative_to(out)), "tasks": {}, "trends": {}}
    tasks = report["ladder"]["tasks"]
    with task_bar(len(tasks), "report: figures", enabled=progress, nested=False) as bar:
        for task in tasks:
            pairs = [p for (t, _), p in collected.pairs.items() if t == task]
            try:
                path = figures.task_figure(task, pairs, collected.ladder, report["targets"], collected.colours,
                                           report["ladder"]["metric"], folder / f"forecast--{safe_name(task)}.png")
                paths["tasks"][task] = str(path.relative_to(out))
            except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
                report["ladder"]["notes"].append(f"figure of {task} failed: {type(exc).__name__}: {exc}")
            bar.task_done()
    if collected.trends is not None and collected.trends.results:
        written = plot_trends(collected.trends.results, folder / "trends", ladder=collected.ladder,
                              items=collected.trend_items)
        by_name = {safe_name(t): t for t in tasks}
        paths["trends"] = {by_name.get(p.stem, p.stem): str(p.relative_to(out)) for p in written}
    return paths


def run(args, options, argv: list[str] | None = None) -> int:
    """The command: ``options`` are the fit options (capscale.laws.registry.MethodOptions) from the CLI."""
    from capscale.report.collect import Settings, collect
    from capscale.report.decisions import decisions_section
    from capscale.report.html import render
    from capscale.report.inputs import read_inputs
    from capscale.report.targets import parse_target

    started = time.time()
    out = Path(args.out)
    check_out(out)
    if args.n_sim < 1:
        raise CapscaleError(f"--n-sim must be >= 1, got {args.n_sim}")
    if args.jobs < 1:
        raise CapscaleError(f"--jobs must be >= 1, got {args.jobs}")
    targets = [parse_target(t) for t in args.target]
    inputs = read_inputs(args.ladder, args.items, args.method, drop_nonfinite=args.drop_nonfinite)
    settings = Settings(metric=args.metric, loss=args.loss, loss_task=args.loss_task, method=args.method,
                        options=options, tasks=split_names(args.tasks), targets=targets, n_sim=args.n_sim,
                        progress=not args.no_progress)
    collected = collect(str(args.ladder), inputs.ladder, settings, items=inputs.items, trend_items=inputs.trend_items,
                        argv=sys.argv[1:] if argv is None else argv, jobs=args.jobs)
    out.mkdir(parents=True, exist_ok=True)
    report = collected.report
    report["figures"] = write_figures(collected, out, settings.progress)
    report["decisions"] = decisions_section(collected.ladder, settings.metric, out / "figures", options.seed)
    if report["decisions"]:  # figure paths relative to the page
        report["decisions"]["figures"] = [os.path.relpath(Path(p).resolve(), out.resolve())
                                          for p in report["decisions"]["figures"]]
    report["provenance"]["seconds"] = round(time.time() - started, 1)
    from capscale.schema import jsonable  # NaN -> null, numpy scalars -> Python: strict JSON

    report = jsonable(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "index.html").write_text(render(report), encoding="utf-8")
    counts = {}
    for row in report["triage"]:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    print(f"report of {len(report['triage'])} task x family rows ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
          f" written to {out / 'index.html'} (numbers in {out / 'report.json'}) in {report['provenance']['seconds']:.0f} s")
    failed = [r for r in report["triage"] if r["error"]]
    for row in failed:
        print(f"warning: {row['task']} ({row['family']}): {row['error']}", file=sys.stderr)
    return 0
