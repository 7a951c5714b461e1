"""Step 1 of the two-step forecast: scale (N, D or C) -> task loss, as candidate forms.

The candidates are data (``STEP1_FORMS``); the ladder's own rolling-origin backtests choose among them
(``TwoStepPredictor(step1="auto")``), or every eligible form is fitted and their forecasts averaged with
equal weights (``step1="average"``, capscale.laws.averaged; ladders of up to SHORT_LADDER_SIZES sizes
still choose). Fits are memoised by their data, so the tasks of a ladder that share one validation
loss fit its law once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.laws.averaged import AVERAGE, average_of
from capscale.laws.fitting import FitError, FitResult, fit_form
from capscale.laws.forms import get_form
from capscale.laws.rolling import rungs, size_keys
from capscale.schema import require_inputs


# step 1 candidates: name -> (form, fixed parameters); "power_law" has no irreducible loss (2 parameters)
STEP1_FORMS = {
    "chinchilla": ("chinchilla", {}),
    "chinchilla_shared": ("chinchilla_shared", {}),
    "power_compute": ("power_compute", {}),
    "power_law": ("power_compute", {"E": 0.0}),
}
STEP1_CHOICES = ("auto", AVERAGE, "rule", *STEP1_FORMS)
SHORT_LADDER_SIZES = 3  # up to this many sizes, "power_law" (2 parameters) competes in step 1


def n_free(form_name: str, fixed: dict) -> int:
    return len([p for p in get_form(form_name).param_names if p not in fixed])


def step1_eligible(name: str, finals: pd.DataFrame, n_runs: int) -> bool:
    """Enough runs for its free parameters; (N, D) forms also need tokens per parameter to vary."""
    form, fixed = STEP1_FORMS[name]
    if n_runs < n_free(form, fixed):
        return False
    if get_form(form).inputs == ("flops",):
        return True
    tokens, params = finals["tokens"].to_numpy(float), finals["params"].to_numpy(float)
    if not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(params))):
        return False
    ratio = tokens / params
    return tokens.max() / tokens.min() > 2.0 and ratio.max() / ratio.min() > 2.0


def step1_free(name: str) -> int:
    """Free parameters of a step-1 choice; for the average, the most any member can have."""
    if name == AVERAGE:
        return max(n_free(*v) for k, v in STEP1_FORMS.items() if k != "power_law")
    return n_free(*STEP1_FORMS[name])


def short_ladder(finals: pd.DataFrame) -> bool:
    return len(rungs(size_keys(finals))) <= SHORT_LADDER_SIZES


def step1_options(finals: pd.DataFrame) -> list[str]:
    """The forms these runs can determine; a law without irreducible loss only on short ladders: fitted on
    the smallest rungs of a longer ladder it often wins the rolling origin there and then extrapolates
    far too low (OpenLM testbed C4 loss at 6.9B: -12%)."""
    options = [n for n in STEP1_FORMS if step1_eligible(n, finals, len(finals))]
    if not short_ladder(finals):
        options = [n for n in options if n != "power_law"] or options
    return options


def averaging_applies(finals: pd.DataFrame) -> bool:
    """``step1="average"`` averages on ladders of more than SHORT_LADDER_SIZES sizes with 2+ forms to
    average; shorter ladders keep the rolling-origin choice (no public table says averaging helps there)."""
    return not short_ladder(finals) and len(step1_options(finals)) >= 2


def step1_label(name: str, fit) -> str:
    """How a record names the step-1 law: the form, "(E=0)" for the power law, the members of an average."""
    if name == AVERAGE:
        return fit.form.name
    return STEP1_FORMS[name][0] + (" (E=0)" if name == "power_law" else "")


def old_step1_rule(finals: pd.DataFrame) -> str:
    """The fixed rule of capscale 0.1: (N, D) with >= 8 runs varying tokens per parameter, else compute."""
    return "chinchilla" if len(finals) >= 8 and step1_eligible("chinchilla", finals, len(finals)) else "power_compute"


_STEP1_MEMO: dict = {}  # step-1 fits and choices by their data: every task of a ladder that shares one loss
_STEP1_MEMO_SIZE = 512  # (a validation loss, as OpenLM's C4) reuses them instead of refitting the same law


def step1_key(*parts) -> bytes:
    """A key for step-1 memoisation: the bytes of the scale inputs and losses, and the settings."""
    out = []
    for part in parts:
        out.append(np.ascontiguousarray(part, dtype=float).tobytes() if isinstance(part, (np.ndarray, pd.Series))
                   else repr(part).encode())
    return b"|".join(out)


def memoised(key: bytes, compute):
    if key not in _STEP1_MEMO:
        _STEP1_MEMO[key] = compute()
        while len(_STEP1_MEMO) > _STEP1_MEMO_SIZE:
            _STEP1_MEMO.pop(next(iter(_STEP1_MEMO)))
    return _STEP1_MEMO[key]


def fit_step1(name: str, finals: pd.DataFrame, loss: np.ndarray, warm: FitResult | None = None) -> FitResult:
    """The step-1 law ``name`` on these runs (``warm``: a bootstrap refit warm-started from the full fit)."""
    if name == AVERAGE:
        return fit_average(finals, loss, warm)
    form, fixed = STEP1_FORMS[name]
    f = get_form(form)
    inputs = {k: finals[k].to_numpy(float) for k in f.inputs}
    extra = {} if warm is None else dict(starts=[warm.params], reference=warm.reference)
    if warm is not None:
        return fit_form(f, inputs, loss, fixed=fixed, **extra)
    key = step1_key("fit", name, *inputs.values(), np.asarray(loss, dtype=float))
    return memoised(key, lambda: fit_form(f, inputs, loss, fixed=fixed))


def fit_average(finals: pd.DataFrame, loss: np.ndarray, warm=None):
    """Every eligible form that fits, averaged (a warm refit keeps the full fit's members)."""
    if warm is not None:
        return average_of([fit_step1(label, finals, loss, warm=m) for label, m in zip(warm.labels, warm.members)])
    fits, labels = [], []
    for name in step1_options(finals):
        try:
            fits.append(fit_step1(name, finals, loss))
            labels.append(name)
        except FitError:
            continue
    if not fits:
        raise FitError(f"step 1: no form of {', '.join(step1_options(finals))} fits {len(finals)} runs")
    return average_of(fits, labels)


def predict_loss(target: dict, fit: FitResult) -> float:
    """Step 1 at the target; raises naming what the target lacks for an (N, D) law."""
    require_inputs(target, fit.form.inputs, f"step 1 ({fit.form.name})")
    return float(fit.predict(**{k: np.array([target[k]]) for k in fit.form.inputs})[0])
