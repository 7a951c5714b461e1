"""Per-choice rows -> per-item trajectories and item-distractor margin pairs (the data of the choice-mass model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError

SCORE_OF = {"acc": "raw", "p_correct": "raw", "brier": "raw", "acc_norm": "chars", "acc_bytes": "bytes"}
LENGTH_COLUMN = {"chars": "n_chars", "bytes": "n_bytes"}


def choice_scores(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The score each choice is ranked by for ``metric`` (lm-eval's acc / acc_norm / acc_bytes)."""
    if metric not in SCORE_OF:
        raise CapscaleError(f"choice-mass forecasts one of {', '.join(SCORE_OF)}, not {metric!r}")
    logprob = rows["logprob"].to_numpy(float)
    if not np.all(np.isfinite(logprob)):
        raise CapscaleError(f"{int((~np.isfinite(logprob)).sum())} per-choice logprob(s) are NaN or infinite")
    kind = SCORE_OF[metric]
    if kind == "raw":
        return logprob
    column = LENGTH_COLUMN[kind]
    lengths = rows[column].to_numpy(float) if column in rows else np.full(len(rows), -1.0)
    if np.any(~np.isfinite(lengths) | (lengths < 0)):
        raise CapscaleError(f"{metric} divides by {column}, which is unknown (-1 or missing) for "
                            f"{int((~(lengths >= 0)).sum())} row(s); forecast acc (raw log-likelihood) instead")
    return logprob / np.maximum(lengths, 1.0)  # capscale.metrics clips lengths at 1 the same way


@dataclass
class ChoiceTrajectories:
    """Every item's choice scores across checkpoints: ``scores[i, c, k]`` (NaN = not scored)."""

    task: str
    items: np.ndarray  # item ids, [I]
    checkpoints: list[str]  # [K]
    scores: np.ndarray  # [I, C, K] in the metric's normalisation
    logprob: np.ndarray  # [I, C, K] raw log-likelihoods (p_correct, brier, choice mass)
    gold: np.ndarray  # gold choice index per item, [I]
    present: np.ndarray  # [I, C] the choice exists for the item (at some checkpoint)
    relabelled: int = 0  # (checkpoint, item) gold labels moved across an exact tie (settle_gold)

    @property
    def n_choices(self) -> np.ndarray:
        return self.present.sum(1)


def choice_trajectories(rows: pd.DataFrame, task: str, checkpoints: list[str],
                        metric: str = "acc") -> ChoiceTrajectories:
    """Per-choice rows of one task at the given checkpoints -> :class:`ChoiceTrajectories`."""
    rows = rows[(rows["task"].astype(str) == task) & rows["checkpoint"].astype(str).isin(checkpoints)]
    if rows.empty:
        raise CapscaleError(f"task {task!r}: no per-choice rows at the ladder's checkpoints "
                            f"({', '.join(checkpoints[:4])}{' ...' if len(checkpoints) > 4 else ''})")
    scored = set(rows["checkpoint"].astype(str))
    checkpoints = [c for c in checkpoints if c in scored]  # a checkpoint without rows is counted by the caller
    if rows.duplicated(["checkpoint", "item", "choice"]).any():
        first = rows[rows.duplicated(["checkpoint", "item", "choice"])].iloc[0]
        raise CapscaleError(f"task {task!r}: checkpoint {first['checkpoint']!r} item {first['item']!r} has "
                            f"choice {first['choice']!r} twice")
    gold_flags = rows["gold"].astype(bool).to_numpy()
    golds = rows.loc[gold_flags].groupby(["checkpoint", "item"])["choice"]
    per_item = rows.groupby(["checkpoint", "item"]).size()
    n_gold = golds.size().reindex(per_item.index, fill_value=0)
    if (n_gold != 1).any():
        bad = n_gold[n_gold != 1].index[0]
        raise CapscaleError(f"task {task!r}: item {bad[1]!r} at {bad[0]!r} has {int(n_gold[bad])} gold choices; "
                            "exactly one is required")
    rows, relabelled = settle_gold(rows, golds.first(), task)
    gold_by_item = rows.loc[rows["gold"].astype(bool)].groupby("item")["choice"].min()
    item_codes, items = pd.factorize(rows["item"], sort=True)
    k_codes = pd.Index(checkpoints).get_indexer(rows["checkpoint"].astype(str))
    choice = rows["choice"].to_numpy()
    if not np.issubdtype(choice.dtype, np.integer) or choice.min() < 0:
        raise CapscaleError(f"task {task!r}: choice indices must be non-negative integers")
    shape = (len(items), int(choice.max()) + 1, len(checkpoints))
    scores, logprob = np.full(shape, np.nan), np.full(shape, np.nan)
    scores[item_codes, choice, k_codes] = choice_scores(rows, metric)
    logprob[item_codes, choice, k_codes] = rows["logprob"].to_numpy(float)
    gold = gold_by_item.reindex(items).to_numpy(int)
    present = np.isfinite(scores).any(2)
    return ChoiceTrajectories(task, np.asarray(items), list(checkpoints), scores, logprob, gold, present, relabelled)


