"""A whole ladder: one curve per family x task, its class and evidence, hidden progress, the report table."""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from capscale.schema import jsonable
from capscale.trends.classes import BINARY_METRICS, CONTINUOUS_METRICS, LOWER_IS_BETTER, NEAR_CHANCE, TrendError
from capscale.trends.decide import decide_shape, progress_test
from capscale.trends.evidence import bigbench_scores, quadratic_evidence
from capscale.trends.noise import curve_noise


@dataclass
class TrendResult:
    """One family x task curve: its class, p-values and evidence, plus the points it came from."""

    family: str
    task: str
    metric: str
    axis: str
    direction: str
    noise_source: str
    label: str
    p_value: float | None
    p_trend: float | None
    p_turn: float | None
    p_emergence: float | None
    models: list[str]
    checkpoints: list[str]
    x: list[float]
    values: list[float]
    stderr: list[float]
    fitted: list[float]
    chance: float | None
    excess_scatter: float
    turning_point: dict | None
    floor: dict | None
    kendall_tau: float | None
    kendall_p: float | None
    spearman_rho: float | None
    spearman_p: float | None
    linearity: float | None
    breakthroughness: float | None
    curvature: dict = field(default_factory=dict)
    hidden_progress: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def confident(self) -> bool:
        return self.noise_source != "none"

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def metric_direction(metric: str, direction: str = "auto") -> str:
    if direction in ("higher", "lower"):
        return direction
    base = metric.split(":")[-1].lower()
    return "lower" if base in LOWER_IS_BETTER or base.startswith(("loss", "bpb", "nll", "ppl", "perplexity")) else "higher"


def curve_seed(seed: int, *keys: str) -> int:
    """A per-curve seed: the same curve gets the same draws whatever else is analysed."""
    return int(zlib.crc32("\x1f".join(map(str, keys)).encode()) ^ (seed * 2654435761 % 2**32))


def family_points(ladder: pd.DataFrame, family: str, task: str, metric: str) -> tuple[pd.DataFrame, str]:
    """The final checkpoint of each model of one family, ordered by compute; the axis used."""
    from capscale.ladder import final_checkpoints

    rows = ladder[(ladder["family"] == family) & (ladder["task"] == task) & (ladder["metric"] == metric)]
    rows = final_checkpoints(rows)
    dup = rows.duplicated(["model"], keep=False)
    if dup.any():
        models = sorted(rows.loc[dup, "model"].unique())[:5]
        raise TrendError(f"family {family!r} task {task!r} metric {metric!r}: several final rows for models "
                         f"{models}; filter the ladder on the column that tells them apart")
    rows = rows.copy()
    if "checkpoint" not in rows.columns or rows["checkpoint"].isna().any():
        rows["checkpoint"] = rows["model"]
    flops_ok = rows["flops"].notna().all() and (rows["flops"] > 0).all()
    axis = "flops" if flops_ok else "params"
    if not flops_ok and not (rows["params"].notna().all() and (rows["params"] > 0).all()):
        raise TrendError(f"family {family!r} task {task!r}: neither flops nor params known for every model")
    rows = rows.sort_values([axis, "model"], kind="stable").reset_index(drop=True)
    return rows, axis


def _chance(points: pd.DataFrame, items: pd.DataFrame | None, task: str, metric: str) -> float | None:
    if "chance" in points.columns and points["chance"].notna().any():
        return float(points["chance"].median())
    if metric in BINARY_METRICS and items is not None and "n_choices" in items.columns:
        rows = items[(items["task"] == task) & items["checkpoint"].astype(str).isin(points["checkpoint"].astype(str))]
        if len(rows) and rows["n_choices"].notna().all():
            return float((1.0 / rows["n_choices"]).mean())
    return None


