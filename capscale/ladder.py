"""Ladder-table I/O: load, validate and slice the long table every predictor consumes.

The table (docs/design.md) has one row per checkpoint x task x metric:
``family, model, params, tokens, flops, step, task, metric, value`` plus any extra columns
(stderr, n_items, chance, num_fewshot, token_multiplier, ...), which stay available to
holdout queries. ``params`` means non-embedding parameters unless a file says otherwise.

Loading is strict because a forecast built on a silently mangled table is silently wrong:
a non-numeric cell names its file line, a NaN/inf value is an error unless the caller asks
for it to be dropped (and is then counted in a warning), a missing ``flops`` is filled
as 6·params·tokens only where both are known, a scale that is not positive (params ≤ 0; tokens
or flops ≤ 0 except at step 0, a run's initial checkpoint) and a probability outside [0, 1]
(accuracies given in percent) are errors naming their lines.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.schema import metric_kind
from capscale.metrics import LADDER_COLUMNS

REQUIRED_COLUMNS = ["family", "model", "params", "tokens", "task", "metric", "value"]
"""Columns a file must have; ``flops`` (6·N·D) and ``step`` (NaN = final) may be absent."""
NUMERIC_COLUMNS = ["params", "tokens", "flops", "step", "value"]
TEXT_COLUMNS = ["family", "model", "task", "metric", "checkpoint"]
SERIES_EXTRAS = ["stderr", "n_items", "chance", "ceiling", "checkpoint"]
MODEL_KEY = ["family", "model"]
SERIES_KEY = ["family", "model", "step"]
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
SHOW = 5  # how many offending rows an error message quotes


class LadderError(CapscaleError):
    """A ladder table is unusable as given; the message names the file, line(s) or query to fix."""


# --- what values a column may hold -------------------------------------------------------

def metric_range(metric: str) -> tuple[float, float] | None:
    """The values a bounded metric can take, None for unbounded ones (losses, nll, bpb, perplexity).

    Probabilities (accuracies, error rates, pass rates, ``pass_at_<k>``) lie in [0, 1]; the
    multi-class Brier score (capscale/metrics.py: sum over choices of (p_j - 1[j is gold])^2) in
    [0, 2]. Which metric is which is capscale.schema's table of metric kinds."""
    kind = metric_kind(metric)
    if kind.probability:
        return 0.0, 1.0
    if np.isfinite(kind.upper):
        return 0.0, kind.upper
    return None


def bad_scale(values: np.ndarray, step: np.ndarray, column: str) -> np.ndarray:
    """Where a scale column cannot be right: params must be > 0; tokens and flops must be > 0 except at
    step 0 (a run's initial checkpoint has seen no tokens). NaN means unknown and is allowed."""
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        if column == "params":
            return values <= 0
        initial = np.asarray(step, dtype=float) == 0
        return (values < 0) | ((values == 0) & ~initial)


# --- locating rows in messages ---------------------------------------------------------

def row_labels(df: pd.DataFrame, positions) -> list[str]:
    """How to point a user at rows: CSV line numbers (header = line 1), else 1-based row numbers."""
    kind = df.attrs.get("row_kind", "row")
    offset = 2 if kind == "line" else 1
    return [f"{kind} {int(p) + offset}" for p in positions]


def describe_rows(df: pd.DataFrame, mask: pd.Series) -> str:
    """'lines 3, 7, ... (N in all)' for the rows where mask holds."""
    positions = np.flatnonzero(np.asarray(mask))
    labels = row_labels(df, positions[:SHOW])
    more = f", ... ({len(positions)} in all)" if len(positions) > SHOW else ""
    return ", ".join(labels) + more


# --- reading -------------------------------------------------------------------------

def is_results_store(path: Path) -> bool:
    return (path.is_dir() and ((path / "choices").is_dir() or (path / "samples").is_dir())
            and (path / "checkpoints.csv").is_file())


