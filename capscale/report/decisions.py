"""The seam to ``capscale decide`` (``capscale.decide.report_section``): the report asks it for a section
and renders whatever comes back; it never computes decisions itself.

Contract: a module ``capscale.decide`` exposing ``report_section(ladder, *, metric, figures_dir, seed)``
that returns None (nothing to decide) or a dict with
- ``summary``: one paragraph of text,
- ``table``: a list of flat dicts (one row each; the keys of the first row are the columns),
- ``figures``: paths of PNGs it wrote under ``figures_dir`` (shown in order),
- ``notes``: a list of strings (optional).
The section is asked for only when the ladder has several families (recipes) and the module imports.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def decide_module():
    """``capscale.decide`` with a ``report_section``, or None where this version has none."""
    try:
        from capscale import decide
    except ImportError:
        return None
    return decide if hasattr(decide, "report_section") else None


def decisions_section(ladder: pd.DataFrame, metric: str, figures_dir: Path, seed: int = 0) -> dict | None:
    """The decisions section of the report, or None (one family, or no decide module)."""
    if ladder["family"].nunique() < 2:
        return None
    module = decide_module()
    if module is None:
        return None
    try:
        section = module.report_section(ladder, metric=metric, figures_dir=Path(figures_dir), seed=seed)
    except Exception as exc:  # noqa: BLE001 - the rest of the page stands without it
        return {"summary": "", "table": [], "figures": [], "notes": [], "error": f"{type(exc).__name__}: {exc}"}
    if section is None:
        return None
    return {"summary": str(section.get("summary", "")), "table": list(section.get("table", [])),
            "figures": [str(p) for p in section.get("figures", [])], "notes": list(section.get("notes", [])),
            "error": ""}
