"""capscale: forecast downstream accuracy of language models from a ladder of small runs.

The main job from Python (README, "From Python")::

    import capscale
    ladder = capscale.load_ladder("results/toy")           # a results store or a ladder table
    fit = capscale.AutoPredictor().fit(ladder, task="arith", metric="acc")
    fit.predict(params=1e6, tokens=2e7)                     # Forecast: value, lower, upper, ...

Every name below is imported on first use, so ``import capscale`` stays light: the forecasting side
(ladder, laws, trends, plots) never loads torch; ``evaluate``, ``sample_checkpoints``, ``ingest_lm_eval``
and ``score`` load it when they are first touched. docs/design.md describes the layout.
"""

__version__ = "0.1.0"

# name -> "module:attribute", imported on first access (PEP 562 module __getattr__)
_LAZY = {
    # ladder tables and per-item data
    "load_ladder": "capscale.ladder:load_ladder",
    "read_items": "capscale.ladder:read_items",
    # forecasting: predictors (scikit-learn style), the method registry, backtests, saved fits
    "AutoPredictor": "capscale.laws.auto:AutoPredictor",
    "TwoStepPredictor": "capscale.laws.predictors:TwoStepPredictor",
    "DirectPredictor": "capscale.laws.predictors:DirectPredictor",
    "CarryForwardPredictor": "capscale.laws.predictors:CarryForwardPredictor",
    "ChoiceMassPredictor": "capscale.laws.choicemass:ChoiceMassPredictor",
    "PassUntilPredictor": "capscale.laws.passuntil:PassUntilPredictor",
    "Forecast": "capscale.laws.base:Forecast",
    "METHODS": "capscale.laws.registry:METHODS",
    "make_predictor": "capscale.laws.registry:make_predictor",
    "run_backtest": "capscale.laws.backtest:run_backtest",
    "summary_table": "capscale.laws.backtest:summary_table",
    "save_predictor": "capscale.laws.persist:save_predictor",
    "load_predictor": "capscale.laws.persist:load_predictor",
    # trends: shapes of curves with evidence
    "analyse_ladder": "capscale.trends:analyse_ladder",
    # the results store and the scoring side (these need the [eval] extra: torch, transformers, lm-eval)
    "ResultsStore": "capscale.store:ResultsStore",
    "evaluate": "capscale.evaluate:evaluate",
    "sample_checkpoints": "capscale.sampling:sample_checkpoints",
    "ingest_lm_eval": "capscale.ingest:ingest_lm_eval",
    "score": "capscale.inloop:score",
    "CapscaleError": "capscale.errors:CapscaleError",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, _, attribute = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
