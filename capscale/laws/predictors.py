"""The common base of the task predictors, scikit-learn style, with intervals that hold.

Every predictor (two-step in ``twostep``, direct and carry-forward in ``direct``, choice-mass, PassUntil)
produces predictive draws (``predictive_draws``): a seeded bootstrap over ladder *runs* (a run brings all its
checkpoints; items too where per-item data exist) refitting every step, plus one resampled residual of the
full fit, so an interval covers the noise of the target's own measurement. ``capscale.laws.base`` turns
draws into intervals centred on the point forecast, widened by the ladder's rolling-origin backtests
(``calibrate=True``, ``capscale.laws.calibration``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from capscale.errors import CapscaleError
from capscale.laws.base import BasePredictor, Forecast
from capscale.laws.calibration import DEFAULT_GROWTH, calibrate
from capscale.laws.rolling import internal_backtest
from capscale.schema import target_scale


X_CHOICES = ("auto", "flops", "params", "tokens")


def resolve_x(x: str, finals: pd.DataFrame) -> str:
    """The scale input of a direct law: compute where every run has it, else params."""
    if x != "auto":
        return x
    for column in ("flops", "params", "tokens"):
        values = finals[column].to_numpy(float) if column in finals else np.array([np.nan])
        if np.all(np.isfinite(values) & (values > 0)):
            return column
    raise CapscaleError("no scale input (flops, params or tokens) is known and positive for every run")


class TaskPredictor(BasePredictor):
    """A predictor of one task's metric with the common hyper-parameters of calibration."""

    link = None  # (forward, inverse): the space where errors are additive (None: the metric's own units)

    def __init__(self, level=0.9, n_boot=1000, seed=0, calibrate=True, n_origins=3, growth=DEFAULT_GROWTH,
                 n_boot_origin=100):
        super().__init__(level, n_boot, seed)
        self.calibrate = calibrate
        self.n_origins = n_origins
        self.growth = growth
        self.n_boot_origin = n_boot_origin

    def _calibrate(self, ladder, task, metric, loss, loss_task, items) -> None:
        """Widening factors from this configuration's own rolling-origin backtests on the ladder."""
        self.calibration_ = None
        if not self.calibrate:
            return
        probe = self.clone(n_boot=self.n_boot_origin, calibrate=False)
        points = internal_backtest(probe, ladder, task, metric, loss, loss_task, items, self.n_origins)
        self.calibration_ = calibrate(points, self.growth, self.link)
        self.origin_points_ = points

    def predict(self, params=None, tokens=None, flops=None, level: float | None = None) -> Forecast:
        target = target_scale(params, tokens, flops)
        value, draws = self.predictive_draws(**target)
        return self._forecast(value, draws, target, level, link=self.link, **self._forecast_fields(target, level))

    def _forecast_fields(self, target: dict, level) -> dict:
        return {"form_used": getattr(self, "form_used_", ""), "n_points": int(getattr(self, "n_runs_", 0)),
                "method_used": getattr(self, "method_name", "")}
