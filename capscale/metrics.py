"""Per-choice rows -> per-item metrics -> task metrics -> the ladder table of docs/design.md.

Definitions (per item; task value = mean over items):
- acc        argmax of logprob is the gold choice (first index wins ties, like numpy/lm-eval)
- acc_norm   argmax of logprob / n_chars (lm-eval's acc_norm: characters of the choice text)
- acc_bytes  argmax of logprob / n_bytes (lm-eval's acc_bytes: UTF-8 bytes of the choice text)
- p_correct  softmax of the choice logprobs, probability of the gold choice
- brier      sum over choices of (softmax p_j - 1[j is gold])^2 (multi-class Brier score)
- nll_correct  -logprob of the gold continuation, in nats (summed over its tokens)
- bpb_correct  nll_correct / (ln 2 * n_bytes of the gold choice): bits per byte, the task loss of
               the OLMo model-ladder paper (Bhagia et al. 2024)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import StoreError

METRICS = ("acc", "acc_norm", "acc_bytes", "brier", "p_correct", "nll_correct", "bpb_correct")
ACCURACY_METRICS = ("acc", "acc_norm", "acc_bytes")
LADDER_COLUMNS = ["family", "model", "params", "tokens", "flops", "step", "task", "metric", "value"]
KEYS = ["checkpoint", "task", "item"]


def first_argmax_is_gold(df: pd.DataFrame, score: pd.Series) -> pd.Series:
    """Per item: is the first choice with the highest score the gold one?"""
    best = score.groupby([df[k] for k in KEYS], sort=False).idxmax()
    return df.loc[best.values, "gold"].set_axis(best.index).astype(float)


def item_metrics(choices: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint x task x item with every metric and n_choices."""
    if choices.empty:
        raise StoreError("no per-choice rows to summarise")
    df = choices.sort_values(KEYS + ["choice"], kind="stable").reset_index(drop=True)
    gold_count = df.groupby(KEYS, sort=False)["gold"].sum()
    if (gold_count != 1).any():
        bad = gold_count[gold_count != 1].index[0]
        raise StoreError(f"item {bad} has {int(gold_count[bad])} gold choices; exactly one is required")
    groups = df.groupby(KEYS, sort=False)
    shifted = df["logprob"] - groups["logprob"].transform("max")
    p = np.exp(shifted) / np.exp(shifted).groupby([df[k] for k in KEYS], sort=False).transform("sum")
    gold = df["gold"].astype(float)
    gold_rows = df[df["gold"]].set_index(KEYS)
    out = pd.DataFrame(
        {
            "acc": first_argmax_is_gold(df, df["logprob"]),
            "acc_norm": first_argmax_is_gold(df, df["logprob"] / df["n_chars"].clip(lower=1)),
            "acc_bytes": first_argmax_is_gold(df, df["logprob"] / df["n_bytes"].clip(lower=1)),
            "brier": ((p - gold) ** 2).groupby([df[k] for k in KEYS], sort=False).sum(),
            "p_correct": (p * gold).groupby([df[k] for k in KEYS], sort=False).sum(),
            "n_choices": groups.size(),
        }
    )
    out["nll_correct"] = -gold_rows["logprob"]
    out["bpb_correct"] = -gold_rows["logprob"] / (np.log(2) * gold_rows["n_bytes"].clip(lower=1))
    return out.reset_index()


def task_metrics(items: pd.DataFrame) -> pd.DataFrame:
    """Long table: checkpoint, task, metric, value, stderr (of the item mean), n_items, chance."""
    records = []
    for (checkpoint, task), g in items.groupby(["checkpoint", "task"], sort=True):
        chance = float((1.0 / g["n_choices"]).mean())
        n = len(g)
        for metric in METRICS:
            values = g[metric].to_numpy(dtype=float)
            records.append(
                {
                    "checkpoint": checkpoint,
                    "task": task,
                    "metric": metric,
                    "value": float(values.mean()),
                    "stderr": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
                    "n_items": n,
                    "chance": chance if metric in ACCURACY_METRICS else np.nan,
                }
            )
    return pd.DataFrame.from_records(records)


