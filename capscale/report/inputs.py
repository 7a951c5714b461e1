"""The report's inputs, read once: the ladder table, the per-item data the forecasting method reads and the
per-item metrics the trend tests take their noise from. A results store is read a single time for all three
(``capscale backtest`` and ``capscale trends`` each read it again; on the toy store a read costs seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import is_results_store, load_ladder, validate
from capscale.laws.registry import get_method


@dataclass
class Inputs:
    ladder: pd.DataFrame
    items: pd.DataFrame | None  # what the method reads (capscale.laws.registry: choices, item_metrics, samples)
    trend_items: pd.DataFrame | None  # per-item metrics for the trend tests' noise


def store_rows(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame]:
    from capscale.store import ResultsStore

    store = ResultsStore(path)
    choices, samples = store.read_rows()
    return choices, samples, store.read_manifest()


def method_items(kind: str | None, choices, samples) -> pd.DataFrame | None:
    """The per-item data of one kind from a store's rows (as capscale.commands.forecast.per_item_data reads them)."""
    from capscale.metrics import item_metrics

    if kind == "choices":
        return choices
    if kind == "item_metrics":
        return None if choices is None else item_metrics(choices)
    if kind == "samples" and samples is not None:
        return samples[["checkpoint", "task", "item", "n_drawn", "n_correct", "until"]]
    return None


def read_inputs(ladder_path: str, items_path: str | None, method: str, drop_nonfinite: bool = False) -> Inputs:
    from capscale.metrics import ladder_table, store_item_metrics

    path = Path(ladder_path)
    kind = get_method(method).items
    rows = store_rows(path) if is_results_store(path) else None
    if rows is not None:
        choices, samples, manifest = rows
        table = ladder_table(choices, manifest, samples)
        table.attrs["row_kind"] = "row"
        ladder = validate(table, str(path), drop_nonfinite=drop_nonfinite)
    else:
        ladder = load_ladder(path, drop_nonfinite=drop_nonfinite)
    source = Path(items_path) if items_path else (path if rows is not None else None)
    if source is None:
        return Inputs(ladder, None, None)
    if is_results_store(source):
        choices, samples, _ = rows if source == path and rows is not None else store_rows(source)
        return Inputs(ladder, method_items(kind, choices, samples), store_item_metrics(choices, samples))
    from capscale.laws.choicemass import load_choice_rows
    from capscale.trends import load_items

    trend_items = load_items(source)  # a rows file: per-choice, per-sample or per-item rows
    if kind == "choices":
        try:
            return Inputs(ladder, load_choice_rows(source), trend_items)
        except CapscaleError:  # per-item or per-sample rows: the task-level methods resample their items
            return Inputs(ladder, trend_items, trend_items)
    return Inputs(ladder, trend_items if kind == "item_metrics" else None, trend_items)
