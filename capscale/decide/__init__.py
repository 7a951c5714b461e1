"""Which recipe wins at scale: pairwise decisions between recipes from a ladder of small runs.

A *recipe* is a value of one column of the ladder table (``family``, or a data-mix column): every
recipe has its own runs, usually at the same sizes. For every pair of recipes (A, B), every task and
every target scale, a method gives P(A beats B at the target) and a decision: A, B, or "too close
to call" at the requested level (A when P >= level, B when P <= 1 - level).

Methods (``MethodSpec``, written ``name`` or ``name:metric``; the metric is what the method ranks by,
default ``--metric``):
- ``single-scale``: the ranking at the largest size both recipes have (DataDecide's baseline,
  Magnusson et al. 2025), with tokens per parameter closest to the target's. P is the chance that a
  redraw of the benchmark items keeps the ranking (items resampled, paired when both recipes were
  scored on the same items; the rows' stderr where there are no items): the small-scale difference
  carried forward, not a forecast. Without any noise estimate P is the bare ranking (0 or 1) and the
  pair is never *called* (a decision needs draws on both sides); it is still scored as a ranking.
- ``single-scale:bpb_correct`` / ``single-scale:p_correct``: the same ranking by a continuous metric
  (DataDecide finds these decide far better at small scale).
- every forecasting method of the registry (``two-step``, ``direct``, ``auto``, ...): each recipe's
  own fit, forecast at the target; ``direct:p_correct`` ranks by the forecast p_correct.
- ``loss-law:METRIC`` (``capscale.laws.losslaw.LossLawPredictor``): a loss extrapolated by its scale
  law, e.g. ``loss-law:bpb_correct`` ("extrapolated bpb"); plain ``loss-law`` when ``--metric`` is a loss.
- ``loss-to-loss`` (``LossToLossPredictor``): the scale law of the ``--loss-task`` loss (e.g. a validation
  loss) mapped to the task's loss by the shifted power law (and, for an accuracy, through ``--loss``
  and two-step's step 2).

P(A beats B) comes from the forecasts' own predictive draws (the bootstrap over runs, items where
per-item data exist, and a resampled residual), centred on the point forecast, plus the calibration's
misspecification as normal noise of the size its intervals add (``capscale.laws.calibration``:
variances add), common to both recipes of a pair (see ``p_beats``). Draws are paired across
recipes when both were fitted on the same items and the same number of runs: the seeded bootstrap's
resample b then redraws the same items (and the same run positions) for both. Otherwise B's draws are
shuffled, i.e. treated as independent of A's.

Targets (``--target``): a query over the ladder's rows (``capscale.query``; e.g. ``params > 1e9``)
whose runs are held out: each distinct (params, tokens) among their final checkpoints (within 2%)
is one target, at which each recipe is forecast at its own matched run's scale (or at the target's
scale where it has no run there); or explicit scales ``params=6.9e9,tokens=1.4e11`` (several joined
by ``;``), at which every recipe is forecast from all its runs.
"""

from capscale.decide.beliefs import Belief, p_beats
from capscale.decide.methods import RECORD_KEYS, TOO_CLOSE, DecideError, MethodSpec, default_methods, parse_method
from capscale.decide.records import DecisionRecord, as_table, decide_pair
from capscale.decide.report import report_section
from capscale.decide.run import decide, decide_backtest
from capscale.decide.targets import Target

__all__ = ["Belief", "DecideError", "DecisionRecord", "MethodSpec", "RECORD_KEYS", "TOO_CLOSE", "Target", "as_table",
           "decide", "decide_backtest", "decide_pair", "default_methods", "p_beats", "parse_method", "report_section"]