def ladder_table(choices: pd.DataFrame | None, manifest: pd.DataFrame, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """docs/design.md ladder table (+ checkpoint, stderr, n_items, chance) from per-choice rows, per-sample rows
    (either may be None) and the manifest."""
    parts = []
    if choices is not None:
        parts.append(task_metrics(item_metrics(choices)))
    if samples is not None:
        parts.append(sample_task_metrics(samples))
    if not parts:
        raise StoreError("no per-choice or per-sample rows to summarise")
    metrics = pd.concat(parts, ignore_index=True)
    meta_cols = ["checkpoint", "family", "model", "params", "tokens", "flops", "step"]
    meta = manifest.reindex(columns=meta_cols).drop_duplicates("checkpoint")
    table = metrics.merge(meta, on="checkpoint", how="left")
    unknown = table["family"].isna() & ~table["checkpoint"].isin(meta["checkpoint"])
    if unknown.any():
        names = sorted(table.loc[unknown, "checkpoint"].unique())
        raise StoreError(f"checkpoints {names[:5]} have results but no row in checkpoints.csv")
    table["model"] = table["model"].fillna(table["checkpoint"])
    table["family"] = table["family"].fillna("")
    extra = ["checkpoint", "stderr", "n_items", "chance"]
    return table[LADDER_COLUMNS + extra].sort_values(["family", "model", "step", "task", "metric"]).reset_index(drop=True)


SAMPLE_METRICS = ("pass_until", "pass_at_1", "greedy_acc", "exact_p")


def sample_item_metrics(samples: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint x task x item: pass_until (PassUntil estimate, never 0; items out of budget get the
    posterior mean under the task's empirical-Bayes prior), pass_at_1 (exactly unbiased
    under the stopping rule), greedy_acc (greedy answer correct) and exact_p (exact probability, if computed)."""
    from capscale.estimators import beta_prior, pass_until_estimate, unbiased_p

    samples = samples.reset_index(drop=True)
    n, c, k = (samples[col].to_numpy() for col in ("n_drawn", "n_correct", "until"))
    sampled = n > 0
    out = samples[KEYS].copy()
    out["pass_until"] = np.nan
    for _, g in samples[sampled].groupby(["checkpoint", "task"], sort=False):  # prior fitted per task and model
        rows = g.index.to_numpy()
        prior = beta_prior(n[rows], c[rows])
        out.loc[rows, "pass_until"] = pass_until_estimate(n[rows], c[rows], k[rows], prior)
    out["pass_at_1"] = np.where(sampled, unbiased_p(np.maximum(n, 1), c, k), np.nan)
    out["greedy_acc"] = samples["greedy_correct"].astype(float).to_numpy()
    out["exact_p"] = samples["exact_p"].to_numpy(dtype=float)
    return out


def sample_task_metrics(samples: pd.DataFrame) -> pd.DataFrame:
    """Long table like :func:`task_metrics`; pass_until's stderr is the standard error of the item mean."""
    items = sample_item_metrics(samples)
    records = []
    for (checkpoint, task), g in items.groupby(["checkpoint", "task"], sort=True):
        for metric in SAMPLE_METRICS:
            values = g[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                continue
            n = len(values)
            records.append({
                "checkpoint": checkpoint, "task": task, "metric": metric, "value": float(values.mean()),
                "stderr": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan, "n_items": n,
                "chance": 0.0 if metric == "greedy_acc" else np.nan,
            })
    return pd.DataFrame.from_records(records)


def sample_checkpoint_table(samples: pd.DataFrame, manifest: pd.DataFrame, *, level: float = 0.9,
                            n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per checkpoint x task of a sampled generative task: greedy accuracy, the PassUntil
    estimate with its bootstrap interval (:func:`capscale.estimators.task_estimate`), the
    unbiased pass@1, the exact probability (mean over items) and the manifest's scale columns."""
    from capscale.estimators import task_estimate

    records = []
    for (checkpoint, task), g in samples.groupby(["checkpoint", "task"], sort=True):
        sampled = g[g["n_drawn"] > 0]
        rec = {"checkpoint": checkpoint, "task": task, "n_items": len(g),
               "greedy_acc": float(g["greedy_correct"].mean()), "exact_p": float(g["exact_p"].mean())}
        if len(sampled):
            est = task_estimate(sampled["n_drawn"].to_numpy(), sampled["n_correct"].to_numpy(),
                                sampled["until"].to_numpy(), level=level, n_boot=n_boot, seed=seed)
            rec |= {"pass_until": est.value, "lower": est.lower, "upper": est.upper, "pass_at_1": est.unbiased,
                    "n_reached": est.n_reached, "samples": int(sampled["n_drawn"].sum())}
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    meta = manifest.reindex(columns=["checkpoint", "family", "model", "params", "tokens", "flops", "step"])
    return table.merge(meta.drop_duplicates("checkpoint"), on="checkpoint", how="left")


def store_item_metrics(choices: pd.DataFrame | None, samples: pd.DataFrame | None) -> pd.DataFrame:
    """Per-item metrics of everything a store holds: multiple-choice items and sampled generative items."""
    parts = ([item_metrics(choices)] if choices is not None else []) + (
        [sample_item_metrics(samples)] if samples is not None else [])
    if not parts:
        raise StoreError("no per-choice or per-sample rows to summarise")
    return pd.concat(parts, ignore_index=True)
