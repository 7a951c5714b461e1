"""The report's figures (PNG beside index.html): the ladder, and one figure per task with the data, every
family's fit, the forecasts at the targets and the held-out backtest against its truth.

Readability rules, because a report is read by people: every axis says what it is and in which unit;
compute and parameters are on log axes; a family has the same colour in every figure; the held-out truth
is a star; y-axes follow the data and the forecasts, and an interval may widen them by at most the data's
own span (a wide interval is clipped at the edge rather than squashing the points into a line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from capscale.ladder import final_checkpoints
from capscale.plots import _pyplot, save_figure, step1_curve, yerr
from capscale.schema import metric_kind

TARGET_MARKERS = ("D", "s", "^", "v", "P", "X", "h")
GRID_POINTS = 16
EARLY_RANGE = 30.0  # the metric panel starts 30x below the smallest run's last checkpoint (earlier: clipped)
AXIS_LABELS = {"flops": "training compute (FLOPs, 6·N·D)", "params": "parameters (non-embedding)"}
DPI = 90


def scale_axis(finals: pd.DataFrame) -> str:
    """Compute where every run has it, else parameters."""
    flops = finals["flops"].to_numpy(float)
    return "flops" if len(flops) and np.all(np.isfinite(flops) & (flops > 0)) else "params"


def tokens_per_param(finals: pd.DataFrame) -> float:
    ratio = (finals["tokens"] / finals["params"]).to_numpy(float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.median(ratio)) if len(ratio) else float("nan")


def scale_grid(axis: str, lo: float, hi: float, ratio: float, n: int = GRID_POINTS) -> list[dict]:
    """Targets along the axis at the family's median tokens per parameter (the ladder's own recipe)."""
    out = []
    for x in np.geomspace(lo, hi, n):
        if not np.isfinite(ratio):
            out.append({"params": None, "tokens": None, "flops": float(x)} if axis == "flops"
                       else {"params": float(x), "tokens": None, "flops": None})
            continue
        params = float(np.sqrt(x / (6.0 * ratio))) if axis == "flops" else float(x)
        out.append({"params": params, "tokens": params * ratio, "flops": 6.0 * params * params * ratio})
    return out


def fitted_curve(predictor, grid: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point forecast and interval of the fitted predictor along the grid (NaN where it cannot forecast)."""
    values, lower, upper = (np.full(len(grid), np.nan) for _ in range(3))
    for i, target in enumerate(grid):
        try:
            f = predictor.predict(**target)
        except Exception:  # noqa: BLE001 - a point the law cannot reach is left out of the curve
            continue
        values[i], lower[i], upper[i] = f.value, f.lower, f.upper
    return values, lower, upper


def limits(points, intervals=(), bounded: bool = False) -> tuple[float, float]:
    """y-limits from the points, widened by intervals by at most the points' span on each side."""
    points = np.asarray([p for p in points if p is not None and np.isfinite(p)], float)
    if not len(points):
        return (0.0, 1.0)
    lo, hi = float(points.min()), float(points.max())
    span = hi - lo if hi > lo else max(abs(hi), 1e-3) * 0.2
    ends = np.asarray([e for e in intervals if e is not None and np.isfinite(e)], float)
    if len(ends):
        lo, hi = max(min(lo, float(ends.min())), lo - span), min(max(hi, float(ends.max())), hi + span)
    pad = 0.06 * max(hi - lo, span)
    lo, hi = lo - pad, hi + pad
    if bounded:
        lo, hi = max(lo, -0.02), min(hi, 1.02)
    return lo, hi


def chosen(predictor):
    return getattr(predictor, "chosen_", predictor)


def is_two_step(predictor) -> bool:
    return predictor is not None and getattr(chosen(predictor), "method_name", "") == "two-step"


def usable_forecasts(forecasts):
    return [(i, f) for i, f in enumerate(forecasts) if f is not None and not isinstance(f, str)]


def held_out(pair):
    """(record, forecast) of held-out runs that got a forecast."""
    return [(r, f) for r, f in pair.backtest if r is not None and f is not None and np.isfinite(r.predicted)]


