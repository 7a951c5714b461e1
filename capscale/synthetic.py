"""Synthetic ladders with known truth, shaped like the ones users run: for tests and benchmarks.

``olmo_like_ladder`` imitates the design of the OLMo model-ladder paper (Bhagia et al. 2024): a few
sizes, each trained at several multiples of its Chinchilla token budget, evaluated at many
checkpoints on several multiple-choice tasks, with two large targets far beyond. Each task's
correct-answer loss follows L(N, D) = E + A / N^alpha + B / D^beta, accuracy a sigmoid of that
loss from the chance level up to a ceiling, plus the noise a real ladder has: a per-run offset
(seed variance), per-checkpoint benchmark noise of n_items binomial draws, and loss noise.
``misspecify`` bends the truth away from both forms (the accuracy keeps rising below the ladder's
losses more steeply than a sigmoid fitted above them would say), to test that intervals calibrated
on the ladder's own backtests still hold where the form is wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OLMO_SIZES = (190e6, 370e6, 760e6, 1.3e9)
OLMO_MULTIPLIERS = (1, 2, 5, 10)
OLMO_TARGETS = ((7e9, 4e12, "7B-4T"), (13e9, 5e12, "13B-5T"))


def task_truth(rng: np.random.Generator, k: int) -> dict:
    """One task's true laws: loss exponents and scale, and the accuracy curve over the loss."""
    return {"E": rng.uniform(0.45, 0.9), "A": rng.uniform(40, 120), "alpha": rng.uniform(0.26, 0.34),
            "B": rng.uniform(60, 200), "beta": rng.uniform(0.24, 0.32), "chance": [0.25, 0.5][k % 2],
            "ceiling": rng.uniform(0.9, 1.0), "k": rng.uniform(3.0, 7.0), "l0": None}


def true_loss(t: dict, n, d):
    return t["E"] + t["A"] / np.asarray(n, float) ** t["alpha"] + t["B"] / np.asarray(d, float) ** t["beta"]


def true_accuracy(t: dict, loss, misspecify: float = 0.0):
    loss = np.asarray(loss, float)
    s = 1.0 / (1.0 + np.exp(t["k"] * (loss - t["l0"])))
    acc = t["chance"] + (t["ceiling"] - t["chance"]) * s
    if misspecify:  # extra gain that grows as the loss falls below the ladder's range
        acc = acc + misspecify * np.clip(t["l_ref"] - loss, 0.0, None) ** 2
    return np.clip(acc, 0.0, 1.0)


def olmo_like_ladder(seed: int = 0, n_tasks: int = 8, n_checkpoints: int = 12, n_items: int = 1500,
                     run_sd: float = 0.004, misspecify: float = 0.0, sizes=OLMO_SIZES,
                     multipliers=OLMO_MULTIPLIERS, targets=OLMO_TARGETS) -> tuple[pd.DataFrame, dict]:
    """(ladder table with the targets' rows included, {task: truth}); metrics acc and bpb_correct,
    columns family, model, params, tokens, flops, step, task, metric, value, chance, n_items."""
    rng = np.random.default_rng(seed)
    truths = {}
    rows = []
    runs = [(n, 20 * n * m, f"{n / 1e6:.0f}M-{m}xC") for n in sizes for m in multipliers]
    runs += [(n, d, name) for n, d, name in targets]
    for k in range(n_tasks):
        t = task_truth(rng, k)
        losses = true_loss(t, [n for n, _, _ in runs[:-len(targets)]], [d for _, d, _ in runs[:-len(targets)]])
        t["l0"] = float(np.quantile(losses, 0.25))  # accuracy rises steeply within the ladder's range
        t["l_ref"] = float(losses.min())
        truths[f"task{k}"] = t
        for n, d_final, name in runs:
            offset = rng.normal(0.0, run_sd)
            for step in range(1, n_checkpoints + 1):
                d = d_final * step / n_checkpoints
                loss = true_loss(t, n, d) * np.exp(offset + rng.normal(0.0, 0.002))
                p = true_accuracy(t, loss, misspecify)
                acc = rng.binomial(n_items, p) / n_items
                common = {"family": "olmo-like", "model": name, "params": n, "tokens": d, "flops": 6 * n * d,
                          "step": step, "task": f"task{k}", "chance": t["chance"], "n_items": n_items}
                rows.append({**common, "metric": "bpb_correct", "value": loss})
                rows.append({**common, "metric": "acc", "value": acc})
    return pd.DataFrame(rows), truths