def analyse_curve(points: pd.DataFrame, axis: str, family: str, task: str, metric: str, *,
                  items: pd.DataFrame | None = None, direction: str = "auto", alpha: float = 0.05,
                  n_sim: int = 999, seed: int = 0) -> TrendResult:
    """Classify one family's curve (rows from :func:`family_points`)."""
    direction = metric_direction(metric, direction)
    sign = 1.0 if direction == "higher" else -1.0
    values = points["value"].to_numpy(dtype=float)
    t = np.log10(points[axis].to_numpy(dtype=float))
    noise = curve_noise(points, metric, items, task)
    chance = _chance(points, items, task, metric)
    g = sign * values
    chance_g = None if chance is None else sign * chance
    notes = [noise.note] if noise.note else []
    if noise.source == "none":
        notes.append("no noise source (no per-item data, stderr or n_items): shape only, without confidence")
    if len(np.unique(t)) < len(t):
        notes.append(f"some models share the same {axis}")
    base = dict(family=family, task=task, metric=metric, axis=axis, direction=direction, noise_source=noise.source,
                models=points["model"].astype(str).tolist(), checkpoints=points["checkpoint"].astype(str).tolist(), x=points[axis].astype(float).tolist(),
                values=values.tolist(), stderr=np.sqrt(np.diag(noise.cov)).tolist(), chance=chance, notes=notes)
    if len(g) < 2:
        return TrendResult(label="insufficient", p_value=None, p_trend=None, p_turn=None, p_emergence=None,
                           fitted=values.tolist(), excess_scatter=0.0, turning_point=None, floor=None,
                           kendall_tau=None, kendall_p=None, spearman_rho=None, spearman_p=None, linearity=None,
                           breakthroughness=None, **base)
    shape = decide_shape(t, g, noise.cov, chance_g=chance_g, alpha=alpha, n_sim=n_sim,
                         seed=curve_seed(seed, family, task, metric))
    confident = noise.source != "none"
    varied = len(g) >= 3 and np.ptp(g) > 0 and np.ptp(t) > 0
    kt = stats.kendalltau(t, g) if varied else None
    sr = stats.spearmanr(t, g) if varied else None
    lin, brk = bigbench_scores(g)
    turning = None
    if shape.turning_index is not None:
        i = shape.turning_index
        turning = {"model": base["models"][i], "x": base["x"][i], "value": float(values[i])}
    floor = None
    if shape.floor is not None:
        k = shape.floor["n_points"]
        floor = {"models": base["models"][:k], "n_points": k, "level": float(sign * shape.floor["level"]),
                 "jump_at": base["models"][k], "near_chance": shape.floor["near_chance"]}
    return TrendResult(
        label=shape.label, p_value=shape.p_value if confident else None,
        p_trend=shape.p_trend if confident else None, p_turn=shape.p_turn if confident else None,
        p_emergence=shape.p_emergence if confident else None, fitted=(sign * np.asarray(shape.fitted)).tolist(),
        excess_scatter=shape.tau, turning_point=turning, floor=floor,
        kendall_tau=None if kt is None else float(kt.statistic), kendall_p=None if kt is None else float(kt.pvalue),
        spearman_rho=None if sr is None else float(sr.statistic), spearman_p=None if sr is None else float(sr.pvalue),
        linearity=lin, breakthroughness=brk, curvature=quadratic_evidence(t, g, noise.cov), **base)


def progress_region(result: TrendResult) -> tuple[list[int], str] | None:
    """Which models to test for hidden progress, and why (module docstring), or None."""
    n = len(result.values)
    if result.label == "flat" and n >= 2:
        return list(range(n)), "flat"
    if result.label == "emergent" and result.floor is not None:
        return list(range(result.floor["n_points"])), "floor before the jump"
    if result.chance is not None and result.metric in BINARY_METRICS | {"p_correct"}:
        sign = 1.0 if result.direction == "higher" else -1.0
        near = [sign * v <= sign * result.chance + NEAR_CHANCE for v in result.values]
        run = 0
        while run < n and near[run]:
            run += 1
        if run >= 2:
            return list(range(run)), "near chance"
    return None