class Panel:
    """One axes and the values its limits are computed from."""

    def __init__(self, ax):
        self.ax, self.points, self.ends, self.x_low = ax, [], [], []

    def add(self, values, lower=(), upper=()):
        self.points += list(np.ravel(values))
        self.ends += list(np.ravel(lower)) + list(np.ravel(upper))


def draw_metric_panel(panel: Panel, pair, rows: pd.DataFrame, targets, colour, level: float) -> None:
    """Metric along compute: every checkpoint, final checkpoints, the fit with its band, forecasts, backtest."""
    ax = panel.ax
    finals = final_checkpoints(rows)
    axis = scale_axis(finals)
    for _, run in rows.groupby("model"):
        run = run.sort_values(axis)
        ax.plot(run[axis], run["value"], "-", color=colour, lw=0.7, alpha=0.35)
    ax.scatter(rows[axis], rows["value"], s=6, color=colour, alpha=0.35)
    ax.scatter(finals[axis], finals["value"], s=28, color=colour, edgecolor="k", lw=0.5, zorder=3)
    panel.add(finals["value"])
    usable = usable_forecasts(pair.forecasts)
    if pair.predictor is not None:
        reach = [t[axis] for t in targets if t.get(axis) is not None]
        grid = scale_grid(axis, finals[axis].min() / 1.5, max([finals[axis].max()] + reach) * 1.5,
                          tokens_per_param(finals))
        xs = np.array([g[axis] if g[axis] is not None else np.nan for g in grid])
        value, lower, upper = fitted_curve(pair.predictor, grid)
        ax.plot(xs, value, color=colour, lw=1.6)
        ax.fill_between(xs, lower, upper, color=colour, alpha=0.12, lw=0)
        panel.add(value)
    for i, f in usable:
        x = targets[i].get(axis)
        if x is None:
            continue
        ax.errorbar([x], [f.value], yerr=yerr(f.value, f.lower, f.upper), fmt=TARGET_MARKERS[i % 7], color=colour,
                    mec="k", ms=7, capsize=3, zorder=4)
        panel.add([f.value], [f.lower], [f.upper])
    for record, f in held_out(pair):
        x = getattr(record, axis)
        ax.errorbar([x], [record.predicted], yerr=yerr(record.predicted, record.lower, record.upper), fmt="o",
                    mfc="white", color=colour, ms=7, capsize=3, zorder=4)
        ax.scatter([x], [record.actual], marker="*", s=150, color=colour, edgecolor="k", lw=0.8, zorder=5)
        panel.add([record.predicted, record.actual], [record.lower], [record.upper])
    chance = finals["chance"].dropna().median() if "chance" in finals and finals["chance"].notna().any() else None
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS[axis])
    panel.x_low.append(finals[axis].min() / EARLY_RANGE)


def draw_step1_panel(panel: Panel, pair, targets, colour) -> None:
    """Step 1 of two-step: the task loss of each run's final checkpoint along compute, the law, the forecasts."""
    ax, model = panel.ax, chosen(pair.predictor)
    finals = model.data_
    ratio = tokens_per_param(finals)
    reach = [t["flops"] for t in targets if t.get("flops") is not None]
    grid = np.geomspace(finals["flops"].min() / 1.5, max([finals["flops"].max()] + reach) * 1.5, 60)
    ax.scatter(finals["flops"], finals["loss"], s=28, color=colour, edgecolor="k", lw=0.5, zorder=3)
    curve = step1_curve(model.fit_[0], grid, ratio if np.isfinite(ratio) else 20.0)
    ax.plot(grid, curve, color=colour, lw=1.6)
    panel.add(finals["loss"])
    for i, f in usable_forecasts(pair.forecasts):
        if f.loss is None or targets[i].get("flops") is None:
            continue
        ax.errorbar([targets[i]["flops"]], [f.loss], yerr=yerr(f.loss, f.loss_lower, f.loss_upper),
                    fmt=TARGET_MARKERS[i % 7], color=colour, mec="k", ms=7, capsize=3, zorder=4)
        panel.add([f.loss], [f.loss_lower], [f.loss_upper])
    for record, f in held_out(pair):
        if f.loss is not None:
            ax.errorbar([record.flops], [f.loss], yerr=yerr(f.loss, f.loss_lower, f.loss_upper), fmt="o",
                        mfc="white", color=colour, ms=7, capsize=3, zorder=4)
            panel.add([f.loss])
        if record.actual_loss is not None:
            ax.scatter([record.flops], [record.actual_loss], marker="*", s=150, color=colour, edgecolor="k",
                       lw=0.8, zorder=5)
            panel.add([record.actual_loss])
    ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS["flops"])
    ax.set_ylabel(f"step 1: task loss ({model.loss_metric_}, lower is better)")


