"""Figures a person would rather look at than a table: backtest fits with their intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capscale.store import safe_name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band(curves: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1 - level) / 2
    return np.quantile(curves, alpha, axis=0), np.quantile(curves, 1 - alpha, axis=0)


def yerr(value: float, lower: float, upper: float) -> list[list[float]]:
    """Error-bar lengths; a percentile interval need not contain the point forecast."""
    return [[max(0.0, value - lower)], [max(0.0, upper - value)]]


def padded_grid(values, targets, n: int = 100) -> np.ndarray:
    """Log-spaced points covering the ladder and the targets, with a margin on both sides."""
    values, targets = np.asarray(values, dtype=float), np.asarray(targets, dtype=float)
    return np.geomspace(min(values.min(), targets.min()) / 1.5, max(values.max(), targets.max()) * 1.5, n)


def draw_forecasts(ax, records, x: str, label: str = "forecast (interval with noise)") -> None:
    """Each held-out run: the forecast with its interval, and the actual value as a star."""
    for r in records:
        first = r is records[0]
        ax.errorbar([getattr(r, x)], [r.predicted], yerr=yerr(r.predicted, r.lower, r.upper), fmt="s",
                    color="C3", capsize=3, label=label if first else None)
        ax.scatter([getattr(r, x)], [r.actual], marker="*", s=120, color="k", zorder=4,
                   label="held-out actual" if first else None)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def step1_curve(fit, flops_grid: np.ndarray, ratio: float) -> np.ndarray:
    """Fitted loss along compute; an (N, D) form is drawn at the target's tokens-per-parameter ratio."""
    if fit.form.inputs == ("flops",):
        return fit.predict(flops=flops_grid)
    params = np.sqrt(flops_grid / (6.0 * ratio))
    return fit.predict(params=params, tokens=params * ratio)


def plot_two_step(predictor, records, path: Path) -> Path:
    plt = _pyplot()
    s1, s2 = predictor.fit_
    finals, step2 = predictor.data_, predictor.step2_data_
    target_flops = np.array([r.flops for r in records])
    ratio = float(np.median([r.tokens / r.params for r in records]))
    grid = padded_grid(finals["flops"], target_flops)
    boot1 = np.array([step1_curve(b1, grid, ratio) for b1, _ in predictor.boot_fits_]) if predictor.boot_fits_ else None

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(finals["flops"], finals["loss"], color="C0", label="ladder (final checkpoints)", zorder=3)
    curve_label = f"step 1: {s1.form.name}" + ("" if s1.form.inputs == ("flops",) else f" at {ratio:.0f} tokens/param")
    ax1.plot(grid, step1_curve(s1, grid, ratio), color="C0", label=curve_label)
    if boot1 is not None:
        lo, hi = band(boot1, predictor.level)
        ax1.fill_between(grid, lo, hi, color="C0", alpha=0.15, label=f"{predictor.level:.0%} band of the curve")
    forecasts = [predictor.predict(params=r.params, tokens=r.tokens, flops=r.flops) for r in records]
    for r, f in zip(records, forecasts):
        first = r is records[0]
        ax1.errorbar([r.flops], [f.loss], yerr=yerr(f.loss, f.loss_lower, f.loss_upper), fmt="s", color="C3",
                     capsize=3, label="forecast loss" if first else None)
        if r.actual_loss is not None:
            ax1.scatter([r.flops], [r.actual_loss], marker="*", s=120, color="k", zorder=4,
                        label="held-out actual" if first else None)
    ax1.set_xscale("log")
    ax1.set_xlabel("training compute (FLOPs)")
    ax1.set_ylabel(f"task loss ({predictor.loss_metric_})")
    ax1.legend(fontsize=8)

    known = [r.actual_loss for r in records if r.actual_loss is not None]
    losses = np.concatenate([step2["loss"].to_numpy(), [f.loss for f in forecasts], known])
    lgrid = np.linspace(losses.min() - 0.05 * np.ptp(losses), losses.max() + 0.05 * np.ptp(losses), 100)
    ax2.scatter(step2["loss"], step2["value"], s=10, color="C0", alpha=0.5, label="ladder checkpoints (smoothed)")
    ax2.plot(lgrid, predictor.step2_curve(lgrid), color="C0", label=f"step 2: {s2.form.name}"
             + (f" (ceiling {predictor.ceiling_mode_})" if getattr(predictor, "ceiling_mode_", "fit") != "fit" else ""))
    if predictor.boot_fits_:
        lo, hi = band(np.array([predictor.step2_curve(lgrid, b2) for _, b2 in predictor.boot_fits_]), predictor.level)
        ax2.fill_between(lgrid, lo, hi, color="C0", alpha=0.15)
    for r, f in zip(records, forecasts):
        first = r is records[0]
        ax2.errorbar([f.loss], [f.value], yerr=yerr(f.value, f.lower, f.upper), fmt="s", color="C3",
                     capsize=3, label=f"forecast ({predictor.level:.0%} interval)" if first else None)
        ax2.scatter([r.actual_loss if r.actual_loss is not None else f.loss], [r.actual], marker="*", s=120,
                    color="k", zorder=4,
                    label=("held-out actual" if r.actual_loss is not None else "held-out actual (at forecast loss)")
                    if first else None)
    if predictor.chance_ is not None:
        ax2.axhline(predictor.chance_, color="gray", ls=":", lw=1, label="chance")
    ax2.invert_xaxis()
    ax2.set_xlabel(f"task loss ({predictor.loss_metric_}) - better to the right")
    ax2.set_ylabel(predictor.metric_)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{predictor.task_} ({records[0].family}): two-step forecast of {', '.join(r.model for r in records)}")
    return save_figure(fig, path)