def hidden_progress(result: TrendResult, ladder: pd.DataFrame, items: pd.DataFrame | None, *,
                    alpha: float = 0.05, n_sim: int = 999, seed: int = 0) -> dict | None:
    """Test the continuous metrics of the same task on the models where the metric shows no progress."""
    region = progress_region(result)
    if region is None:
        return None
    idx, why = region
    models = [result.models[i] for i in idx]
    tested = {}
    for metric in CONTINUOUS_METRICS:
        if metric == result.metric:
            continue
        try:
            points, axis = family_points(ladder, result.family, result.task, metric)
        except TrendError:
            points = None
        if points is not None and len(points):
            points = points[points["model"].astype(str).isin(models)]
            points = points[points[result.axis].notna()] if result.axis in points.columns else points
        from_items = (points is None or len(points) < len(models)) and items is not None and metric in items.columns
        if from_items:
            points = _points_from_items(items, result, idx, metric)
        if points is None or len(points) < 2 or len(points) < len(models):
            continue
        points = points.sort_values(result.axis, kind="stable").reset_index(drop=True)
        noise = curve_noise(points, metric, items, result.task)
        sign = 1.0 if metric_direction(metric) == "higher" else -1.0
        t = np.log10(points[result.axis].to_numpy(dtype=float))
        g = sign * points["value"].to_numpy(dtype=float)
        test = progress_test(t, g, noise.cov, n_sim=n_sim, seed=curve_seed(seed, result.family, result.task, metric, "hp"))
        tested[metric] = {"p_value": test["p_value"] if noise.source != "none" else None,
                          "change": sign * test["change"], "first": float(points["value"].iloc[0]),
                          "last": float(points["value"].iloc[-1]), "noise_source": noise.source,
                          "source": "items" if from_items else "ladder", "excess_scatter": test["tau"]}
    out = {"region": why, "models": models, "metrics": tested}
    pvals = [m["p_value"] for m in tested.values() if m["p_value"] is not None]
    if not tested:
        out["hidden_progress"] = None
        out["note"] = "no continuous metric (p_correct, bpb_correct, nll_correct, pass_until) for these models"
    elif not pvals:
        out["hidden_progress"] = None
        out["note"] = "no noise source for the continuous metrics: shape only"
    else:
        out["hidden_progress"] = bool(min(pvals) < alpha / len(pvals))
    return out


def _points_from_items(items: pd.DataFrame, result: TrendResult, idx: list[int], metric: str) -> pd.DataFrame | None:
    """Task means of a per-item metric for the region's checkpoints (when the ladder lacks that metric)."""
    rows = items[items["task"] == result.task]
    if not len(rows):
        return None
    means = rows.groupby(rows["checkpoint"].astype(str))[metric].mean()
    records = []
    for i in idx:
        ck = result.checkpoints[i]
        if ck not in means.index or not np.isfinite(means[ck]):
            return None
        records.append({"model": result.models[i], "checkpoint": ck, result.axis: result.x[i], "value": float(means[ck])})
    return pd.DataFrame.from_records(records)


@dataclass
class TrendReport:
    results: list[TrendResult]
    skipped: list[tuple[str, str, str]]
    notes: list[str]

    def table(self) -> pd.DataFrame:
        return summary_table(self.results)


