"""One registry of forecasting methods: name -> how to build it, what it forecasts, what it reads.

The CLI (``--method``), backtests, persistence and plots ask this table instead of switching on
method names; adding a method is one entry here. Builders import their predictor lazily, so
importing the registry stays cheap and nothing imports back into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from capscale.errors import CapscaleError


@dataclass
class MethodOptions:
    """Everything a method may be configured with from the command line; each builder takes its share."""
    level: float = 0.9
    n_boot: int = 1000
    seed: int = 0
    step1: str | None = None  # None: the method's own default (loss-law: average; two-step, choice-mass: auto)
    step2: str = "sigmoid_loss"
    x: str | None = None
    ceiling: str = "auto"
    anchor_weight: float = 1.0
    calibrate: bool = True
    n_origins: int = 3
    pool: str = "none"
    extra: dict = field(default_factory=dict)

    def common(self) -> dict:
        return dict(level=self.level, n_boot=self.n_boot, seed=self.seed, calibrate=self.calibrate,
                    n_origins=self.n_origins)

    def step1_given(self) -> dict:
        """``step1`` where one was chosen; otherwise nothing, so each predictor keeps its own default."""
        return {} if self.step1 is None else {"step1": self.step1}


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[MethodOptions], object]
    default_metric: str
    items: str | None  # per-item data it reads (capscale.ladder.read_items): "choices", "items", "samples", or None
    items_required: bool
    plot: str  # function of capscale.plots that draws its backtest
    summary: str
    predictor_class: str = ""  # class name, for saved fits
    pools_families: bool = False  # fitted on every family of the table (told the target's family), not on one
    reads_all_tasks: bool = False  # its fit looks at every task's data (and per-item rows), not only its own


def _auto(o: MethodOptions):
    from capscale.laws.auto import AutoPredictor

    return AutoPredictor(select=o.extra.get("select", "ladder"), ceiling=o.ceiling, anchor_weight=o.anchor_weight,
                         **o.common())


def _two_step(o: MethodOptions):
    from capscale.laws.twostep import TwoStepPredictor

    return TwoStepPredictor(**o.step1_given(), step2=o.step2, ceiling=o.ceiling, anchor_weight=o.anchor_weight,
                            pool=o.pool, **o.common())


def _direct(o: MethodOptions):
    from capscale.laws.direct import DirectPredictor

    return DirectPredictor(form=o.extra.get("form", "auto"), x=o.x or "auto", **o.common())


def _carry_forward(o: MethodOptions):
    from capscale.laws.direct import CarryForwardPredictor

    return CarryForwardPredictor(x=o.x or "auto", **o.common())


def _pass_until(per_item: bool):
    def build(o: MethodOptions):
        from capscale.laws.passuntil import PassUntilPredictor

        return PassUntilPredictor(per_item=per_item, x=o.x or "params", **o.common())

    return build


def _choice_mass(o: MethodOptions):
    from capscale.laws.choicemass import ChoiceMassPredictor

    return ChoiceMassPredictor(x=o.x or "auto", **o.step1_given(), **o.common())


def _observational(o: MethodOptions):
    from capscale.laws.observational import ObservationalPredictor

    return ObservationalPredictor(n_components=o.extra.get("n_components", 1), score_link=o.extra.get("score_link", "linear"),
                                  blend=o.extra.get("blend", "auto"),
                                  **o.common())


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("auto", _auto, "acc", "choices", False, "plot_forecast",
           "the candidate that forecasts the ladder's own largest runs best (rolling origin, over all its tasks); "
           "with several families, observational is one",
           "AutoPredictor", reads_all_tasks=True, pools_families=True),
    Method("two-step", _two_step, "acc", "items", False, "plot_two_step",
           "compute -> task loss -> metric (OLMo ladder), step-1 form by rolling origin, anchored ceiling",
           "TwoStepPredictor"),
    Method("direct", _direct, "acc", "items", False, "plot_direct",
           "compute -> metric: sigmoid, 2-parameter sigmoid or line in log compute", "DirectPredictor"),
    Method("carry-forward", _carry_forward, "acc", None, False, "plot_direct",
           "the largest run's value, interval from the family's observed steps", "CarryForwardPredictor"),
    Method("pass-until", _pass_until(False), "pass_until", "samples", False, "plot_pass_until",
           "PU = exp(-c N^-alpha) on the task's PassUntil estimates", "PassUntilPredictor"),
    Method("pass-until-items", _pass_until(True), "pass_until", "samples", True, "plot_pass_until",
           "the per-item PassUntil law (needs per-item sample counts)", "PassUntilPredictor"),
    Method("choice-mass", _choice_mass, "acc", "choices", True, "plot_choice_mass_forecast",
           "per-item margins over each incorrect choice, pooled across items (needs per-choice rows)",
           "ChoiceMassPredictor"),
    Method("observational", _observational, "acc", None, False, "plot_observational",
           "cross-family: shared capability dimensions (PCA over benchmarks), lines in log compute with "
           "partially pooled family offsets, sigmoid/linear link per benchmark (Ruan et al. 2024)",
           "ObservationalPredictor", pools_families=True),
)}
DEFAULT_METHOD = "auto"


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise CapscaleError(f"--method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def make_predictor(method: str, options: MethodOptions | None = None):
    return get_method(method).build(options or MethodOptions())


def method_for_metric(metric: str | None) -> str:
    """The method a metric alone asks for: the PassUntil law for pass_until, auto otherwise."""
    return "pass-until" if metric == "pass_until" else DEFAULT_METHOD