def plot_direct(predictor, records, path: Path) -> Path:
    """Final checkpoints against the fit's scale input, the fitted curve (a line for carry-forward:
    the largest run's value) with its band, and the forecasts."""
    plt = _pyplot()
    finals = predictor.data_
    x = predictor.x_
    targets = np.array([getattr(r, x) for r in records], dtype=float)
    grid = padded_grid(finals[x], targets)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(finals[x], finals["value"], color="C0", label="ladder (final checkpoints)", zorder=3)
    if hasattr(predictor, "curve"):
        ax.plot(grid, predictor.curve(grid), color="C0", label=predictor.form_used_)
        if predictor.boot_fits_:
            lo, hi = band(np.array([predictor.curve(grid, b) for b in predictor.boot_fits_]), predictor.level)
            ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, label=f"{predictor.level:.0%} band of the curve")
    else:
        last = finals[x].max()
        ax.plot([last, grid.max()], [predictor.last_] * 2, color="C0", ls="--", label=predictor.form_used_)
    draw_forecasts(ax, records, x)
    if predictor.chance_ is not None:
        ax.axhline(predictor.chance_, color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel({"flops": "training compute (FLOPs)", "params": "parameters", "tokens": "training tokens"}[x])
    ax.set_ylabel(predictor.metric_)
    ax.set_title(f"{predictor.task_} ({records[0].family}): {predictor.method_name} forecast", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_pass_until(predictor, records, path: Path) -> Path:
    """PassUntil law on log-log axes (PU against the law's scale input), with its bootstrap band."""
    plt = _pyplot()
    x = predictor.x
    finals = predictor.data_
    targets = np.array([getattr(r, x) for r in records])
    grid = padded_grid(finals[x], targets)
    centre, boot = predictor.curve(grid)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(finals[x], finals["value"], color="C0", label="ladder (final checkpoints)", zorder=3)
    form = "per-item PassUntil law" if predictor.per_item else "PU = exp(-c N^-alpha)"
    ax.plot(grid, centre, color="C0", label=form)
    if len(boot):
        lo, hi = band(boot, predictor.level)
        ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, label=f"{predictor.level:.0%} band of the curve")
    draw_forecasts(ax, records, x)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(predictor.metric_)
    ax.set_title(f"{predictor.task_} ({records[0].family}): PassUntil forecast", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_observational(predictor, records, path: Path) -> Path:
    """Cross-family forecast (capscale.laws.observational): left, capability 1 against compute with
    each family's line (shared slope, its own offset); right, the benchmark against capability 1 with
    the link, every family coloured. The held-out targets sit at their *forecast* capability (their
    own scores were held out), with the forecast interval and the actual score (star)."""
    from capscale.schema import from_goodness

    plt = _pyplot()
    cap = predictor.capabilities_
    scores = cap.scores()
    models = cap.matrix.models
    families = sorted(set(cap.families))
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    if predictor.family_ is not None and predictor.family_ not in colours:
        colours[predictor.family_] = f"C{len(colours) % 10}"
    lines = cap.full.lines
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    known = np.isfinite(cap.x)
    target_flops = np.array([r.flops for r in records], dtype=float)
    for family in families:
        rows = np.flatnonzero((cap.families == family) & known)
        ax1.scatter(models["flops"].to_numpy(float)[rows], scores[rows, 0], color=colours[family], s=28, zorder=3,
                    label=family)
        if len(rows):
            slope, offset, _ = lines.family_line(scores[rows], cap.x[rows])
            span = models["flops"].to_numpy(float)[rows]
            if family == predictor.family_:
                span = np.concatenate([span, target_flops])
            grid = np.geomspace(span.min(), span.max(), 50)
            ax1.plot(grid, slope[0] * (np.log(grid) - cap.c0) + offset[0], color=colours[family], lw=1)
    target_colour = colours.get(predictor.family_, "k")
    for i, r in enumerate(records):
        centre = predictor.capability_at(r.flops)[0]
        spread = float(np.sqrt(predictor.target_line_["offset_var"][0] + lines.sigma2[0]))
        label = "held-out target (forecast capability, ±1.64 sd)" if i == 0 else None
        ax1.errorbar([r.flops], [centre], yerr=[[1.64 * spread], [1.64 * spread]], fmt="D", mfc="white",
                     color=target_colour, ms=8, capsize=3, zorder=4, label=label)
    ax1.set_xscale("log")
    ax1.set_xlabel("training compute (FLOPs)")
    ax1.set_ylabel("capability 1 (PC1 of the shared benchmarks)")
    ax1.set_title("capability 1 against compute: each family's line (partially pooled)", fontsize=10)
    ax1.legend(fontsize=8, loc="best")

    data = predictor.data_
    metric = predictor.metric_
    for family in families:
        rows = data[data["family"] == family]
        if len(rows):
            ax2.scatter(rows["c1"], rows["value"], color=colours[family], s=28, zorder=3, label=family)
    target_caps = np.array([predictor.capability_at(r.flops) for r in records])
    lo = min(data["c1"].min(), target_caps[:, 0].min())
    hi = max(data["c1"].max(), target_caps[:, 0].max())
    grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 120)
    rest = np.broadcast_to(target_caps[0, 1:], (len(grid), target_caps.shape[1] - 1))
    curve = from_goodness(metric, predictor.link_curve(np.column_stack([grid, rest])))
    ax2.plot(grid, curve, color="0.3", lw=1.2, label=f"{predictor.link_name_} link"
             + (" (other capabilities at the target's)" if target_caps.shape[1] > 1 else ""))
    for i, r in enumerate(records):
        c1 = target_caps[i, 0]
        ax2.errorbar([c1], [r.predicted], yerr=yerr(r.predicted, r.lower, r.upper), fmt="s", mfc="white",
                     color=target_colour, ms=8, capsize=3,
                     zorder=4, label=f"forecast, with the family's effect ({predictor.level:.0%} interval)"
                     if i == 0 else None)
        ax2.scatter([c1], [r.actual], marker="*", s=140, color="k", zorder=5,
                    label="held-out actual" if i == 0 else None)
    if predictor.chance_ is not None:
        ax2.axhline(predictor.chance_, color="gray", ls=":", lw=1, label="chance")
    ax2.set_xlabel("capability 1")
    ax2.set_ylabel(f"{predictor.task_} ({metric})")
    ax2.set_title(f"{predictor.task_}: benchmark against capability 1", fontsize=10)
    ax2.legend(fontsize=8, loc="best")
    names = ", ".join(r.model for r in records)
    fig.suptitle(f"observational forecast of {names} ({predictor.family_ or 'new family'}, "
                 f"{predictor.n_own_} own model(s) in the fit)", fontsize=11)
    return save_figure(fig, path)


def plot_forecast(predictor, records, path: Path) -> Path:
    """The backtest figure of a fitted predictor, by the method it is (auto: the candidate it chose)."""
    from capscale.laws.registry import METHODS

    predictor = getattr(predictor, "chosen_", predictor)
    draw = globals()[METHODS[predictor.method_name].plot]
    return draw(predictor, records, path)


def plot_backtest(outcome, out_dir: str | Path, method: str) -> list[Path]:
    """One PNG per (task, family) that was forecast."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (task, family), predictor in outcome.predictors.items():
        records = [r for r in outcome.records if r.task == task and r.family == family and np.isfinite(r.predicted)]
        if not records:
            continue
        path = out_dir / f"{safe_name(task)}--{safe_name(family)}--{method}.png"
        paths.append(plot_forecast(predictor, records, path))
    return paths


def plot_sampling_ladder(table, task: str, path: Path) -> Path:
    """Greedy accuracy, PassUntil estimate and exact pass probability of one generative task along compute.

    ``table``: one row per checkpoint with model, step, flops, greedy_acc, pass_until, lower, upper, exact_p
    (:func:`capscale.metrics.sample_checkpoint_table`). Greedy accuracy says 0 where the PassUntil and exact
    probabilities still resolve 1e-4 or 1e-8: the right panel shows the two measurements agree.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for k, (model, run) in enumerate(table.groupby("model", sort=True)):
        run = run.sort_values("step")
        color = f"C{k}"
        axes[0].plot(run["flops"], run["greedy_acc"], "o-", color=color, ms=4, label=model)
        err = np.vstack([run["pass_until"] - run["lower"], run["upper"] - run["pass_until"]]).clip(min=0)
        axes[1].errorbar(run["flops"], run["pass_until"], yerr=err, fmt="o-", color=color, ms=4, capsize=2,
                         label=f"{model} PassUntil")
        if run["exact_p"].notna().any():
            axes[1].plot(run["flops"], run["exact_p"], "x--", color=color, ms=6, lw=0.8)
            axes[2].errorbar(run["exact_p"], run["pass_until"], yerr=err, fmt="o", color=color, ms=4, capsize=2)
    axes[0].set_ylabel("greedy exact match")
    axes[1].set_ylabel("P(one sample correct): o PassUntil (90% CI), x exact")
    axes[1].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
    finite = table[["exact_p", "pass_until"]].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size:
        lo, hi = finite.min() / 2, min(1.0, finite.max() * 2)
        axes[2].plot([lo, hi], [lo, hi], color="gray", lw=1, ls=":", label="y = x")
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=8)
    axes[2].set_xlabel("exact pass probability (mean over items)")
    axes[2].set_ylabel("PassUntil estimate")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task}: greedy accuracy vs PassUntil vs exact probability, every checkpoint", fontsize=11)
    return save_figure(fig, path)