def analyse_ladder(ladder: pd.DataFrame, metric: str = "acc", *, items: pd.DataFrame | None = None,
                   tasks: list[str] | None = None, families: list[str] | None = None, direction: str = "auto",
                   alpha: float = 0.05, n_sim: int = 999, seed: int = 0, early_warning: bool = True,
                   progress: bool = False) -> TrendReport:
    """Classify every family x task curve of ``metric``; families are never pooled. ``progress``: a bar
    over curves (each costs n_sim parametric-bootstrap draws per test)."""
    rows = ladder[ladder["metric"] == metric]
    if tasks:
        rows = rows[rows["task"].isin(tasks)]
    if families:
        rows = rows[rows["family"].isin(families)]
    if rows.empty:
        metrics = sorted(ladder["metric"].unique())
        with_metric = ladder[ladder["metric"] == metric]
        hint = (f"; tasks with it: {sorted(with_metric['task'].unique())[:20]}, families: "
                f"{sorted(with_metric['family'].unique())}" if len(with_metric) else f"; metrics: {metrics[:20]}")
        raise TrendError(f"no rows for metric {metric!r}" + (f" and tasks {tasks}" if tasks else "")
                         + (f" and families {families}" if families else "") + hint)
    results, skipped = [], []
    from capscale.progress import task_bar

    curves = list(rows.groupby(["task", "family"], sort=True).groups)
    with task_bar(len(curves), "trends", enabled=progress, nested=False) as bar:
        for task, family in curves:
            analyse_one(ladder, task, family, metric, items, direction, alpha, n_sim, seed, early_warning,
                        results, skipped)
            bar.task_done()
    notes = []
    if results and all(r.noise_source == "none" for r in results):
        notes.append("no noise source: no --items, and the ladder has no stderr or n_items column; classes are "
                     "shapes only, reported without confidence (p-values)")
    return TrendReport(results, skipped, notes)


def analyse_one(ladder, task, family, metric, items, direction, alpha, n_sim, seed, early_warning, results,
                skipped) -> None:
    """One family x task curve, appended to ``results`` (or its reason to ``skipped``)."""
    try:
        points, axis = family_points(ladder, family, task, metric)
        result = analyse_curve(points, axis, family, task, metric, items=items, direction=direction,
                               alpha=alpha, n_sim=n_sim, seed=seed)
        if early_warning:
            result.hidden_progress = hidden_progress(result, ladder, items, alpha=alpha, n_sim=n_sim, seed=seed)
    except TrendError as exc:
        skipped.append((task, family, str(exc)))
        return
    results.append(result)


def strongest_metric(tested: dict) -> str:
    """The continuous metric with the smallest p-value; ties (p at its floor) go to the largest relative change."""
    def key(name):
        m = tested[name]
        rel = abs(m["change"]) / max(abs(m["first"]), 1e-12)
        return (2.0 if m["p_value"] is None else m["p_value"], -rel)
    return min(tested, key=key)


def summary_table(results: list[TrendResult]) -> pd.DataFrame:
    records = []
    for r in results:
        evidence = ""
        if r.turning_point:
            evidence = f"turn at {r.turning_point['model']}"
        elif r.floor:
            evidence = f"floor {r.floor['n_points']} models, jump at {r.floor['jump_at']}"
        hp = r.hidden_progress
        hidden = "" if hp is None else ("n/a" if hp["hidden_progress"] is None else ("yes" if hp["hidden_progress"] else "no"))
        if hp and hp["metrics"]:
            first = strongest_metric(hp["metrics"])
            parts = []
            for name in [first] + [m for m in hp["metrics"] if m != first]:
                m = hp["metrics"][name]
                p = "" if m["p_value"] is None else f" p={m['p_value']:.2g}"
                parts.append(f"{name} {m['first']:.3g}->{m['last']:.3g}{p}")
            hidden += " (" + "; ".join(parts) + ")"
        records.append({"task": r.task, "family": r.family, "metric": r.metric, "axis": r.axis, "n": len(r.values),
                        "class": r.label, "p_value": r.p_value, "evidence": evidence,
                        "first": r.values[0], "last": r.values[-1], "linearity": r.linearity,
                        "breakthroughness": r.breakthroughness, "kendall_tau": r.kendall_tau,
                        "excess_scatter": r.excess_scatter, "noise": r.noise_source, "hidden_progress": hidden})
    return pd.DataFrame.from_records(records)
