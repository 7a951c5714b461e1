"""Functional forms as data: a formula over normalised inputs, parameter names, bounds, start grid.

Inputs are normalised before fitting so that one start grid serves every ladder: scale
variables (params, tokens, flops) enter as centred natural logs, task loss as a z-score.
The centring constants are stored in the fit, so forecasts far outside the ladder use the
same formula. Start-grid entries for parameters marked in ``grid_scale`` are multiples of
a statistic of the targets (e.g. the irreducible loss E starts at fractions of min(y)).

Forms (all from the literature):
- ``power_compute``  L(C) = E + exp(a - alpha * (ln C - c0))            Kaplan et al. 2020
- ``chinchilla``     L(N, D) = E + exp(a - alpha * (ln N - n0)) + exp(b - beta * (ln D - d0))
                     Hoffmann et al. 2022; step 1 of Bhagia et al. 2024 (OLMo ladder)
- ``sigmoid_loss``   acc(L) = b + (1 - b) * a / (1 + exp(k * (z - z0))), z = (L - l0) / ls
                     step 2 of Bhagia et al. 2024, b = chance level when known
- ``exponential_loss``  err(L) = eps - exp(kappa - gamma * z)             Gadre et al. 2024
- ``sigmoid_compute``   acc(C) = b + (1 - b) * a / (1 + exp(-k * (x - x0))), x = ln C - c0
                     the single-step baseline: compute straight to accuracy
- ``pass_until_power``  PU(N) = exp(-c * N^-alpha) = exp(-exp(a - alpha * (ln N - n0))), a = ln c - alpha n0
                     the PassUntil task law of Hu et al. 2023 (arXiv 2310.03262); log(-log PU) is
                     linear in ln N. ``pass_until_power_tokens`` / ``_flops``: the same law in D or C.
- ``chinchilla_shared``  L(N, D) = E + A / N^alpha + B / D^alpha: one exponent for both (4 free
                     parameters; Gadre et al. 2024 and Hoffmann et al.'s approach 3 in its symmetric form)
- ``exponential_loss_pinned``  the exponential form with err(L = 0) = 1 - ceiling exactly: a perfect
                     model is always right (the fixed-ceiling alternative to the OLMo ladder's anchor point)
- ``sigmoid_<x>`` / ``linear_<x>`` for x in params, tokens, flops: metric against one scale input, a
                     sigmoid in log x or a straight line in log x (the short-ladder direct forms; the
                     2-parameter sigmoid is ``sigmoid_<x>`` with a = 1 and b = chance fixed)
The sigmoids' height is a share ``a`` of the room above the floor ``b``, so they never exceed 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SCALE_INPUTS = ("params", "tokens", "flops")


@dataclass(frozen=True)
class Form:
    name: str
    inputs: tuple[str, ...]
    param_names: tuple[str, ...]
    formula: Callable[[dict, dict], np.ndarray]  # (params by name, normalised inputs by name) -> prediction
    bounds: dict[str, tuple[float, float]]
    start_grid: dict[str, tuple[float, ...]]
    space: str  # "log": residuals of log(y) (losses); "linear": residuals of y (accuracies)
    grid_scale: dict[str, str] = field(default_factory=dict)  # param -> "min_y" | "range_y"
    description: str = ""
    # optional closed-form partial derivatives {param: d prediction / d param}; fitting falls back
    # to exact complex-step differentiation of ``formula`` without it (tests compare the two)
    gradient: Callable[[dict, dict], dict] | None = None

    def __call__(self, theta: dict, z: dict) -> np.ndarray:
        return self.formula(theta, z)


def normalise_inputs(form: Form, raw: dict, reference: dict | None = None) -> tuple[dict, dict]:
    """Centred logs for scale inputs, z-scores for losses; ``reference`` reuses a fit's constants."""
    reference = dict(reference or {})
    z = {}
    for name in form.inputs:
        values = np.asarray(raw[name], dtype=float)
        if name in SCALE_INPUTS:
            if np.any(values <= 0):
                raise ValueError(f"{name} must be positive to take its log")
            logs = np.log(values)
            reference.setdefault(name, (float(np.mean(logs)), 1.0))
            centre, _ = reference[name]
            z[name] = logs - centre
        else:
            spread = float(np.std(values)) or 1.0
            reference.setdefault(name, (float(np.mean(values)), spread))
            centre, scale = reference[name]
            z[name] = (values - centre) / scale
    return z, reference


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * u))  # overflow-free logistic


def _power_compute_gradient(t, z):
    e = np.exp(t["a"] - t["alpha"] * z["flops"])
    return {"E": np.ones_like(e), "a": e, "alpha": -z["flops"] * e}


