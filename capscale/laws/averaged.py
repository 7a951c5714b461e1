"""An equal-weight average of several fitted forms, used as one fit (forecast combination).

Why: choosing step 1's form by the ladder's own rolling origins bets on one form, and the held-out
runs of a ladder are few, so the choice is noisy. Averaging the forms' forecasts hedges that bet;
on the public loss ladders (OpenLM over-training testbed, Chinchilla's runs) the equal-weight average
beat both the rolling-origin choice and weights from the rolling-origin errors (README, "Step 1").
The object quacks like a FitResult where forecasts use one: ``form.inputs``, ``predict``,
``n_points``, ``n_free``, ``to_dict``, and a batched refit of every member (``fit_from_dict`` reads
either kind back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capscale.laws.fitting import FitResult, refit_many

AVERAGE = "average"


@dataclass(frozen=True)
class AveragedForm:
    """What callers read off a fit's form: its name and the inputs it needs (the members' union)."""
    name: str
    inputs: tuple[str, ...]


@dataclass
class AveragedFit:
    members: list  # FitResult of each form
    weights: np.ndarray  # one per member, summing to 1
    labels: list | None = None  # the members' names where a form is used with fixed parameters (step 1's power_law)

    @property
    def form(self) -> AveragedForm:
        inputs = tuple(dict.fromkeys(k for m in self.members for k in m.form.inputs))
        names = self.labels or [m.form.name for m in self.members]
        return AveragedForm(f"{AVERAGE}({', '.join(names)})", inputs)

    @property
    def n_points(self) -> int:
        return self.members[0].n_points

    @property
    def params(self) -> dict:
        """The one parameter every member shares in meaning: E, the irreducible loss (the average curve's
        asymptote is the weighted mean of the members'; a member without E, the power law, has E = 0)."""
        return {"E": float(sum(w * m.params.get("E", 0.0) for w, m in zip(self.weights, self.members)))}

    @property
    def n_free(self) -> int:
        """The most free parameters of any member: what a resample must have distinct runs for."""
        return max(m.n_free for m in self.members)

    def predict(self, **raw) -> np.ndarray:
        parts = [m.predict(**{k: raw[k] for k in m.form.inputs}) for m in self.members]
        return np.asarray(sum(w * p for w, p in zip(self.weights, parts)), dtype=float)

    def to_dict(self) -> dict:
        return {"form": AVERAGE, "members": [m.to_dict() for m in self.members],
                "weights": [float(w) for w in self.weights], "labels": self.labels, "n_points": self.n_points}

    @classmethod
    def from_dict(cls, d: dict) -> "AveragedFit":
        return cls([FitResult.from_dict(m) for m in d["members"]], np.asarray(d["weights"], dtype=float), d.get("labels"))

    def refit_many(self, inputs: dict, y, weights, delta=None) -> list:
        """Every member refitted on every resample (capscale.laws.fitting.refit_many); a resample
        whose refit of any member failed is None."""
        per_member = [refit_many(m, {k: inputs[k] for k in m.form.inputs}, y, weights, delta) for m in self.members]
        return [None if any(f is None for f in fits) else AveragedFit(list(fits), self.weights, self.labels)
                for fits in zip(*per_member)]


def fit_from_dict(d: dict):
    """A saved fit: a FitResult, or an AveragedFit where it was saved as one."""
    return AveragedFit.from_dict(d) if d["form"] == AVERAGE else FitResult.from_dict(d)


def average_of(fits: list, labels: list | None = None) -> AveragedFit:
    """Equal weights (see the module docstring for why not weights from the rolling-origin errors)."""
    return AveragedFit(list(fits), np.full(len(fits), 1.0 / len(fits)), labels)
