"""One figure per task for ``capscale trends``: each family's curve in its own panel (families are never
drawn as one curve), the noise band, the fitted shape and the class; below, the continuous metric used
for the hidden-progress check where there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capscale.plots import _pyplot, save_figure
from capscale.store import safe_name

COLOURS = {"improving": "C2", "flat": "C7", "inverse": "C3", "u_shaped": "C4", "inverted_u": "C1", "emergent": "C0",
           "insufficient": "C7"}


def _label(r) -> str:
    p = "" if r.p_value is None else f", p={r.p_value:.3g}"
    extra = "" if r.noise_source != "none" else " (shape only: no noise source)"
    return f"{r.family}: {r.label}{p}{extra}"


def _draw_curve(ax, r) -> None:
    x = np.asarray(r.x)
    y = np.asarray(r.values)
    se = np.asarray(r.stderr)
    colour = COLOURS.get(r.label, "C0")
    if r.noise_source != "none":
        ax.fill_between(x, y - 1.96 * se, y + 1.96 * se, color=colour, alpha=0.15,
                        label=f"95% noise band ({r.noise_source})")
    ax.errorbar(x, y, yerr=se if r.noise_source != "none" else None, fmt="o", color=colour, capsize=3,
                label="final checkpoints", zorder=3)
    ax.plot(x, r.fitted, "--", color=colour, lw=1.2, alpha=0.8, label=f"{r.label} fit")
    if r.chance is not None:
        ax.axhline(r.chance, color="gray", ls=":", lw=1, label="chance")
    if r.floor:
        k = r.floor["n_points"]
        ax.axvspan(x[0] / 1.2, np.sqrt(x[k - 1] * x[k]), color="gray", alpha=0.1, label="floor")
    if r.turning_point:
        ax.scatter([r.turning_point["x"]], [r.turning_point["value"]], marker="*", s=160, color="k", zorder=4,
                   label="turning point")
    ax.set_xscale("log")
    ax.set_xlabel(f"training {r.axis}" + (" (FLOPs)" if r.axis == "flops" else " (non-embedding)"))
    ax.set_ylabel(f"{r.metric} ({'higher' if r.direction == 'higher' else 'lower'} is better)")
    ax.set_title(_label(r), fontsize=9)
    ax.legend(fontsize=7)


def _draw_progress(ax, r, ladder, items) -> None:
    hp = r.hidden_progress
    tested = hp["metrics"] if hp else {}
    if not tested:
        ax.text(0.5, 0.5, hp.get("note", "") if hp else "", ha="center", va="center", fontsize=8, wrap=True,
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    from capscale.trends.analysis import family_points, strongest_metric
    from capscale.trends.classes import TrendError

    metric = strongest_metric(tested)
    info = tested[metric]

    try:
        points, _ = family_points(ladder, r.family, r.task, metric)
        xs, ys = points[r.axis].to_numpy(dtype=float), points["value"].to_numpy(dtype=float)
    except TrendError:
        xs, ys = np.array([]), np.array([])
    if not len(xs) and items is not None and metric in items.columns:
        means = items[items["task"] == r.task].groupby(items["checkpoint"].astype(str))[metric].mean()
        keep = [i for i, ck in enumerate(r.checkpoints) if ck in means.index]
        xs, ys = np.asarray(r.x)[keep], np.array([means[r.checkpoints[i]] for i in keep])
    ax.plot(xs, ys, "o-", color="C5", ms=4, label=f"{metric} (all models)")
    region = [r.models.index(m) for m in hp["models"]]
    ax.axvspan(r.x[region[0]] / 1.2, r.x[region[-1]] * 1.2, color="C5", alpha=0.1, label=f"tested: {hp['region']}")
    ax.set_xscale("log")
    p = "no p (no noise)" if info["p_value"] is None else f"p={info['p_value']:.3g}"
    verdict = {True: "hidden progress", False: "no hidden progress", None: "hidden progress unknown"}[hp["hidden_progress"]]
    others = "; ".join(f"{m} p={v['p_value']:.2g}" for m, v in tested.items() if m != metric and v["p_value"] is not None)
    ax.set_title(f"{verdict}: {metric} {info['first']:.3g} -> {info['last']:.3g} ({p})"
                 + (f"\nalso tested: {others}" if others else ""), fontsize=8)
    ax.set_xlabel(f"training {r.axis}")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)


def plot_trends(results, out_dir: str | Path, ladder=None, items=None) -> list[Path]:
    """One PNG per task (all its families side by side); returns the paths written."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list] = {}
    for r in results:
        by_task.setdefault(r.task, []).append(r)
    paths = []
    for task, group in by_task.items():
        progress = ladder is not None and any(r.hidden_progress and r.hidden_progress["metrics"] for r in group)
        rows = 2 if progress else 1
        fig, axes = plt.subplots(rows, len(group), figsize=(5.2 * len(group), 3.9 * rows), squeeze=False)
        for j, r in enumerate(group):
            _draw_curve(axes[0, j], r)
            if progress:
                _draw_progress(axes[1, j], r, ladder, items)
        fig.suptitle(f"{task} ({group[0].metric}, one curve per family)", fontsize=10)
        paths.append(save_figure(fig, out_dir / f"{safe_name(task)}.png", dpi=100))
    return paths