def _chinchilla_gradient(t, z):
    en = np.exp(t["a"] - t["alpha"] * z["params"])
    ed = np.exp(t["b"] - t["beta"] * z["tokens"])
    return {"E": np.ones_like(en), "a": en, "alpha": -z["params"] * en, "b": ed, "beta": -z["tokens"] * ed}


def _sigmoid_gradient(t, u, du_dk, du_dcentre, centre: str):
    """Partials of b + (1 - b) a sigmoid(u) with u linear in (k, centre)."""
    s = _sigmoid(u)
    slope = (1.0 - t["b"]) * t["a"] * s * (1.0 - s)
    return {"a": (1.0 - t["b"]) * s, "k": slope * du_dk, centre: slope * du_dcentre, "b": 1.0 - t["a"] * s}


def _sigmoid_loss_gradient(t, z):
    d = z["loss"] - t["z0"]
    return _sigmoid_gradient(t, -t["k"] * d, -d, t["k"], "z0")


def _exponential_loss_gradient(t, z):
    e = np.exp(t["kappa"] - t["gamma"] * z["loss"])
    return {"eps": np.ones_like(e), "kappa": -e, "gamma": z["loss"] * e}


POWER_COMPUTE = Form(
    name="power_compute",
    inputs=("flops",),
    param_names=("E", "a", "alpha"),
    formula=lambda t, z: t["E"] + np.exp(t["a"] - t["alpha"] * z["flops"]),
    bounds={"E": (0.0, 1e3), "a": (-20.0, 10.0), "alpha": (0.0, 3.0)},
    start_grid={"E": (0.0, 0.3, 0.6, 0.9), "a": (-3.0, -1.0, 0.0, 1.0), "alpha": (0.05, 0.2, 0.5)},
    grid_scale={"E": "min_y"},
    space="log",
    description="L(C) = E + A * C^-alpha",
    gradient=_power_compute_gradient,
)

CHINCHILLA = Form(
    name="chinchilla",
    inputs=("params", "tokens"),
    param_names=("E", "a", "alpha", "b", "beta"),
    formula=lambda t, z: t["E"] + np.exp(t["a"] - t["alpha"] * z["params"]) + np.exp(t["b"] - t["beta"] * z["tokens"]),
    bounds={"E": (0.0, 1e3), "a": (-20.0, 10.0), "alpha": (0.0, 3.0), "b": (-20.0, 10.0), "beta": (0.0, 3.0)},
    start_grid={"E": (0.0, 0.5, 0.9), "a": (-2.0, 0.0), "alpha": (0.1, 0.3, 0.7), "b": (-2.0, 0.0),
                "beta": (0.1, 0.3, 0.7)},
    grid_scale={"E": "min_y"},
    space="log",
    description="L(N, D) = E + A / N^alpha + B / D^beta",
    gradient=_chinchilla_gradient,
)

SIGMOID_LOSS = Form(
    name="sigmoid_loss",
    inputs=("loss",),
    param_names=("a", "k", "z0", "b"),
    formula=lambda t, z: t["b"] + (1.0 - t["b"]) * t["a"] * _sigmoid(-t["k"] * (z["loss"] - t["z0"])),
    bounds={"a": (0.0, 1.0), "k": (-30.0, 30.0), "z0": (-15.0, 15.0), "b": (0.0, 1.0)},
    start_grid={"a": (0.4, 0.9), "k": (-1.0, 1.0, 3.0), "z0": (-2.0, 0.0, 2.0, 4.0), "b": (0.0, 0.25)},
    space="linear",
    description="acc(L) = b + (1 - b) a / (1 + exp(k (L - L0)))  (b = chance when known)",
    gradient=_sigmoid_loss_gradient,
)

EXPONENTIAL_LOSS = Form(
    name="exponential_loss",
    inputs=("loss",),
    param_names=("eps", "kappa", "gamma"),
    formula=lambda t, z: t["eps"] - np.exp(t["kappa"] - t["gamma"] * z["loss"]),
    bounds={"eps": (0.0, 1.0), "kappa": (-20.0, 5.0), "gamma": (0.0, 20.0)},
    start_grid={"eps": (0.6, 0.8, 1.0), "kappa": (-3.0, -1.0, 0.0), "gamma": (0.1, 0.5, 1.5)},
    space="linear",
    description="err(L) = eps - k * exp(-gamma L)",
    gradient=_exponential_loss_gradient,
)

def _chinchilla_shared_gradient(t, z):
    en = np.exp(t["a"] - t["alpha"] * z["params"])
    ed = np.exp(t["b"] - t["alpha"] * z["tokens"])
    return {"E": np.ones_like(en), "a": en, "b": ed, "alpha": -z["params"] * en - z["tokens"] * ed}