def draw_step2_panel(panel: Panel, pair, colour) -> None:
    """Step 2 of two-step: the metric against the task loss on every kept (smoothed) checkpoint."""
    ax, model = panel.ax, chosen(pair.predictor)
    data = model.step2_data_
    ax.scatter(data["loss"], data["value"], s=10, color=colour, alpha=0.5)
    losses = list(data["loss"]) + [f.loss for _, f in usable_forecasts(pair.forecasts) if f.loss is not None]
    losses += [r.actual_loss for r, _ in held_out(pair) if r.actual_loss is not None]
    lo, hi = float(np.min(losses)), float(np.max(losses))
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 80)
    ax.plot(grid, model.step2_curve(grid), color=colour, lw=1.6)
    panel.add(data["value"])
    for i, f in usable_forecasts(pair.forecasts):
        if f.loss is not None:
            ax.errorbar([f.loss], [f.value], yerr=yerr(f.value, f.lower, f.upper), fmt=TARGET_MARKERS[i % 7],
                        color=colour, mec="k", ms=7, capsize=3, zorder=4)
            panel.add([f.value], [f.lower], [f.upper])
    for record, f in held_out(pair):
        if f.loss is not None:
            ax.errorbar([f.loss], [record.predicted], yerr=yerr(record.predicted, record.lower, record.upper),
                        fmt="o", mfc="white", color=colour, ms=7, capsize=3, zorder=4)
        if record.actual_loss is not None:
            ax.scatter([record.actual_loss], [record.actual], marker="*", s=150, color=colour, edgecolor="k",
                       lw=0.8, zorder=5)
            panel.add([record.actual])
    ax.set_xlabel(f"task loss ({model.loss_metric_}); better to the right")


def legends(fig, families: dict, targets: list[dict], chance: bool, columns: int = 5) -> None:
    """Colour = family, marker = what the point is: two legends under the panels, not one per curve."""
    from matplotlib.lines import Line2D

    colour_handles = [Line2D([], [], color=c, marker="o", mec="k", lw=1.6, label=f) for f, c in families.items()]
    marks = [Line2D([], [], color="gray", marker="o", mec="k", ls="", label="final checkpoint (small: earlier)"),
             Line2D([], [], color="gray", lw=1.6, label="fit; band: forecast interval")]
    marks += [Line2D([], [], color="gray", marker=TARGET_MARKERS[i % 7], mec="k", ls="", label=f"target {t['label']}")
              for i, t in enumerate(targets)]
    marks += [Line2D([], [], color="gray", marker="o", mfc="white", ls="", label="held-out run: forecast"),
              Line2D([], [], color="gray", marker="*", mec="k", ms=11, ls="", label="held-out run: truth")]
    if chance:
        marks.append(Line2D([], [], color="gray", ls=":", lw=1, label="chance"))
    handles = colour_handles + marks
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=min(len(handles), columns), frameon=False)


