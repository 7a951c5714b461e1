"""Ray worker setup hook for tests/test_scale.py: the first attempt of one pair kills its worker.

Installed with ``ray.init(runtime_env={"worker_process_setup_hook": "tests.ray_crash.install", ...})``;
``CAPSCALE_TEST_CRASH_PAIR="checkpoint|task|marker"`` names the pair and a marker file. The first
worker that reaches the pair creates the marker and dies with ``os._exit`` after the checkpoint is
loaded and before the pair is written: what a segfault or an OOM kill mid-pair looks like to Ray.
Every later attempt (in a restarted worker, where this hook runs again) finds the marker and scores.
"""

from __future__ import annotations

import os


def install() -> None:
    target = os.environ.get("CAPSCALE_TEST_CRASH_PAIR")
    if not target:
        return
    checkpoint, task_name, marker = target.split("|")
    import capscale.evaluate as evaluate

    real = evaluate.score_task

    def score_task(loaded, name, task, store, **options):
        if (name, task.name) == (checkpoint, task_name):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return real(loaded, name, task, store, **options)

    evaluate.score_task = score_task