CHINCHILLA_SHARED = Form(
    name="chinchilla_shared",
    inputs=("params", "tokens"),
    param_names=("E", "a", "b", "alpha"),
    formula=lambda t, z: t["E"] + np.exp(t["a"] - t["alpha"] * z["params"]) + np.exp(t["b"] - t["alpha"] * z["tokens"]),
    bounds={"E": (0.0, 1e3), "a": (-20.0, 10.0), "b": (-20.0, 10.0), "alpha": (0.0, 3.0)},
    start_grid={"E": (0.0, 0.5, 0.9), "a": (-2.0, 0.0), "b": (-2.0, 0.0), "alpha": (0.1, 0.3, 0.7)},
    grid_scale={"E": "min_y"},
    space="log",
    description="L(N, D) = E + A / N^alpha + B / D^alpha",
    gradient=_chinchilla_shared_gradient,
)


def _exponential_pinned(t, z):
    return t["e0"] + np.exp(t["kappa"] - t["gamma"] * t["zc"]) - np.exp(t["kappa"] - t["gamma"] * z["loss"])


def _exponential_pinned_gradient(t, z):
    at_zero = np.exp(t["kappa"] - t["gamma"] * t["zc"])
    here = np.exp(t["kappa"] - t["gamma"] * z["loss"])
    return {"kappa": at_zero - here, "gamma": -t["zc"] * at_zero + z["loss"] * here}


EXPONENTIAL_LOSS_PINNED = Form(
    name="exponential_loss_pinned",
    inputs=("loss",),
    param_names=("kappa", "gamma", "e0", "zc"),  # e0 = 1 - ceiling and zc = z at L = 0 are always fixed
    formula=_exponential_pinned,
    bounds={"kappa": (-20.0, 5.0), "gamma": (0.0, 20.0), "e0": (0.0, 1.0), "zc": (-1e3, 1e3)},
    start_grid={"kappa": (-3.0, -1.0, 0.0), "gamma": (0.1, 0.5, 1.5)},
    space="linear",
    description="err(L) = (1 - ceiling) + k (exp(0) - exp(-gamma L)): err(0) = 1 - ceiling",
    gradient=_exponential_pinned_gradient,
)


def _sigmoid_scale(x: str) -> Form:
    """acc(x) = b + (1 - b) a sigmoid(k (ln x - x0)): the direct baseline in one scale input."""

    def gradient(t, z):
        d = z[x] - t["x0"]
        return _sigmoid_gradient(t, t["k"] * d, d, -t["k"], "x0")

    return Form(
        name="sigmoid_compute" if x == "flops" else f"sigmoid_{x}",
        inputs=(x,),
        param_names=("a", "k", "x0", "b"),
        formula=lambda t, z: t["b"] + (1.0 - t["b"]) * t["a"] * _sigmoid(t["k"] * (z[x] - t["x0"])),
        bounds={"a": (0.0, 1.0), "k": (-10.0, 10.0), "x0": (-30.0, 30.0), "b": (0.0, 1.0)},
        start_grid={"a": (0.4, 0.9), "k": (-0.5, 0.3, 1.0), "x0": (-2.0, 0.0, 2.0, 5.0), "b": (0.0, 0.25)},
        space="linear",
        description=f"acc({x}) = b + (1 - b) a / (1 + exp(-k (ln {x} - x0)))  (b = chance when known)",
        gradient=gradient,
    )


def _linear_scale(x: str) -> Form:
    """y = c0 + c1 (ln x - centre): two parameters, the honest form for two or three runs."""
    return Form(
        name=f"linear_{'compute' if x == 'flops' else x}",
        inputs=(x,),
        param_names=("c0", "c1"),
        formula=lambda t, z: t["c0"] + t["c1"] * z[x],
        bounds={"c0": (-10.0, 10.0), "c1": (-10.0, 10.0)},
        start_grid={"c0": (0.0, 0.5), "c1": (-0.05, 0.05)},
        space="linear",
        description=f"y = c0 + c1 ln {x}  (linear in log {x})",
        gradient=lambda t, z: {"c0": np.ones_like(z[x]), "c1": z[x]},
    )


SIGMOID_SCALE = {x: _sigmoid_scale(x) for x in SCALE_INPUTS}
LINEAR_SCALE = {x: _linear_scale(x) for x in SCALE_INPUTS}
SIGMOID_COMPUTE = SIGMOID_SCALE["flops"]