def save(fig, path: Path, legend_rows: int) -> Path:
    """Like capscale.plots.save_figure, leaving room for the legends under the panels."""
    plt = _pyplot()
    fig.tight_layout(rect=(0, 0.02 + 0.05 * legend_rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def task_figure(task: str, pairs: list, ladder: pd.DataFrame, targets: list[dict], colours: dict, metric: str,
                path: Path) -> Path:
    """One PNG per task: [step 1 | step 2 |] metric along compute, every family of the task in its colour."""
    plt = _pyplot()
    two_step = [p for p in pairs if is_two_step(p.predictor)]
    n = 3 if two_step else 1
    fig, axes = plt.subplots(1, n, figsize=(max(5.4 * n, 9.0), 4.8), squeeze=False)
    panels = [Panel(ax) for ax in axes[0]]
    metric_panel = panels[-1]
    bounded = metric_kind(metric).probability
    better = "higher" if metric_kind(metric).higher_is_better else "lower"
    for pair in pairs:
        rows = ladder[(ladder["task"] == task) & (ladder["family"] == pair.family) & (ladder["metric"] == metric)]
        colour = colours[pair.family]
        draw_metric_panel(metric_panel, pair, rows, targets, colour, 0.9)
        if pair in two_step:
            draw_step1_panel(panels[0], pair, targets, colour)
            draw_step2_panel(panels[1], pair, colour)
    metric_panel.ax.set_ylabel(f"{metric} ({better} is better)")
    if two_step:
        panels[1].ax.set_ylabel(f"step 2: {metric} ({better} is better)")
        panels[1].ax.invert_xaxis()
        panels[1].ax.set_ylim(*limits(panels[1].points, panels[1].ends, bounded))
        panels[0].ax.set_ylim(*limits(panels[0].points, panels[0].ends))
    metric_panel.ax.set_ylim(*limits(metric_panel.points, metric_panel.ends, bounded))
    if metric_panel.x_low:
        metric_panel.ax.set_xlim(left=min(metric_panel.x_low))
    has_chance = "chance" in ladder.columns and ladder.loc[ladder["task"] == task, "chance"].notna().any()
    columns = 5 if two_step else 3
    legends(fig, {p.family: colours[p.family] for p in pairs}, targets, has_chance, columns)
    methods = sorted({method_name(p) for p in pairs})
    fig.suptitle(f"{task}: {metric} — data, fit ({', '.join(methods)}), forecasts and held-out backtest", fontsize=10)
    n_handles = len(pairs) + 4 + len(targets) + has_chance
    return save(fig, path, legend_rows=-(-n_handles // columns))


def method_name(pair) -> str:
    if pair.predictor is None:
        return "no fit"
    return getattr(pair.predictor, "method_used_", None) or getattr(chosen(pair.predictor), "method_name", "")


def ladder_figure(runs: list[dict], targets: list[dict], colours: dict, path: Path) -> Path:
    """Compute against parameters and tokens per parameter against parameters, every run, and the targets."""
    plt = _pyplot()
    table = pd.DataFrame(runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    families = sorted(table["family"].unique())
    for i, (family, group) in enumerate(table.groupby("family", sort=True)):
        size = 30 + 40 * (len(families) - 1 - i)  # families that share sizes stay visible, larger ones behind
        ax1.scatter(group["params"], group["flops"], color=colours[family], edgecolor="k", lw=0.5, s=size,
                    label=family)
        ax2.scatter(group["params"], group["tokens_per_param"], color=colours[family], edgecolor="k", lw=0.5, s=size)
        if len(table) <= 12:
            for _, run in group.iterrows():
                ax1.annotate(str(run["model"]), (run["params"], run["flops"]), fontsize=6, xytext=(3, -8),
                             textcoords="offset points")
    for t in targets:
        if t.get("params") is not None and t.get("flops") is not None:
            ax1.scatter([t["params"]], [t["flops"]], marker="X", s=90, color="k", zorder=4)
            ax1.annotate(f"target {t['label']}", (t["params"], t["flops"]), fontsize=7, xytext=(-8, 6),
                         textcoords="offset points", ha="right")
            if t.get("tokens") is not None:
                ax2.scatter([t["params"]], [t["tokens"] / t["params"]], marker="X", s=90, color="k", zorder=4)
    from matplotlib.ticker import FuncFormatter

    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(0.12)
        ax.set_xlabel(AXIS_LABELS["params"])
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax2.yaxis.set_major_formatter(plain)
    ratios = table["tokens_per_param"].dropna()
    if len(ratios) and ratios.max() < 10 * ratios.min():  # under a decade: label the minor ticks too
        ax2.yaxis.set_minor_formatter(plain)
    ax1.set_ylabel(AXIS_LABELS["flops"])
    ax2.set_ylabel("training tokens per parameter")
    ax1.legend(fontsize=7, title="family (X: target)", title_fontsize=7)
    fig.suptitle("The ladder: every run at its last checkpoint", fontsize=10)
    return save_figure(fig, path, dpi=DPI)