def read_store(path: Path) -> pd.DataFrame:
    """Build the table from a results store with the same code as ``capscale summary``."""
    from capscale.metrics import ladder_table
    from capscale.store import ResultsStore

    store = ResultsStore(path)
    choices, samples = store.read_rows()
    table = ladder_table(choices, store.read_manifest(), samples)
    table.attrs["row_kind"] = "row"
    return table


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV (optionally compressed) or Parquet file, chosen by suffix, text key columns kept as strings;
    errors name the file and ``what`` it should have been."""
    name = path.name.lower()
    try:
        if name.endswith(CSV_SUFFIXES):
            df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, skipinitialspace=True)
            df.attrs["row_kind"] = "line"
        elif name.endswith(PARQUET_SUFFIXES):
            df = pd.read_parquet(path)
            df.attrs["row_kind"] = "row"
        else:
            raise LadderError(f"{path}: {what} must be a CSV ({', '.join(CSV_SUFFIXES)}) or Parquet file")
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise LadderError(f"{path}: cannot read {what}: {exc}") from exc
    return df


def read_file(path: Path) -> pd.DataFrame:
    """Raw CSV/Parquet contents of a ladder table."""
    if not path.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
        raise LadderError(f"{path}: unknown ladder format; expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES} "
                          "or a results-store folder (choices/ + checkpoints.csv)")
    return read_table(path, "ladder table")


# --- per-item data: one reader for every method, the trends and the plots ------------------

ITEM_KINDS = ("choices", "samples", "items")
ITEM_KEY = ["checkpoint", "task", "item"]
CHOICE_ROW_COLUMNS = [*ITEM_KEY, "choice", "gold", "logprob"]
SAMPLE_ROW_COLUMNS = [*ITEM_KEY, "n_drawn", "n_correct", "until"]


def read_items(source: str | Path, kind: str) -> pd.DataFrame:
    """Per-item data from a results store (folder) or a CSV / CSV.gz / Parquet file, as ``kind`` asks.

    - ``"choices"``: the per-choice rows (docs/design.md: checkpoint, task, item, choice, gold, logprob,
      n_tokens, n_chars, n_bytes, greedy), which choice-mass models;
    - ``"samples"``: per-sample counts (checkpoint, task, item, n_drawn, n_correct, until), which the
      per-item PassUntil law fits;
    - ``"items"``: per-item metrics (checkpoint, task, item, one column per metric; capscale.metrics) of
      everything a store holds or of a per-choice / per-sample rows file; any other file with
      checkpoint, task, item is a per-item table taken as it is. Item resampling and trend noise use it.

    Each method declares its kind in capscale.laws.registry, so no caller switches on method names.
    """
    if kind not in ITEM_KINDS:
        raise ValueError(f"kind must be one of {ITEM_KINDS}, got {kind!r}")
    path = Path(source)
    if path.is_dir():
        return store_items(path, kind)
    if not path.exists():
        raise LadderError(f"{path}: no such per-item data file or results store")
    return file_items(read_table(path, "a per-item data file (per-choice, per-sample or per-item rows)"), path, kind)


def store_items(path: Path, kind: str) -> pd.DataFrame:
    from capscale.metrics import store_item_metrics
    from capscale.store import ResultsStore

    store = ResultsStore(path)
    if kind == "choices":
        return require_item_columns(store.read_choices(), path, CHOICE_ROW_COLUMNS, "per-choice rows")
    if kind == "samples":
        return store.read_samples()[SAMPLE_ROW_COLUMNS]
    if not is_results_store(path):
        raise LadderError(f"{path}: per-item data must be a results store (choices/ or samples/ + checkpoints.csv) "
                          "or a per-choice / per-sample / per-item rows file")
    return store_item_metrics(*store.read_rows())


def file_items(raw: pd.DataFrame, path: Path, kind: str) -> pd.DataFrame:
    from capscale.metrics import item_metrics, sample_item_metrics

    if kind == "choices":
        return require_item_columns(raw, path, CHOICE_ROW_COLUMNS, "per-choice rows")
    if kind == "samples":
        return require_item_columns(raw, path, SAMPLE_ROW_COLUMNS, "per-sample rows")[SAMPLE_ROW_COLUMNS]
    cols = set(require_item_columns(raw, path, ITEM_KEY, "per-item data").columns)
    if {"choice", "gold", "logprob"} <= cols:
        for c in ("n_chars", "n_bytes", "n_tokens"):
            if c not in raw.columns:
                raw[c] = -1
        raw["gold"] = raw["gold"].astype(bool)
        out = item_metrics(raw)
        if (raw["n_bytes"] <= 0).all():
            out = out.drop(columns=["bpb_correct", "acc_bytes", "acc_norm"])  # byte/char counts unknown
        return out
    if {"n_drawn", "n_correct", "until"} <= cols:
        for c in ("greedy_correct", "exact_p"):
            if c not in raw.columns:
                raw[c] = np.nan
        return sample_item_metrics(raw)
    return raw


def require_item_columns(rows: pd.DataFrame, path: Path, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise LadderError(f"{path}: {what} lack columns {missing} (docs/design.md: {', '.join(columns)})")
    return rows


# --- validation (pure: DataFrame in, DataFrame out) --------------------------------------

def check_columns(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LadderError(f"{source}: missing required column(s) {missing}; a ladder table needs "
                          f"{LADDER_COLUMNS} (flops and step may be left out)")
    if df.empty:
        raise LadderError(f"{source}: the ladder table has no rows")


def coerce_numeric(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    """The column as float64; a cell that is present but not a number is an error naming its row."""
    col = df[column]
    if pd.api.types.is_bool_dtype(col):
        raise LadderError(f"{source}: column {column!r} holds booleans, not numbers")
    if pd.api.types.is_numeric_dtype(col):
        return col.astype("float64")
    numbers = pd.to_numeric(col, errors="coerce")
    text = col.astype("string").str.strip()
    bad = numbers.isna() & col.notna() & (text != "") & (text.str.lower() != "nan")
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise LadderError(f"{source}: {row_labels(df, [first])[0]}: column {column!r} has non-numeric value "
                          f"{col.iloc[first]!r} ({int(bad.sum())} such cell(s) in this column)")
    return numbers.astype("float64")


def check_text(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Key columns as strings; an empty family is allowed (stores without a family), others are not."""
    out = df.copy()
    out["family"] = out["family"].fillna("").astype(str)
    for column in ("model", "task", "metric"):
        empty = out[column].isna() | (out[column].astype(str).str.strip() == "")
        if empty.any():
            raise LadderError(f"{source}: empty {column!r} at {describe_rows(df, empty)}")
        out[column] = out[column].astype(str)
    return out


