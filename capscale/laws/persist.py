"""Save a fitted predictor as JSON and load it back, so ``capscale predict`` needs no refit.

Only what a forecast needs is kept: hyper-parameters, the full-data fit(s), every bootstrap
refit, the residual pool for the prediction interval, the calibration learnt from the ladder's
rolling origins, and the ladder's extent (for the extrapolation warning). The training table
itself is not stored, except where a forecast reads it (the runs of a carry-forward or a line).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.laws.calibration import Calibration
from capscale.laws.averaged import fit_from_dict
from capscale.laws.registry import METHODS
from capscale.store import atomic_write_bytes

STATE = ("task_", "metric_", "loss_metric_", "chance_", "extent_", "n_boot_failed_", "step1_form_", "fit_warnings_",
         "alpha_", "log_c_", "alpha_pool_", "alpha_spread_", "n_runs_", "form_used_", "form_name_", "x_", "space_",
         "ceiling_mode_", "ceiling_value_", "last_", "noise_sd_", "method_used_", "internal_errors_",
         "selection_scores_", "pooled_")
DATA_COLUMNS = ("family", "model", "params", "tokens", "flops", "step", "value")


def predictor_classes() -> dict:
    from capscale.laws.auto import AutoPredictor
    from capscale.laws.choicemass import ChoiceMassPredictor
    from capscale.laws.observational import ObservationalPredictor
    from capscale.laws.passuntil import PassUntilPredictor
    from capscale.laws.direct import CarryForwardPredictor, DirectPredictor
    from capscale.laws.twostep import TwoStepPredictor

    classes = {c.__name__: c for c in (AutoPredictor, ChoiceMassPredictor, PassUntilPredictor, CarryForwardPredictor,
                                       DirectPredictor, TwoStepPredictor, ObservationalPredictor)}
    assert {m.predictor_class for m in METHODS.values()} <= set(classes), "registry names a class persist cannot load"
    return classes


def fits_to_json(fits):
    return [f.to_dict() for f in fits] if isinstance(fits, tuple) else fits.to_dict()


def fits_from_json(data):
    return tuple(fit_from_dict(d) for d in data) if isinstance(data, list) else fit_from_dict(data)


def plain(value):
    """JSON-ready copies of numpy scalars and arrays inside state values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def predictor_state(predictor) -> dict:
    state = {"class": type(predictor).__name__, "hyper_parameters": plain(predictor.get_params())}
    if hasattr(predictor, "state_dict"):  # keeps its own state (ChoiceMassPredictor: pair data, not curves)
        state["own_state"] = predictor.state_dict()
    else:
        state["state"] = {k: plain(getattr(predictor, k)) for k in STATE if hasattr(predictor, k)}
        if hasattr(predictor, "chosen_"):  # AutoPredictor: the fitted winner inside
            state["chosen"] = predictor_state(predictor.chosen_)
        if hasattr(predictor, "fit_"):
            state["fit"] = fits_to_json(predictor.fit_)
            state["boot_fits"] = [fits_to_json(f) for f in predictor.boot_fits_]
        if hasattr(predictor, "noise_"):
            state["noise"] = np.asarray(predictor.noise_, dtype=float).tolist()
        if hasattr(predictor, "slopes_"):
            state["slopes"] = np.asarray(predictor.slopes_, dtype=float).tolist()
        if getattr(predictor, "form_name_", None) == "linear" or hasattr(predictor, "slopes_"):
            data = predictor.data_
            state["data"] = {c: data[c].tolist() for c in DATA_COLUMNS if c in data}
        if getattr(predictor, "item_fit_", None) is not None:  # PassUntilPredictor(per_item=True)
            state["item_fit"] = predictor.item_fit_.to_dict()
            state["boot_item_fits"] = [law.to_dict() for law in predictor.boot_item_fits_]
    calibration = getattr(predictor, "calibration_", None)
    state["calibration"] = calibration.to_dict() if calibration is not None else None
    return state


def restore(state: dict):
    classes = predictor_classes()
    cls = classes[state["class"]]
    if "own_state" in state:
        predictor = cls.from_state(state["hyper_parameters"], state["own_state"])
    else:
        predictor = cls(**state["hyper_parameters"])
        for key, value in state["state"].items():
            setattr(predictor, key, value)
        if "chosen" in state:
            predictor.chosen_ = restore(state["chosen"])
        if "fit" in state:
            predictor.fit_ = fits_from_json(state["fit"])
            predictor.boot_fits_ = [fits_from_json(f) for f in state["boot_fits"]]
        if "noise" in state:
            predictor.noise_ = np.asarray(state["noise"], dtype=float)
        if "slopes" in state:
            predictor.slopes_ = np.asarray(state["slopes"], dtype=float)
        if "data" in state:
            predictor.data_ = pd.DataFrame(state["data"])
        if "item_fit" in state:
            from capscale.laws.passuntil import ItemLaw

            predictor.item_fit_ = ItemLaw.from_dict(state["item_fit"])
            predictor.boot_item_fits_ = [ItemLaw.from_dict(d) for d in state["boot_item_fits"]]
    predictor.calibration_ = Calibration.from_dict(state.get("calibration"))
    return predictor


def save_predictor(predictor, path: str | Path, meta: dict | None = None) -> Path:
    state = predictor_state(predictor)
    state["meta"] = meta or {}
    atomic_write_bytes(Path(path), json.dumps(state, indent=1).encode())
    return Path(path)


def load_predictor(path: str | Path):
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CapscaleError(f"{path}: not a capscale fit file ({e})") from e
    if isinstance(state, list):
        raise CapscaleError(f"{path}: not a capscale fit file; this looks like backtest records (a list); "
                            "write a fit with `capscale fit ... --out FIT.json`")
    if not isinstance(state, dict) or state.get("class") not in predictor_classes():
        found = state.get("class") if isinstance(state, dict) else type(state).__name__
        raise CapscaleError(f"{path}: not a capscale fit file (no known predictor class, found {found!r}); "
                            "write one with `capscale fit ... --out FIT.json`")
    try:
        predictor = restore(state)
    except (KeyError, TypeError, ValueError) as e:
        raise CapscaleError(f"{path}: a damaged capscale fit file ({type(e).__name__}: {e})") from e
    predictor.meta_ = state.get("meta", {})
    return predictor
