"""Save a fitted predictor as JSON and load it back, so ``capscale predict`` needs no refit.

Only what a forecast needs is kept: hyper-parameters, the full-data fit(s), every bootstrap
refit, the residual pool for the prediction interval, and the ladder's extent (for the
extrapolation warning). The training table itself is not stored.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from capscale.errors import CapscaleError
from capscale.laws.fitting import FitResult
from capscale.laws.choicemass import ChoiceMassPredictor
from capscale.laws.passuntil import ItemLaw, PassUntilPredictor
from capscale.laws.predictors import DirectPredictor, TwoStepPredictor
from capscale.store import atomic_write_bytes

PREDICTORS = {"DirectPredictor": DirectPredictor, "TwoStepPredictor": TwoStepPredictor,
              "PassUntilPredictor": PassUntilPredictor, "ChoiceMassPredictor": ChoiceMassPredictor}
STATE = ("task_", "metric_", "loss_metric_", "chance_", "extent_", "n_boot_failed_", "step1_form_", "fit_warnings_",
         "alpha_", "log_c_", "alpha_pool_", "alpha_spread_")


def fits_to_json(fits):
    return [f.to_dict() for f in fits] if isinstance(fits, tuple) else fits.to_dict()


def fits_from_json(data):
    return tuple(FitResult.from_dict(d) for d in data) if isinstance(data, list) else FitResult.from_dict(data)


def hyper_parameters(predictor) -> dict:
    names = [p for p in inspect.signature(type(predictor).__init__).parameters if p != "self"]
    return {n: getattr(predictor, n) for n in names}


def save_predictor(predictor, path: str | Path, meta: dict | None = None) -> Path:
    if hasattr(predictor, "state_dict"):  # keeps its own state (ChoiceMassPredictor: pair data, not curves)
        state = {"class": type(predictor).__name__, "hyper_parameters": hyper_parameters(predictor),
                 "own_state": predictor.state_dict(), "meta": meta or {}}
        atomic_write_bytes(Path(path), json.dumps(state, indent=1).encode())
        return Path(path)
    state = {
        "class": type(predictor).__name__,
        "hyper_parameters": hyper_parameters(predictor),
        "state": {k: getattr(predictor, k) for k in STATE if hasattr(predictor, k)},
        "fit": fits_to_json(predictor.fit_),
        "boot_fits": [fits_to_json(f) for f in predictor.boot_fits_],
        "noise": np.asarray(predictor.noise_, dtype=float).tolist(),
        "meta": meta or {},
    }
    if getattr(predictor, "item_fit_", None) is not None:  # PassUntilPredictor(per_item=True)
        state["item_fit"] = predictor.item_fit_.to_dict()
        state["boot_item_fits"] = [law.to_dict() for law in predictor.boot_item_fits_]
    path = Path(path)
    atomic_write_bytes(path, json.dumps(state, indent=1).encode())
    return path


def load_predictor(path: str | Path):
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CapscaleError(f"{path}: not a capscale fit file ({e})") from e
    if isinstance(state, list):
        raise CapscaleError(f"{path}: not a capscale fit file; this looks like backtest records (a list); "
                            "write a fit with `capscale fit ... --out FIT.json`")
    if not isinstance(state, dict) or state.get("class") not in PREDICTORS:
        found = state.get("class") if isinstance(state, dict) else type(state).__name__
        raise CapscaleError(f"{path}: not a capscale fit file (no known predictor class, found {found!r}); "
                            "write one with `capscale fit ... --out FIT.json`")
    cls = PREDICTORS[state["class"]]
    if "own_state" in state:
        predictor = cls.from_state(state["hyper_parameters"], state["own_state"])
        predictor.meta_ = state.get("meta", {})
        return predictor
    predictor = cls(**state["hyper_parameters"])
    for key, value in state["state"].items():
        setattr(predictor, key, value)
    predictor.fit_ = fits_from_json(state["fit"])
    predictor.boot_fits_ = [fits_from_json(f) for f in state["boot_fits"]]
    predictor.noise_ = np.asarray(state["noise"], dtype=float)
    if "item_fit" in state:
        predictor.item_fit_ = ItemLaw.from_dict(state["item_fit"])
        predictor.boot_item_fits_ = [ItemLaw.from_dict(d) for d in state["boot_item_fits"]]
    predictor.meta_ = state.get("meta", {})
    return predictor