def settle_gold(rows: pd.DataFrame, gold: pd.Series, task: str) -> tuple[pd.DataFrame, int]:
    """One gold index per item. A checkpoint whose gold index differs from the item's usual one is
    accepted only where the two choices are exactly tied there (a converter that does not know the
    option order can only place the gold by the tie-break, as the inverse-scaling pilot files do): the
    margin is 0 either way, so the label moves to the usual index (and the tie there is broken by that
    index, which may differ from the source's own count by those items). Any other change is an error.
    Returns the rows and the number of (checkpoint, item) labels moved."""
    usual = gold.groupby(level="item").agg(lambda g: g.value_counts().sort_index().idxmax())
    odd = gold[gold.to_numpy() != usual.reindex(gold.index.get_level_values("item")).to_numpy()]
    if odd.empty:
        return rows, 0
    lookup = rows.set_index(["checkpoint", "item", "choice"])["logprob"]
    for (checkpoint, item), choice in odd.items():
        other = usual[item]
        tied = (checkpoint, item, other) in lookup.index and lookup[(checkpoint, item, choice)] == lookup[
            (checkpoint, item, other)]
        if not tied:
            raise CapscaleError(f"task {task!r}: item {item!r} has gold choice {choice} at {checkpoint!r} but {other} "
                                "elsewhere (the item changed between runs)")
    rows = rows.copy()
    keys = pd.MultiIndex.from_arrays([rows["checkpoint"], rows["item"]])
    moved = keys.isin(odd.index)
    rows.loc[moved, "gold"] = rows.loc[moved, "choice"].to_numpy() == usual.reindex(rows.loc[moved, "item"]).to_numpy()
    return rows, int(len(odd))


@dataclass
class MarginPairs:
    """One row per (item, incorrect choice), sorted by item: the margins s_gold - s_j over checkpoints."""

    item: np.ndarray  # item index per pair [P]
    choice: np.ndarray  # the incorrect choice [P]
    gold_first: np.ndarray  # gold index < choice: an exact tie goes to gold [P]
    margins: np.ndarray  # [P, K] NaN where either choice is missing
    raw: np.ndarray  # [P, K] raw log-likelihood margins (for softmax quantities)
    tied: np.ndarray  # margin exactly 0 at every checkpoint where seen: decided by index, not modelled [P]


def margin_pairs(traj: ChoiceTrajectories) -> MarginPairs:
    idx = np.arange(len(traj.items))
    gold_scores = traj.scores[idx, traj.gold][:, None, :]
    gold_raw = traj.logprob[idx, traj.gold][:, None, :]
    is_gold = np.arange(traj.scores.shape[1])[None, :] == traj.gold[:, None]
    item, choice = np.nonzero(traj.present & ~is_gold)  # row-major: sorted by item
    margins = (gold_scores - traj.scores)[item, choice]
    raw = (gold_raw - traj.logprob)[item, choice]
    seen = np.isfinite(margins)
    tied = seen.any(1) & np.all(np.where(seen, margins == 0.0, True), axis=1)
    return MarginPairs(item, choice, traj.gold[item] < choice, margins, raw, tied)
