"""How long the default forecast takes: ``auto`` with 1000 bootstrap resamples for 8 tasks (issue 11
target: < 60 s on 2 cores), beside two-step alone (issue 4's workload, target < 30 s).

Workloads:
- openlm: the OpenLM over-training testbed (RedPajama family, 35 runs, final checkpoints only), 8
  downstream tasks of Gadre et al.'s 17-task subset as top-1 error, through the C4 validation loss;
- olmo-like: capscale.synthetic.olmo_like_ladder (16 runs of 4 sizes x 4 token multipliers, 12
  checkpoints each, 8 tasks with their own bpb), the design of the OLMo model-ladder paper.
``auto`` runs every candidate through the ladder's rolling-origin backtests, refits the winner with
its bootstrap and calibrates it (another rolling-origin pass with 100 resamples per origin).

    python evals/bench/fit_speed.py [--n-boot 1000] [--out results/bench/fit_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed

ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict:
    """Where it ran (no torch: the forecasting side does not load it)."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}

OPENLM_TASKS = ["arc_easy", "boolq", "copa", "hellaswag_zeroshot", "lambada_openai", "piqa", "winograd",
                "commonsense_qa"]


def openlm_workload():
    from capscale.ladder import load_ladder

    table = load_ladder(ROOT / "results/ladders/openlm_overtraining.csv")
    table = table[table["family"] == "openlm-rpj"]
    err = table[table["task"].isin(OPENLM_TASKS) & (table["metric"] == "acc")].assign(metric="err")
    err["value"] = 1.0 - err["value"]  # Gadre et al. forecast top-1 error
    ladder = pd.concat([table, err], ignore_index=True)
    return ladder, OPENLM_TASKS, "err", "loss", "loss:c4_val"


def olmo_workload():
    from capscale.synthetic import olmo_like_ladder

    ladder, _ = olmo_like_ladder(seed=0)
    train = ladder[~ladder["model"].isin(["7B-4T", "13B-5T"])].reset_index(drop=True)
    return train, sorted(train["task"].unique()), "acc", "bpb_correct", None


def fit_one(method: str, ladder, task, metric, loss, loss_task, n_boot: int):
    from capscale.laws.registry import MethodOptions, make_predictor

    warnings.simplefilter("ignore")
    options = MethodOptions(n_boot=n_boot, step2="exponential_loss" if metric == "err" else "sigmoid_loss")
    p = make_predictor(method, options).fit(ladder, task, metric, loss, loss_task=loss_task)
    return task, getattr(p, "method_used_", method), len(p.boot_fits_), p.n_boot_failed_


def timed(method, workload, n_boot: int, jobs: int):
    ladder, tasks, metric, loss, loss_task = workload
    start = time.perf_counter()
    if jobs == 1:
        results = [fit_one(method, ladder, t, metric, loss, loss_task, n_boot) for t in tasks]
    else:
        results = Parallel(n_jobs=jobs)(delayed(fit_one)(method, ladder, t, metric, loss, loss_task, n_boot)
                                        for t in tasks)
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "results/bench/fit_speed.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    report = {"n_boot": args.n_boot, "targets": {"auto, 8 tasks": "< 60 s on 2 cores", "two-step, 8 tasks": "< 30 s"},
              "runs": []}
    for name, workload in (("openlm", openlm_workload()), ("olmo-like", olmo_workload())):
        for method in ("two-step", "auto"):
            seconds, results = timed(method, workload, args.n_boot, cores)
            run = {"workload": name, "method": method, "tasks": len(results), f"seconds_{cores}_workers": round(seconds, 2),
                   "chosen": {t: m for t, m, _, _ in results},
                   "bootstrap_refits": sum(n for _, _, n, _ in results), "failed": sum(f for _, _, _, f in results)}
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    report["machine"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
