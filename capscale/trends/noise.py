"""The noise of a curve: item covariance from per-item data, else stderr, else binomial, else nominal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from capscale.trends.classes import BINARY_METRICS, BOUNDED_METRICS, NOMINAL_NOISE


def binomial_variance(p, n) -> np.ndarray:
    """p(1-p)/n with p shrunk by half an observation, so 0% and 100% keep a positive variance."""
    p, n = np.asarray(p, dtype=float), np.asarray(n, dtype=float)
    shrunk = (p * n + 0.5) / (n + 1.0)
    return shrunk * (1 - shrunk) / n


def item_covariance(matrix: np.ndarray, binary: bool) -> np.ndarray:
    """Covariance of the task means of several models (rows) over the same items (columns) under the item
    bootstrap: the plug-in covariance of the items / n_items (the bootstrap's exact value)."""
    m = matrix.shape[1]
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    cov = centred @ centred.T / m / m
    if binary:
        floor = binomial_variance(matrix.mean(axis=1), m)
        cov[np.diag_indices_from(cov)] = np.maximum(np.diag(cov), floor)
    return cov


@dataclass
class Noise:
    source: str                 # items | stderr | n_items | none
    cov: np.ndarray
    note: str = ""


def curve_noise(points: pd.DataFrame, metric: str, items: pd.DataFrame | None, task: str) -> Noise:
    """The best available noise for one curve: items > stderr > n_items (0/1 metrics) > none; every
    variance is kept above a tiny floor (1e-6 of the values' scale) so weights stay finite."""
    noise = _curve_noise(points, metric, items, task)
    values = points["value"].to_numpy(dtype=float)
    floor = (1e-6 * max(float(np.max(np.abs(values))), 1e-9)) ** 2
    idx = np.diag_indices_from(noise.cov)
    noise.cov[idx] = np.maximum(noise.cov[idx], floor)
    return noise


def _curve_noise(points: pd.DataFrame, metric: str, items: pd.DataFrame | None, task: str) -> Noise:
    values = points["value"].to_numpy(dtype=float)
    n = len(values)
    binary = metric in BINARY_METRICS
    note = ""
    if items is not None and metric in items.columns:
        rows = items[items["task"] == task]
        wanted = points["checkpoint"].astype(str).tolist()
        if len(rows) and set(wanted) <= set(rows["checkpoint"].astype(str)):
            table = rows.pivot_table(index="checkpoint", columns="item", values=metric, aggfunc="first")
            table.index = table.index.astype(str)
            matrix = table.loc[wanted].to_numpy(dtype=float)
            matrix = matrix[:, np.all(np.isfinite(matrix), axis=0)]
            if matrix.shape[1] >= 2:
                if not np.allclose(matrix.mean(axis=1), values, atol=1e-4, rtol=1e-4):
                    note = "per-item means differ from the ladder's values (items from another run?)"
                return Noise("items", item_covariance(matrix, binary), note)
        elif len(rows):
            note = "the per-item data lack some of this curve's checkpoints"
    if "stderr" in points.columns and points["stderr"].notna().all() and (points["stderr"] >= 0).all():
        var = points["stderr"].to_numpy(dtype=float) ** 2
        if binary and "n_items" in points.columns and points["n_items"].notna().all():
            var = np.maximum(var, binomial_variance(values, points["n_items"].to_numpy(dtype=float)))
        return Noise("stderr", np.diag(var), note)
    if binary and "n_items" in points.columns and points["n_items"].notna().all() and (points["n_items"] > 0).all():
        return Noise("n_items", np.diag(binomial_variance(values, points["n_items"].to_numpy(dtype=float))), note)
    scale = 1.0 if metric in BOUNDED_METRICS else max(float(np.mean(np.abs(values))), 1e-12)
    return Noise("none", np.eye(n) * (NOMINAL_NOISE * scale) ** 2, note)