def _correlation_histogram(ax, correlations, label: str) -> None:
    r = correlations["correlation"].dropna().to_numpy()
    if len(r):
        ax.hist(r, bins=np.linspace(-1, 1, 21), color="C2", alpha=0.8)
        ax.axvline(float(np.median(r)), color="k", lw=1, ls="--", label=f"median {np.median(r):.2f}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"per-item correlation of p_correct with {label}")
    ax.set_ylabel("items")
    ax.set_title(f"{len(r)} items ({len(correlations) - len(r)} undefined)", fontsize=9)


def plot_choice_mass(table, correlations, task: str, path: Path, x: str = "flops") -> Path:
    """Correct vs incorrect probability mass across a ladder (Schaeffer et al. 2024's chain).

    ``table``: :func:`capscale.laws.choicemass.choice_mass_table` (one row per checkpoint);
    ``correlations``: :func:`capscale.laws.choicemass.item_compute_correlations`. Left: the mean
    unnormalised probability of the correct continuation, of all incorrect ones and of the strongest
    one; middle: what survives normalisation over the choices (p_correct) and the argmax (acc);
    right: how differently items move (Schaeffer et al.'s per-item correlation with scale)."""
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    one_each = table.groupby("model").size().max() == 1  # final checkpoints only: draw the family as one line
    for k, (model, run) in enumerate(table.groupby("family" if one_each else "model", sort=False)):
        run = run.sort_values(x)
        first = k == 0
        ax1.plot(run[x], run["mass_correct"], "o-", color="C0", ms=4, label="correct" if first else None)
        ax1.plot(run[x], run["mass_incorrect"], "s--", color="C3", ms=4, label="all incorrect" if first else None)
        ax1.plot(run[x], run["mass_top_incorrect"], "^:", color="C1", ms=4,
                 label="strongest incorrect" if first else None)
        ax2.plot(run[x], run["p_correct"], "o-", color="C0", ms=4, label="p_correct (softmax over choices)" if first else None)
        ax2.plot(run[x], run["acc"], "s--", color="k", ms=4, label="accuracy" if first else None)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("mean probability of the continuation(s)")
    ax2.set_ylabel("mean over items")
    ax2.set_ylim(-0.02, 1.02)
    _correlation_histogram(ax3, correlations, f"log {x}")
    fig.suptitle(f"{task}: probability mass on the correct vs the incorrect choices across the ladder", fontsize=11)
    return save_figure(fig, path)


def plot_choice_mass_forecast(predictor, records, path: Path) -> Path:
    """Choice-mass backtest: accuracy of the fitted checkpoints, the expected-accuracy curve of the
    pooled margin model, the forecast with its interval and the held-out value; and the per-item
    correlations of p_correct with scale that make a single task-level curve unreliable."""
    plt = _pyplot()
    x = predictor.x_
    meta = predictor.meta_
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if x == "loss":
        ax1.text(0.5, 0.5, "fitted in task loss: see the two-step plots", ha="center", transform=ax1.transAxes)
    else:
        targets = np.array([getattr(r, x) for r in records], dtype=float)
        values = meta[x].to_numpy(float)
        grid = padded_grid(values, targets, 40)
        ax1.scatter(values, predictor.observed_["accuracy"], color="C0", zorder=3, label="ladder checkpoints (fitted)")
        ax1.plot(grid, predictor.expected_curve(grid), color="C0", label="expected share of items won")
        draw_forecasts(ax1, records, x, label=f"forecast ({predictor.level:.0%} interval)")
        ax1.set_xscale("log")
        ax1.set_xlabel(x)
        ax1.set_ylabel(predictor.metric_)
        ax1.set_ylim(-0.02, 1.02)
        ax1.legend(fontsize=8)
    _correlation_histogram(ax2, predictor.item_correlations_, "log " + x if x != "loss" else "the loss")
    fig.suptitle(f"{predictor.task_} ({records[0].family}): choice-mass forecast of "
                 f"{', '.join(r.model for r in records)}", fontsize=11)
    return save_figure(fig, path)
