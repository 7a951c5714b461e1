"""The report's inputs, read once: the ladder table, the per-item data the forecasting method reads and the
per-item metrics the trend tests take their noise from. A results store is read a single time for all three
(``capscale backtest`` and ``capscale trends`` each read it again; on the toy store a read costs seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from capscale.errors import CapscaleError
from capscale.ladder import SAMPLE_ROW_COLUMNS, is_results_store, load_ladder, read_items, validate
from capscale.laws.registry import get_method


@dataclass
class Inputs:
    ladder: pd.DataFrame
    items: pd.DataFrame | None  # what the method reads (capscale.laws.registry: choices, items, samples)
    trend_items: pd.DataFrame | None  # per-item metrics for the trend tests' noise


def store_rows(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame]:
    from capscale.store import ResultsStore

    store = ResultsStore(path)
    choices, samples = store.read_rows()
    return choices, samples, store.read_manifest()


def method_items(kind: str | None, choices, samples, item_table) -> pd.DataFrame | None:
    """The per-item data of one registry kind from a store's rows already read (what ``ladder.read_items``
    would read from the store again): per-choice rows, per-sample counts, or the store's per-item metrics."""
    if kind == "choices":
        return choices
    if kind == "items":
        return item_table
    if kind == "samples" and samples is not None:
        return samples[SAMPLE_ROW_COLUMNS]
    return None


def file_method_items(source: Path, kind: str | None, item_table: pd.DataFrame) -> pd.DataFrame | None:
    """``--items FILE``: the method's kind read by ``ladder.read_items``; a per-choice method given per-item
    or per-sample rows falls back to their per-item metrics (the task-level methods resample those items)."""
    if kind == "items":
        return item_table
    if kind is None:
        return None
    try:
        return read_items(source, kind)
    except CapscaleError:
        return item_table if kind == "choices" else None


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
        item_table = store_item_metrics(choices, samples)
        return Inputs(ladder, method_items(kind, choices, samples, item_table), item_table)
    item_table = read_items(source, "items")  # a rows file: per-choice, per-sample or per-item rows
    return Inputs(ladder, file_method_items(source, kind, item_table), item_table)