def fill_flops(df: pd.DataFrame) -> pd.DataFrame:
    """flops = 6·params·tokens where flops is missing and both factors are known (docs/design.md default)."""
    out = df.copy()
    if "flops" not in out.columns:
        out["flops"] = np.nan
    estimate = 6.0 * out["params"] * out["tokens"]
    out["flops"] = out["flops"].where(out["flops"].notna(), estimate)
    return out


def check_scale(df: pd.DataFrame, source: str) -> None:
    """Zero or negative params, tokens or flops (see :func:`bad_scale`) name their rows."""
    for column in ("params", "tokens", "flops"):
        bad = bad_scale(df[column].to_numpy(dtype=float), df["step"].to_numpy(dtype=float), column)
        if bad.any():
            rule = "must be > 0" if column == "params" else "must be > 0 (0 only at step 0)"
            first = df[column].to_numpy()[np.flatnonzero(bad)[0]]
            raise LadderError(f"{source}: {column} {rule}, got {first:g} at {describe_rows(df, bad)}")


def check_metric_ranges(df: pd.DataFrame, source: str) -> None:
    """A probability metric outside its range is an error; above 1 it almost always means percent.
    NaN and inf are left to :func:`handle_nonfinite`."""
    for metric in df["metric"].unique():
        bounds = metric_range(metric)
        if bounds is None:
            continue
        rows = (df["metric"] == metric).to_numpy()
        values = df["value"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            bad = rows & np.isfinite(values) & ((values < bounds[0]) | (values > bounds[1]))
        if not bad.any():
            continue
        first = values[np.flatnonzero(bad)[0]]
        hint = (f"; percentages? divide by 100 (a probability metric lies in [{bounds[0]:g}, {bounds[1]:g}])"
                if first > bounds[1] else f"; {metric} lies in [{bounds[0]:g}, {bounds[1]:g}]")
        raise LadderError(f"{source}: metric {metric!r} has value {first:g} at {describe_rows(df, bad)}{hint}")


def handle_nonfinite(df: pd.DataFrame, source: str, drop: bool) -> pd.DataFrame:
    """NaN/inf values are an error (a forecast must not absorb them) unless drop=True."""
    bad = ~np.isfinite(df["value"].to_numpy(dtype=float))
    if not bad.any():
        return df
    where = describe_rows(df, bad)
    if not drop:
        raise LadderError(f"{source}: {int(bad.sum())} row(s) have a NaN or infinite value ({where}); "
                          "fix them or load with drop_nonfinite=True")
    warnings.warn(f"{source}: dropped {int(bad.sum())} row(s) with a NaN or infinite value ({where})",
                  UserWarning, stacklevel=4)
    kept = df.loc[~bad].reset_index(drop=True)
    kept.attrs = {**df.attrs, "row_kind": "row"}  # positions no longer match file lines
    return kept


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    extras = [c for c in df.columns if c not in LADDER_COLUMNS]
    return df[LADDER_COLUMNS + extras]


def validate(raw: pd.DataFrame, source: str, drop_nonfinite: bool = False) -> pd.DataFrame:
    """Raw table -> checked ladder table (standard column order first, extras kept)."""
    check_columns(raw, source)
    df = check_text(raw, source)
    if "step" not in df.columns:
        df["step"] = np.nan
    for column in NUMERIC_COLUMNS:
        if column in df.columns:
            df[column] = coerce_numeric(df, column, source)
    df = fill_flops(df)
    check_scale(df, source)
    check_metric_ranges(df, source)
    df = handle_nonfinite(df, source, drop_nonfinite)
    df = order_columns(df).reset_index(drop=True)
    df.attrs = {**df.attrs, "source": source}
    return df


def load_ladder(path: str | Path, drop_nonfinite: bool = False) -> pd.DataFrame:
    """Read a ladder table from CSV (optionally compressed), Parquet, or a results-store folder."""
    path = Path(path)
    if path.is_dir():
        if not is_results_store(path):
            raise LadderError(f"{path}: a folder must be a results store (choices/ and checkpoints.csv)")
        raw = read_store(path)
    elif not path.exists():
        raise LadderError(f"{path}: no such ladder file")
    else:
        raw = read_file(path)
    return validate(raw, str(path), drop_nonfinite=drop_nonfinite)


# --- slicing for predictors ----------------------------------------------------------

def source_of(df: pd.DataFrame) -> str:
    return df.attrs.get("source", "ladder table")


def final_checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Rows at each (family, model)'s last step; rows with NaN step count as final."""
    last = df.groupby(MODEL_KEY, sort=False)["step"].transform("max")
    keep = df["step"].isna() | (df["step"] == last)
    return df.loc[keep].reset_index(drop=True)


def as_list(value) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def select(df: pd.DataFrame, task=None, metric=None) -> pd.DataFrame:
    """Rows of the given task(s) and metric(s) (a name or a list; None = all); empty is an error."""
    mask = pd.Series(True, index=df.index)
    for column, wanted in (("task", as_list(task)), ("metric", as_list(metric))):
        if wanted is not None:
            mask &= df[column].isin(wanted)
    if not mask.any():
        tasks = sorted(df["task"].unique())
        metrics = sorted(df["metric"].unique())
        raise LadderError(f"{source_of(df)}: no rows for task={task!r}, metric={metric!r}; "
                          f"tasks: {tasks[:20]}{' ...' if len(tasks) > 20 else ''}; metrics: {metrics}")
    return df.loc[mask].reset_index(drop=True)


def holdout_split(df: pd.DataFrame, query: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held): rows matching ``query`` are held out. The query language (comparisons, and/or/not,
    in [...], arithmetic on columns and literals; see :mod:`capscale.query`) runs no code."""
    from capscale.query import QueryError, query_mask

    table = df.reset_index(drop=True)
    try:
        mask = query_mask(table, query)
    except QueryError as exc:
        raise LadderError(f"invalid holdout query {query!r}: {exc}") from exc
    held = table.loc[mask]
    if held.empty:
        raise LadderError(f"holdout query {query!r} matches no rows of {source_of(df)}")
    train = table.loc[~mask]
    if train.empty:
        raise LadderError(f"holdout query {query!r} matches every row of {source_of(df)}; nothing is left to fit")
    train, held = train.reset_index(drop=True), held.reset_index(drop=True)
    train.attrs, held.attrs = dict(df.attrs), dict(df.attrs)
    return train, held


def metric_series(df: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    """One row per (family, model, step) of one task+metric: the points a law is fitted to."""
    rows = select(df, task=task, metric=metric)
    dup = rows.duplicated(SERIES_KEY, keep=False)
    if dup.any():
        keys = rows.loc[dup, SERIES_KEY].drop_duplicates().head(SHOW)
        shown = [tuple(k) for k in keys.itertuples(index=False)]
        varying = [c for c in rows.columns if c not in LADDER_COLUMNS
                   and rows.loc[dup].groupby(SERIES_KEY, dropna=False)[c].nunique(dropna=False).gt(1).any()]
        hint = f"; they differ in {varying} - filter on it first" if varying else ""
        raise LadderError(f"{source_of(df)}: task {task!r} metric {metric!r} has several rows for "
                          f"(family, model, step) {shown}{hint}")
    columns = MODEL_KEY + ["params", "tokens", "flops", "step", "value"]
    columns += [c for c in SERIES_EXTRAS if c in rows.columns]
    out = rows[columns].sort_values(SERIES_KEY, kind="stable").reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out
