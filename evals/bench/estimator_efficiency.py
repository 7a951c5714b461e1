"""How well adaptive PassUntil sampling estimates tiny pass rates, vs uniform sampling at the same budget.

Items have known pass rates p spaced log-uniformly from --p-max down to --p-min. For each total
budget (samples summed over items) and repetition, the same per-item sample sequences (common
random numbers) are scored two ways (capscale/scoring/simulate.py):

- adaptive: PassUntil (Hu et al. 2023, arXiv:2310.03262) -- capscale.scoring.allocation.plan_round
  rounds until every item has --until successes or --max-samples draws, or the budget is spent;
  estimates: pass_until_estimate (never 0; unsolved items at the Jeffreys posterior mean, or under
  the task's empirical-Bayes Beta prior as `capscale summary` reports it) and unbiased_p (exactly
  unbiased, may be 0);
- uniform: total_budget // n_items samples per item; estimates: Jeffreys (c + 1/2)/(n + 1), the
  empirical-Bayes posterior mean, and raw c/n (Chen et al. 2021's pass@1).

Reported per estimator: (a) mean relative error of the task-level estimate (mean over items vs
the true mean p), (b) median per-item relative error and share of items estimated as exactly 0,
(c) mean |log10(estimate / p)| per item (over non-zero estimates; zeros are infinitely wrong on
a log scale and are counted in (b)), and the same log error by decade of p.

    python evals/bench/estimator_efficiency.py [--reps 200] [--budgets 1e4,1e5,1e6] [--until 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from capscale.estimators import beta_prior, pass_until_estimate, unbiased_p
from capscale.scoring.simulate import simulate_sampling

ROOT = Path(__file__).resolve().parents[2]
ESTIMATORS = [
    ("adaptive", "pass_until_estimate"),
    ("adaptive", "pass_until_estimate (EB prior)"),
    ("adaptive", "unbiased_p"),
    ("uniform", "jeffreys"),
    ("uniform", "EB posterior"),
    ("uniform", "raw c/n"),
]


def score(p, estimates):
    """Per-repetition error summaries for an (reps, items) array of estimates of p."""
    task_rel = np.abs(estimates.mean(axis=1) - p.mean()) / p.mean()
    task_bias = (estimates.mean(axis=1) - p.mean()) / p.mean()
    item_rel = np.abs(estimates - p) / p
    zero = estimates == 0
    with np.errstate(divide="ignore"):
        log_err = np.abs(np.log10(estimates / p))
    decades = np.floor(-np.log10(p) - 1e-9).astype(int)  # 0: (0.1, 1], 1: (0.01, 0.1], ...
    by_decade = {}
    for d in np.unique(decades):
        cols = decades == d
        sub, z = log_err[:, cols], zero[:, cols]
        by_decade[f"1e-{d + 1}..1e-{d}"] = {
            "mean_abs_log10_err_nonzero": float(sub[~z].mean()) if (~z).any() else None,
            "share_zero": float(z.mean()),
        }
    return {
        "task_mean_rel_err": float(task_rel.mean()),
        "task_rel_bias": float(task_bias.mean()),
        "item_median_rel_err": float(np.median(item_rel)),
        "item_share_zero": float(zero.mean()),
        "item_mean_abs_log10_err_nonzero": float(log_err[~zero].mean()) if (~zero).any() else None,
        "by_decade": by_decade,
    }


def run_budget(p, budget, budget_index, args):
    """All repetitions at one total budget; returns estimates and sampling statistics."""
    est = {key: np.empty((args.reps, p.size)) for key in ESTIMATORS}
    spent, reached = np.empty(args.reps), np.empty(args.reps)
    for rep in tqdm(range(args.reps), desc=f"budget {budget:.0e}", leave=False):
        seq = np.random.SeedSequence([args.seed, budget_index, rep])
        common = dict(until=args.until, max_samples=args.max_samples, total_budget=budget,
                      round_size=args.round_size)
        n, c = simulate_sampling(p, strategy="adaptive", rng=np.random.default_rng(seq), **common)
        est["adaptive", "pass_until_estimate"][rep] = pass_until_estimate(n, c, args.until)
        est["adaptive", "pass_until_estimate (EB prior)"][rep] = pass_until_estimate(n, c, args.until, beta_prior(n, c))
        est["adaptive", "unbiased_p"][rep] = unbiased_p(n, c, args.until)
        spent[rep], reached[rep] = n.sum(), (c == args.until).mean()
        # same seed -> same per-item sequences; uniform records are fixed-n (until = inf)
        n, c = simulate_sampling(p, strategy="uniform", rng=np.random.default_rng(seq), **common)
        est["uniform", "jeffreys"][rep] = pass_until_estimate(n, c, np.inf)
        est["uniform", "EB posterior"][rep] = pass_until_estimate(n, c, np.inf, beta_prior(n, c))
        est["uniform", "raw c/n"][rep] = unbiased_p(n, c, np.inf)
    return est, {"adaptive_kept_samples_mean": float(spent.mean()),
                 "adaptive_share_items_reached_until": float(reached.mean()),
                 "uniform_samples_per_item": int(budget // p.size)}


def fmt(x, pct=False):
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def markdown(result):
    cfg = result["config"]
    lines = [
        "# Estimator efficiency: adaptive PassUntil vs uniform sampling",
        "",
        f"{cfg['n_items']} items, p log-uniform from {cfg['p_max']:g} to {cfg['p_min']:g} "
        f"(true task mean {result['true_task_mean']:.4g}); until K={cfg['until']}, "
        f"max_samples B={cfg['max_samples']:,}, round_size {cfg['round_size']}, min_chunk "
        f"{cfg['min_chunk']}; {cfg['reps']} repetitions per budget, seed {cfg['seed']}, common "
        "random numbers (both strategies see the same per-item sample sequences).",
        "",
        "| budget | strategy | estimator | (a) task mean rel. err | task rel. bias | "
        "(b) item median rel. err | items = 0 | (c) item mean abs log10 err |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['budget']:.0e} | {row['strategy']} | {row['estimator']} | "
            f"{fmt(row['task_mean_rel_err'], True)} | {fmt(row['task_rel_bias'], True)} | "
            f"{fmt(row['item_median_rel_err'], True)} | {fmt(row['item_share_zero'], True)} | "
            f"{fmt(row['item_mean_abs_log10_err_nonzero'])} |")
    lines += ["", "(c) is over non-zero estimates only; zeros are counted in 'items = 0'.", "",
              "Mean abs log10 error by decade of p (pass_until_estimate vs uniform Jeffreys):", "",
              "| budget | " + " | ".join(result["decades"]) + " |",
              "|---:|" + "---:|" * len(result["decades"])]
    for budget in cfg["budgets"]:
        rows = {(r["strategy"], r["estimator"]): r for r in result["rows"] if r["budget"] == budget}
        pu = rows["adaptive", "pass_until_estimate"]["by_decade"]
        un = rows["uniform", "jeffreys"]["by_decade"]
        cells = [f"{fmt(pu[d]['mean_abs_log10_err_nonzero'])} vs "
                 f"{fmt(un[d]['mean_abs_log10_err_nonzero'])}" for d in result["decades"]]
        lines.append(f"| {budget:.0e} | " + " | ".join(cells) + " |")
    lines += ["", "Sampling: " + "; ".join(
        f"budget {s['budget']:.0e}: adaptive kept {s['adaptive_kept_samples_mean']:,.0f} samples "
        f"in records, {100 * s['adaptive_share_items_reached_until']:.0f}% of items reached K; "
        f"uniform {s['uniform_samples_per_item']:,} per item" for s in result["sampling"]) + ".",
        "", "Command: `" + result["command"] + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=100)
    parser.add_argument("--p-min", type=float, default=1e-5)
    parser.add_argument("--p-max", type=float, default=1e-1)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--budgets", default="1e4,1e5,1e6", help="comma-separated total budgets")
    parser.add_argument("--until", type=int, default=3, help="PassUntil K")
    parser.add_argument("--max-samples", type=int, default=100_000, help="per-item cap B")
    parser.add_argument("--round-size", type=int, default=1024)
    parser.add_argument("--min-chunk", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results/bench/estimator_efficiency.json"))
    args = parser.parse_args()
    budgets = [int(float(b)) for b in args.budgets.split(",")]
    p = np.geomspace(args.p_max, args.p_min, args.n_items)

    start = time.perf_counter()
    rows, sampling = [], []
    for i, budget in enumerate(tqdm(budgets, desc="budgets")):
        est, stats = run_budget(p, budget, i, args)
        sampling.append({"budget": budget, **stats})
        for strategy, name in ESTIMATORS:
            rows.append({"budget": budget, "strategy": strategy, "estimator": name,
                         **score(p, est[strategy, name])})
    decades = list(rows[0]["by_decade"])
    result = {
        "config": {"n_items": args.n_items, "p_min": args.p_min, "p_max": args.p_max,
                   "reps": args.reps, "budgets": budgets, "until": args.until,
                   "max_samples": args.max_samples, "round_size": args.round_size,
                   "min_chunk": args.min_chunk, "seed": args.seed},
        "true_task_mean": float(p.mean()),
        "rows": rows,
        "decades": decades,
        "sampling": sampling,
        "wall_s": round(time.perf_counter() - start, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "command": "python evals/bench/estimator_efficiency.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    md = markdown(result)
    tmp_md = out.with_suffix(".md.tmp")
    tmp_md.write_text(md)
    tmp_md.replace(out.with_suffix(".md"))
    print(md)


if __name__ == "__main__":
    main()
