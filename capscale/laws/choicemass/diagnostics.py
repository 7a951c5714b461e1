"""Diagnostics on per-choice data (no fit): Schaeffer et al. 2024's per-item correlations with scale
and the choice-mass chain per checkpoint (p(correct), p(incorrect) before the normalisation)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.laws.choicemass.rows import ChoiceTrajectories, MarginPairs, choice_trajectories, margin_pairs


def softmax_gold(logprob: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """p_correct per item and checkpoint, [I, K]: softmax over the choices present (NaN = unscored)."""
    shifted = logprob - np.nanmax(np.where(np.isfinite(logprob), logprob, -np.inf), axis=1, keepdims=True)
    e = np.where(np.isfinite(shifted), np.exp(shifted), 0.0)
    total = e.sum(1)
    pg = e[np.arange(len(gold)), gold] / np.where(total > 0, total, 1.0)
    return np.where(np.isfinite(logprob[np.arange(len(gold)), gold]), pg, np.nan)


def item_correlations(traj: ChoiceTrajectories, x: np.ndarray) -> pd.DataFrame:
    """Per item: Pearson correlation of p_correct with ``x`` (log scale) across checkpoints, the statistic
    whose spread Schaeffer et al. 2024 show; NaN when p_correct does not vary or < 3 checkpoints."""
    with np.errstate(all="ignore"):
        p = softmax_gold(traj.logprob, traj.gold)
        seen = np.isfinite(p)
        n = seen.sum(1)
        xs = np.where(seen, x[None, :], np.nan)
        dx = xs - np.nanmean(xs, 1, keepdims=True)
        dp = p - np.nanmean(p, 1, keepdims=True)
        cov = np.nansum(dx * dp, 1)
        r = cov / np.sqrt(np.nansum(dx**2, 1) * np.nansum(dp**2, 1))
    r = np.where((n >= 3) & np.isfinite(r), r, np.nan)
    return pd.DataFrame({"item": traj.items, "n_checkpoints": n, "correlation": r})


def correlation_summary(corr: pd.DataFrame) -> dict:
    r = corr["correlation"].dropna().to_numpy()
    if not len(r):
        return {"n": 0, "undefined": int(len(corr))}
    q = np.quantile(r, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(len(r)), "undefined": int(len(corr) - len(r)), "mean": float(r.mean()),
            "q10": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4]),
            "share_positive": float((r > 0).mean()), "share_above_0.5": float((r > 0.5).mean()),
            "share_below_-0.5": float((r < -0.5).mean())}


def observed_accuracy(traj: ChoiceTrajectories, pairs: MarginPairs, meta: pd.DataFrame) -> dict:
    """Item correctness per checkpoint (first-argmax rule), and at each item's largest seen checkpoint."""
    n_items, n_k = len(traj.items), len(traj.checkpoints)
    won = np.ones((n_items, n_k), dtype=bool)
    margins = pairs.margins
    pair_won = np.where(np.isfinite(margins), (margins > 0) | ((margins == 0) & pairs.gold_first[:, None]), True)
    if len(pairs.item):
        starts = np.flatnonzero(np.r_[True, pairs.item[1:] != pairs.item[:-1]])
        won[pairs.item[starts]] = np.logical_and.reduceat(pair_won, starts, axis=0)
    seen = np.isfinite(traj.scores).any(1)
    scale = meta["flops"].to_numpy(float) if meta["flops"].notna().all() else meta["params"].to_numpy(float)
    last = np.full(n_items, False)
    for k in np.argsort(scale, kind="stable"):
        last = np.where(seen[:, k], won[:, k], last)
    acc = np.where(seen, won, np.nan)
    return {"accuracy": np.nanmean(acc, 0), "item_correct_last": last, "gold": traj.gold}


def choice_mass_table(rows: pd.DataFrame, meta: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per checkpoint of one task: accuracy, mean p_correct, and the mean unnormalised probability of
    the correct continuation, of all incorrect ones together and of the strongest one (Schaeffer et
    al.'s chain: p(correct) and p(incorrect) before the normalisation over choices)."""
    meta = meta.assign(checkpoint=meta["checkpoint"].astype(str)).drop_duplicates("checkpoint")
    traj = choice_trajectories(rows, task, meta["checkpoint"].tolist(), "acc")
    pairs = margin_pairs(traj)
    sub = meta.set_index("checkpoint").loc[traj.checkpoints].reset_index()
    idx = np.arange(len(traj.items))
    with np.errstate(all="ignore"):
        prob = np.exp(traj.logprob)
        gold = prob[idx, traj.gold]
        other = np.where(np.arange(prob.shape[1])[None, :, None] == traj.gold[:, None, None], np.nan, prob)
        incorrect = np.nansum(other, 1)
        strongest = np.nanmax(np.where(np.isfinite(other), other, -np.inf), 1)
        strongest = np.where(np.isfinite(strongest), strongest, np.nan)
        pc = softmax_gold(traj.logprob, traj.gold)
    seen = np.isfinite(gold)
    observed = observed_accuracy(traj, pairs, sub)
    return sub.assign(
        task=task, acc=observed["accuracy"], p_correct=np.nanmean(pc, 0),
        mass_correct=np.nanmean(gold, 0), mass_incorrect=np.nanmean(np.where(seen, incorrect, np.nan), 0),
        mass_top_incorrect=np.nanmean(strongest, 0), n_items=seen.sum(0),
    )


def item_compute_correlations(rows: pd.DataFrame, meta: pd.DataFrame, task: str, x: str = "flops") -> pd.DataFrame:
    """Schaeffer et al. 2024's statistic on the data: per item, the correlation of p_correct with log ``x``
    across the given checkpoints (``meta``: checkpoint + scale columns, e.g. a store's manifest)."""
    meta = meta.assign(checkpoint=meta["checkpoint"].astype(str)).drop_duplicates("checkpoint")
    meta = meta[np.isfinite(meta[x].to_numpy(float)) & (meta[x].to_numpy(float) > 0)]
    traj = choice_trajectories(rows, task, meta["checkpoint"].tolist(), "acc")
    scale = meta.set_index("checkpoint").loc[traj.checkpoints, x].to_numpy(float)
    return item_correlations(traj, np.log(scale))
