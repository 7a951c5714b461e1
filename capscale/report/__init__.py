"""``capscale report``: one HTML page (and report.json) from a ladder — every fit, forecast, trend and
decision, and which tasks are predictable at all.

Modules, one concern each: ``targets`` (parsing --target), ``triage`` (checkpoint noise and the verdict,
pure functions), ``collect`` (runs the forecasting and trend APIs and gathers the numbers into the
report dict), ``figures`` (PNGs), ``decisions`` (the seam to ``capscale decide``), ``html`` (renders the
dict), ``command`` (the CLI entry).
"""