def _pass_until_power(x: str) -> Form:
    """PU(x) = exp(-exp(a - alpha z)), z = ln x - centre. Log space: for PassUntil estimates the
    relative error is about 1/sqrt(K) whatever p is, so residuals of log PU are homoscedastic."""

    def formula(t, z):
        return np.exp(-np.exp(t["a"] - t["alpha"] * z[x]))

    def gradient(t, z):
        e = np.exp(t["a"] - t["alpha"] * z[x])
        y = np.exp(-e)
        return {"a": -y * e, "alpha": y * e * z[x]}

    return Form(
        name="pass_until_power" if x == "params" else f"pass_until_power_{x}",
        inputs=(x,),
        param_names=("a", "alpha"),
        formula=formula,
        bounds={"a": (-30.0, 30.0), "alpha": (-5.0, 10.0)},
        start_grid={"a": (-1.0, 0.5, 1.5, 2.5, 3.5), "alpha": (0.1, 0.5, 1.0, 2.0)},
        space="log",
        description=f"PU({x}) = exp(-c * {x}^-alpha)  (PassUntil, Hu et al. 2023)",
        gradient=gradient,
    )


PASS_UNTIL_POWER = {x: _pass_until_power(x) for x in SCALE_INPUTS}

FORMS: dict[str, Form] = {f.name: f for f in (POWER_COMPUTE, CHINCHILLA, CHINCHILLA_SHARED, SIGMOID_LOSS,
                                              EXPONENTIAL_LOSS, EXPONENTIAL_LOSS_PINNED, *SIGMOID_SCALE.values(),
                                              *LINEAR_SCALE.values(), *PASS_UNTIL_POWER.values())}


def get_form(name: str) -> Form:
    if name not in FORMS:
        raise KeyError(f"unknown form {name!r}; known: {', '.join(FORMS)}")
    return FORMS[name]


# --- loss-to-loss (issue 15) ----------------------------------------------------------------------
# ``loss_to_loss``  L1 = K * (L0 - E0)^kappa + E1: a shifted power law between two losses of the same
# models (train -> test, test -> test, or dataset A -> dataset B at matched (N, D)), Brandfonbrener et
# al. 2024, "Loss-to-loss prediction" (arXiv 2411.12925). L0 enters as a z-score z = (L0 - l0) / ls like
# every loss input, so the fitted parameters are a = ln(K ls^kappa) and e0 = (E0 - l0) / ls;
# ``shifted_power_params`` turns them back into (K, E0, kappa, E1). Below E0 the law is undefined:
# the gap z - e0 is floored at LOSS_GAP_FLOOR there, so a start that puts E0 above a point scores badly
# instead of failing.
LOSS_GAP_FLOOR = 1e-9


def _loss_gap(t, z):
    return np.maximum(z["loss"] - t["e0"], LOSS_GAP_FLOOR)


def _loss_to_loss(t, z):
    return t["E1"] + np.exp(t["a"]) * _loss_gap(t, z) ** t["kappa"]


def _loss_to_loss_gradient(t, z):
    gap = _loss_gap(t, z)
    reducible = np.exp(t["a"]) * gap ** t["kappa"]
    inside = (z["loss"] - t["e0"]) > LOSS_GAP_FLOOR
    return {"a": reducible, "e0": np.where(inside, -t["kappa"] * reducible / gap, 0.0),
            "kappa": reducible * np.log(gap), "E1": np.ones_like(reducible)}


LOSS_TO_LOSS = Form(
    name="loss_to_loss",
    inputs=("loss",),
    param_names=("a", "e0", "kappa", "E1"),
    formula=_loss_to_loss,
    bounds={"a": (-30.0, 15.0), "e0": (-1e3, 1e3), "kappa": (0.02, 10.0), "E1": (0.0, 1e3)},
    start_grid={"a": (-3.0, -1.0, 0.0, 1.0), "e0": (-2.5, -4.0, -8.0, -20.0), "kappa": (0.5, 1.0, 2.0),
                "E1": (0.0, 0.5, 0.9)},
    grid_scale={"E1": "min_y"},
    space="log",
    description="L1 = K (L0 - E0)^kappa + E1  (loss-to-loss, Brandfonbrener et al. 2024)",
    gradient=_loss_to_loss_gradient,
)
FORMS[LOSS_TO_LOSS.name] = LOSS_TO_LOSS


def shifted_power_params(params: dict, reference: dict) -> dict:
    """(K, E0, kappa, E1) in the losses' own units from a loss_to_loss fit's parameters and the
    normalisation (l0, ls) of its input: E0 = l0 + ls e0 and K = exp(a) / ls^kappa."""
    l0, ls = reference["loss"]
    kappa = params["kappa"]
    return {"K": float(np.exp(params["a"]) / ls ** kappa), "E0": float(l0 + ls * params["e0"]),
            "kappa": float(kappa), "E1": float(params["E1"])}


def normalised_loss_to_loss(physical: dict, reference: dict) -> dict:
    """The inverse of ``shifted_power_params``: (a, e0, kappa, E1) for a given input normalisation."""
    l0, ls = reference["loss"]
    return {"a": float(np.log(physical["K"]) + physical["kappa"] * np.log(ls)), "e0": (physical["E0"] - l0) / ls,
            "kappa": float(physical["kappa"]), "E1": float(physical["E1"])}
