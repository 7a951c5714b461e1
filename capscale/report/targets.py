"""Forecast targets: ``--target "params=7e9,tokens=4e12"`` (or ``flops=1e23``), and the default target."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.schema import target_scale

KEYS = ("params", "tokens", "flops")
DEFAULT_GROWTH = 4.0  # the default target: 4x the largest run's params at the ladder's tokens per parameter


def parse_target(text: str) -> dict:
    """'params=7e9,tokens=4e12' -> {'params': 7e9, 'tokens': 4e12, 'flops': 1.68e23} (flops = 6ND)."""
    given = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise CapscaleError(f"--target {text!r}: expected KEY=VALUE pairs with keys {', '.join(KEYS)} "
                                f"(e.g. \"params=7e9,tokens=4e12\"), got {part!r}")
        if key in given:
            raise CapscaleError(f"--target {text!r}: {key} given twice")
        try:
            number = float(value)
        except ValueError:
            raise CapscaleError(f"--target {text!r}: {key} must be a number, got {value.strip()!r}") from None
        if not (math.isfinite(number) and number > 0):
            raise CapscaleError(f"--target {text!r}: {key} must be a positive number, got {value.strip()!r}")
        given[key] = number
    if not given:
        raise CapscaleError(f"--target {text!r}: give params and tokens, or flops (e.g. \"params=7e9,tokens=4e12\")")
    if "flops" not in given and not {"params", "tokens"} <= set(given):
        raise CapscaleError(f"--target {text!r}: give both params and tokens (or flops); a scale law needs the "
                            "compute of the target")
    return target_scale(**given)


def target_label(target: dict) -> str:
    """A short readable name, e.g. 'N=7e+09, D=4e+12' or 'C=1e+23'."""
    if target.get("params") is not None and target.get("tokens") is not None:
        return f"N={target['params']:.3g}, D={target['tokens']:.3g}"
    return f"C={target['flops']:.3g}"


def default_target(finals: pd.DataFrame) -> dict:
    """Without --target: DEFAULT_GROWTH x the largest run's params, at the median tokens per parameter of the
    ladder's final checkpoints (the next rung of the same recipe), or 10x the largest compute."""
    params, tokens = finals["params"].to_numpy(float), finals["tokens"].to_numpy(float)
    known = np.isfinite(params) & np.isfinite(tokens) & (params > 0) & (tokens > 0)
    if known.any():
        ratio = float(np.median(tokens[known] / params[known]))
        n = DEFAULT_GROWTH * float(params[known].max())
        return target_scale(params=n, tokens=n * ratio)
    return target_scale(flops=10.0 * float(np.nanmax(finals["flops"].to_numpy(float))))
