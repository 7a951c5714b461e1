"""Decisions over a ladder: every pair of recipes, task and target (``decide``), and how often they are right
when the largest runs are held out (``decide_backtest``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from capscale.ladder import MODEL_KEY, final_checkpoints, holdout_split
from capscale.laws.rolling import SIZE_RTOL, rungs
from capscale.schema import metric_kind
from capscale.decide.beliefs import forecast_beliefs, single_scale_pair
from capscale.decide.methods import (OWN_METHODS, RECORD_KEYS, TOO_CLOSE, DecideError, MethodSpec, default_methods,
                                     parse_method, recipes_of, rows_of)
from capscale.decide.records import DecisionRecord, decide_pair, score, summarise
from capscale.decide.targets import Target, parse_explicit, resolve_targets, same_rung


"""One decision: the two recipes' forecasts (value, interval at the level) by the rank metric, P(A beats
B) on the target metric's sense, the difference A - B with its interval, the decision and whether it was
called at the level; ``dropped`` (largest rungs left out), compute used per recipe (flops of the runs the
method read) and its fraction of the target's compute; in a backtest the actual values of ``--metric``,
the standard error of their difference (from the rows' stderr, where known), the actual winner and
whether the forced choice was right (None without a truth); ``reason``
says why a pair has no decision (then p_a_beats_b is null)."""


@dataclass
class DecideProblem:
    """Everything a decision needs that does not change between tasks."""
    recipe_col: str
    recipes: list[str]
    metric: str
    methods: list[MethodSpec]
    loss: str | None
    loss_task: str | None
    options: object  # capscale.laws.registry.MethodOptions


def items_for(spec: MethodSpec, items: dict | None):
    """Per-item data for a method (capscale.laws.registry's kinds): per-choice rows, their item metrics."""
    if items is None:
        return None
    if spec.name in OWN_METHODS:
        return items.get("item_metrics")
    from capscale.laws.registry import get_method

    kind = get_method(spec.name).items  # the registry's "items" are this dict's "item_metrics"
    return items.get("item_metrics" if kind == "items" else kind or "", None)


def recipe_items(items, recipe_rows_: pd.DataFrame, task: str, loss_task: str | None):
    """The per-item rows of one recipe's checkpoints (and only the tasks this decision reads)."""
    if items is None:
        return None
    checkpoints = set(recipe_rows_["checkpoint"].dropna()) if "checkpoint" in recipe_rows_ else set()
    keep = items["checkpoint"].isin(checkpoints) & items["task"].isin([task, loss_task or task])
    return items[keep].reset_index(drop=True) if keep.any() else None


def decide_task(problem: DecideProblem, train: pd.DataFrame, task: str, targets: list[Target],
                items: dict | None = None, dropped: int = 0) -> list[DecisionRecord]:
    """Every method x target x pair of recipes for one task."""
    by_recipe = {r: rows_of(train, problem.recipe_col, r) for r in problem.recipes}
    records = []
    for spec in problem.methods:
        kinds = items_for(spec, items)
        per_recipe = {r: recipe_items(kinds, by_recipe[r], task, problem.loss_task) for r in problem.recipes}
        beliefs = {}
        if spec.name != "single-scale":
            for r in problem.recipes:
                beliefs[r] = forecast_beliefs(spec, by_recipe[r], task, problem.metric, problem.loss, problem.loss_task,
                                              per_recipe[r], targets, r, problem.options)
        for i, a in enumerate(problem.recipes):
            for b in problem.recipes[i + 1:]:
                for k, target in enumerate(targets):
                    if spec.name == "single-scale":
                        ba, bb = single_scale_pair(spec, by_recipe[a], by_recipe[b], task, problem.metric,
                                                   per_recipe[a], per_recipe[b], target.scales[a], problem.options)
                    else:
                        ba, bb = beliefs[a][k], beliefs[b][k]
                    record = decide_pair(task, target, spec, problem.metric, a, b, ba, bb, problem.options.level,
                                         problem.options.seed)
                    record.dropped = dropped
                    records.append(record)
    return records


def actual_value(held: pd.DataFrame, recipe_col: str, recipe: str, model: str | None, task: str,
                 metric: str) -> tuple[float | None, float | None]:
    """(value, stderr) of a held-out target run's final checkpoint; (None, None) without one. The stderr
    is the row's, else the binomial one of a probability with n_items, else None."""
    if model is None:
        return None, None
    rows = held[(held[recipe_col].astype(str) == recipe) & (held["model"].astype(str) == model)
                & (held["task"] == task) & (held["metric"] == metric)]
    if rows.empty:
        return None, None
    row = final_checkpoints(rows).iloc[0]
    value = float(row["value"])
    se = float(row["stderr"]) if "stderr" in row and pd.notna(row["stderr"]) else None
    if se is None and metric_kind(metric).probability and "n_items" in row and pd.notna(row["n_items"]):
        se = math.sqrt(max(value * (1 - value), 0.0) / max(float(row["n_items"]) - 1, 1.0))
    return value, se


def fill_truth(record: DecisionRecord, held: pd.DataFrame, recipe_col: str, target: Target, task: str,
               metric: str, backtest: bool) -> None:
    """The actual outcome at the target, where both recipes have a run there (always scored in a
    backtest, which then names what is missing)."""
    truth_a = actual_value(held, recipe_col, record.recipe_a, target.runs.get(record.recipe_a), task, metric)
    truth_b = actual_value(held, recipe_col, record.recipe_b, target.runs.get(record.recipe_b), task, metric)
    if backtest or (truth_a[0] is not None and truth_b[0] is not None):
        score(record, truth_a, truth_b, metric)


def tasks_with(table: pd.DataFrame, metric: str, tasks: list[str] | None) -> list[str]:
    available = sorted(table.loc[table["metric"] == metric, "task"].unique())
    if tasks:
        missing = sorted(set(tasks) - set(available))
        if missing:
            raise DecideError(f"tasks {missing} have no rows with metric {metric!r}")
        return [t for t in available if t in tasks]
    if not available:
        raise DecideError(f"the ladder has no rows with metric {metric!r}")
    return available


def run_parallel(function, tasks: list[str], jobs: int, progress: bool, label: str) -> list:
    from capscale.progress import task_bar

    results = []
    with task_bar(len(tasks), label, enabled=progress, nested=jobs <= 1) as bar:
        if jobs > 1 and len(tasks) > 1:
            from joblib import Parallel, delayed

            for result in Parallel(n_jobs=jobs, return_as="generator")(delayed(function)(t) for t in tasks):
                results.append(result)
                bar.task_done()
        else:
            for t in tasks:
                results.append(function(t))
                bar.task_done()
    return results


def check_common_sizes(problem: DecideProblem, train: pd.DataFrame) -> None:
    """Single-scale ranking needs a size every pair of recipes has; say so before any fitting."""
    if not any(m.name == "single-scale" for m in problem.methods):
        return
    finals = final_checkpoints(train)
    sizes = {r: finals.loc[finals[problem.recipe_col].astype(str) == r, "params"].to_numpy(float)
             for r in problem.recipes}
    for i, a in enumerate(problem.recipes):
        for b in problem.recipes[i + 1:]:
            if not any(same_rung(x, y) for x in sizes[a] for y in sizes[b]):
                raise DecideError(f"recipes {a!r} and {b!r} have no common size (params within 2%) among the "
                                  "runs outside the target; single-scale ranking needs one (leave it out with "
                                  "--method, or add runs)")


def decide(ladder: pd.DataFrame, recipe_col: str, target: str, *, metric: str = "acc", methods=None,
           loss: str | None = "bpb_correct", loss_task: str | None = None, tasks: list[str] | None = None,
           options=None, items: dict | None = None, jobs: int = 1, progress: bool = False) -> dict:
    """Every pairwise decision at the target. ``items``: {"item_metrics": ..., "choices": ...} per-item
    data of the recipes' checkpoints (optional). Returns the JSON-ready result (see RECORD_KEYS)."""
    from capscale.laws.registry import MethodOptions

    options = options or MethodOptions()
    recipes = recipes_of(ladder, recipe_col)
    train, targets = resolve_targets(ladder, recipe_col, target, recipes)
    specs = [parse_method(m) if isinstance(m, str) else m for m in (methods or default_methods(metric, ladder))]
    problem = DecideProblem(recipe_col, recipes, metric, specs, loss, loss_task, options)
    check_common_sizes(problem, train)
    held = ladder if parse_explicit(target) is not None else holdout_split(ladder, target)[1]
    names = tasks_with(train, metric, tasks)

    def one(task):
        records = decide_task(problem, train, task, targets, items)
        for r in records:
            t = next(x for x in targets if x.label == r.target)
            fill_truth(r, held, recipe_col, t, task, metric, backtest=False)  # target runs exist: who won
        return records

    records = [r for chunk in run_parallel(one, names, jobs, progress, "decide") for r in chunk]
    return {"command": "decide", "recipe_col": recipe_col, "recipes": recipes, "metric": metric,
            "level": options.level, "target": target, "targets": [t.to_dict() for t in targets],
            "methods": [m.label for m in specs], "records": [r.contract() for r in records]}


def drop_largest(train: pd.DataFrame, k: int) -> pd.DataFrame:
    """The runs of ``train`` without those of the k largest sizes (params rungs over every recipe)."""
    if k == 0:
        return train
    finals = final_checkpoints(train).drop_duplicates(MODEL_KEY)
    steps = rungs(finals["params"].to_numpy(float))
    if k >= len(steps):
        return train.iloc[:0]
    cut = steps[-k] / (1.0 + SIZE_RTOL)
    keep = finals.loc[finals["params"] < cut, MODEL_KEY]
    mask = pd.MultiIndex.from_frame(train[MODEL_KEY]).isin(pd.MultiIndex.from_frame(keep))
    out = train.loc[mask].reset_index(drop=True)
    out.attrs = dict(train.attrs)
    return out


def decide_backtest(ladder: pd.DataFrame, recipe_col: str, target: str, *, metric: str = "acc", methods=None,
                    loss: str | None = "bpb_correct", loss_task: str | None = None, tasks: list[str] | None = None,
                    options=None, items: dict | None = None, max_drop: int = 3, jobs: int = 1,
                    progress: bool = False) -> dict:
    """Hold out the target runs, decide every pair from the smaller runs, score against the targets'
    actual ranking; repeat with the largest rungs dropped one by one (the compute-decision frontier)."""
    from capscale.laws.registry import MethodOptions

    options = options or MethodOptions()
    if parse_explicit(target) is not None:
        raise DecideError("decide-backtest needs --target as a query selecting runs the ladder has (their actual "
                          "ranking is the truth), not explicit scales")
    recipes = recipes_of(ladder, recipe_col)
    train, targets = resolve_targets(ladder, recipe_col, target, recipes)
    held = holdout_split(ladder, target)[1]
    specs = [parse_method(m) if isinstance(m, str) else m for m in (methods or default_methods(metric, ladder))]
    problem = DecideProblem(recipe_col, recipes, metric, specs, loss, loss_task, options)
    check_common_sizes(problem, train)
    names = tasks_with(train, metric, tasks)
    levels = [k for k in range(max_drop + 1) if not drop_largest(train, k).empty]

    def one(task):
        records = []
        for k in levels:
            reduced = drop_largest(train, k)
            try:
                chunk = decide_task(problem, reduced, task, targets, items, dropped=k)
            except DecideError as e:  # a common size left at k = 0 may be gone further down
                chunk = [DecisionRecord(task, t.label, s.label, s.ranked_by(metric), a, b, dropped=k, reason=str(e))
                         for s in specs for i, a in enumerate(recipes) for b in recipes[i + 1:] for t in targets]
            for r in chunk:
                t = next(x for x in targets if x.label == r.target)
                fill_truth(r, held, recipe_col, t, task, metric, backtest=True)
            records += chunk
        return records

    records = [r.contract() for chunk in run_parallel(one, names, jobs, progress, "decide-backtest") for r in chunk]
    return {"command": "decide-backtest", "recipe_col": recipe_col, "recipes": recipes, "metric": metric,
            "level": options.level, "target": target, "targets": [t.to_dict() for t in targets],
            "methods": [m.label for m in specs], "dropped": levels, "records": records,
            "summary": summarise(records, ["method", "dropped"]),
            "per_task": summarise(records, ["task", "method", "dropped"])}


__all__ = ["decide", "decide_backtest", "MethodSpec", "parse_method", "default_methods", "RECORD_KEYS", "TOO_CLOSE",
           "DecideError", "summarise"]
