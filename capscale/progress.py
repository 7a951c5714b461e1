"""Signs of life for long fits: a bar over tasks and a counter of bootstrap refits (tqdm, on stderr).

Predictors do not take a progress argument (it is not a hyper-parameter): the bootstrap reports
its refits to whatever counter is active in this context (``refit_counter``), and callers that
want bars open one around their work with ``task_bar``. Worker processes have none, so parallel
backtests show the bar over tasks only.
"""

from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager

_REFITS: contextvars.ContextVar = contextvars.ContextVar("capscale_refit_counter", default=None)


def report_refits(n: int) -> None:
    """Called by the bootstrap every batch of refits; a no-op without an active counter."""
    counter = _REFITS.get()
    if counter is not None:
        counter(n)


class _Bar:
    def __init__(self, bar):
        self.bar = bar

    def task_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


@contextmanager
def task_bar(total: int, desc: str, enabled: bool = True, nested: bool = True):
    """A bar over ``total`` tasks; with ``nested`` also a counter of bootstrap refits beneath it."""
    if not enabled:
        yield _Bar(None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="task", file=sys.stderr, leave=False, dynamic_ncols=True)
    refits = tqdm(desc="bootstrap refits", unit="refit", file=sys.stderr, leave=False, position=1,
                  dynamic_ncols=True) if nested else None
    token = _REFITS.set(refits.update) if refits is not None else None
    try:
        yield _Bar(bar)
    finally:
        if token is not None:
            _REFITS.reset(token)
            refits.close()
        bar.close()


@contextmanager
def refit_counter(desc: str = "bootstrap refits", enabled: bool = True):
    """A counter of bootstrap refits alone (a single fit: ``capscale fit``)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    refits = tqdm(desc=desc, unit="refit", file=sys.stderr, leave=False, dynamic_ncols=True)
    token = _REFITS.set(refits.update)
    try:
        yield
    finally:
        _REFITS.reset(token)
        refits.close()
