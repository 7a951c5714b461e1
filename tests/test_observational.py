"""Cross-family forecasting (issue 16): on synthetic families drawn from a known latent model the
predictor recovers the shared slope and the family efficiencies, its intervals cover, a family
without models of its own gets a wider interval, held-out rows never reach the fit, and bad tables
get a clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.errors import CapscaleError
from capscale.laws.backtest import RECORD_KEYS, run_backtest, summary_table
from capscale.laws.capabilities import (
    ObservationalError,
    benchmark_matrix,
    fit_family_lines,
    impute_low_rank,
    suite_weights,
)
from capscale.laws.observational import ObservationalPredictor
from capscale.laws.persist import load_predictor, save_predictor
from capscale.laws.registry import METHODS, MethodOptions

SLOPE = 0.8  # latent capability per e-fold of compute
TASKS = 10


def sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


def synthetic_families(seed: int, efficiencies=None, n_models: int = 5, noise: float = 0.01, spread: float = 0.1,
                       n_families: int = 6):
    """A ladder table of families from a known one-dimensional latent model: capability =
    SLOPE * (ln C - c0 + efficiency_family) + N(0, spread); each benchmark = chance + (1 - chance)
    * sigmoid(w * capability + a) + N(0, noise). Returns (table, truth)."""
    rng = np.random.default_rng(seed)
    if efficiencies is None:
        efficiencies = rng.normal(0.0, 1.0, n_families)
    chance = np.array([0.25, 0.5, 0.0, 0.25, 0.5, 0.0, 0.25, 0.25, 0.5, 0.0])[:TASKS]
    w = rng.uniform(0.6, 1.2, TASKS)
    a = rng.uniform(-0.8, 0.8, TASKS)
    rows, latent = [], {}
    for f, efficiency in enumerate(efficiencies):
        start = rng.uniform(44.0, 46.0)
        for m, log_c in enumerate(np.linspace(start, start + 3.0, n_models)):
            family, model = f"fam{f}", f"fam{f}-m{m}"
            s = SLOPE * (log_c - 46.5 + efficiency) + rng.normal(0.0, spread)
            latent[(family, model)] = s
            flops = float(np.exp(log_c))
            params = float(np.sqrt(flops / 120.0))
            values = chance + (1.0 - chance) * sigmoid(w * s + a) + rng.normal(0.0, noise, TASKS)
            for t in range(TASKS):
                rows.append({"family": family, "model": model, "params": params, "tokens": 20.0 * params,
                             "flops": flops, "step": np.nan, "task": f"task{t}", "metric": "acc",
                             "value": float(np.clip(values[t], 0.0, 1.0)), "chance": chance[t]})
    truth = {"efficiency": pd.Series({f"fam{f}": e for f, e in enumerate(efficiencies)}), "latent": latent}
    return pd.DataFrame(rows), truth


def without(table: pd.DataFrame, models) -> pd.DataFrame:
    return table[~table["model"].isin(list(models))].reset_index(drop=True)


def target_of(table: pd.DataFrame, model: str) -> dict:
    row = table[table["model"] == model].iloc[0]
    return {"params": row["params"], "tokens": row["tokens"], "flops": row["flops"]}


def actual(table: pd.DataFrame, model: str, task: str) -> float:
    return float(table[(table["model"] == model) & (table["task"] == task)]["value"].iloc[0])


# --- the pieces ------------------------------------------------------------------------------

def test_imputation_recovers_missing_cells_of_a_low_rank_matrix():
    """Block-missing cells (one family never ran a suite) come back close to the truth, far closer
    than column means, and observed cells are untouched."""
    rng = np.random.default_rng(0)
    truth = np.outer(rng.normal(0, 1, 30), rng.uniform(0.5, 1.5, 12)) + np.outer(rng.normal(0, 0.4, 30),
                                                                                   rng.normal(0, 1, 12))
    observed = truth + rng.normal(0, 0.02, truth.shape)
    values = observed.copy()
    values[:10, :6] = np.nan  # a block: ten models never ran six benchmarks
    values[rng.random(values.shape) < 0.1] = np.nan
    missing = np.isnan(values)
    filled = impute_low_rank(values, rank=2)
    assert np.array_equal(filled[~missing], values[~missing])
    error = np.sqrt(np.mean((filled[missing] - truth[missing]) ** 2))
    column_means = np.broadcast_to(np.nanmean(values, axis=0), values.shape)
    baseline = np.sqrt(np.mean((column_means[missing] - truth[missing]) ** 2))
    assert error < 0.2 * baseline


def test_random_effects_shrink_a_family_with_few_models_towards_the_population():
    """Empirical Bayes: a one-model family's offset moves towards the population mean, a family with
    many models keeps its own; a new family gets the population mean and the largest spread."""
    rng = np.random.default_rng(1)
    offsets = {"a": -1.0, "b": 0.0, "c": 1.0, "d": 0.5, "lone": 2.0}
    sizes = {"a": 6, "b": 6, "c": 6, "d": 6, "lone": 1}
    x, s, g = [], [], []
    for family, n in sizes.items():
        xs = np.linspace(-1, 1, n) if n > 1 else np.array([0.0])
        x += list(xs)
        s += list(0.7 * xs + offsets[family] + rng.normal(0, 0.3, n))
        g += [family] * n
    x, s, g = np.array(x), np.array(s)[:, None], np.array(g)
    lines = fit_family_lines(s, x, g)
    assert lines.slope[0] == pytest.approx(0.7, abs=0.15)
    lone = g == "lone"
    mean_lone, var_lone = lines.offset_posterior(s[lone], x[lone])
    raw_lone = float(s[lone, 0][0] - lines.slope[0] * x[lone][0])
    assert abs(mean_lone[0] - lines.mu[0]) < abs(raw_lone - lines.mu[0])  # shrunk towards mu
    many = g == "a"
    mean_many, var_many = lines.offset_posterior(s[many], x[many])
    raw_many = float(np.mean(s[many, 0] - lines.slope[0] * x[many]))
    assert mean_many[0] == pytest.approx(raw_many, abs=0.1)  # six models: barely shrunk
    mean_new, var_new = lines.offset_posterior(np.zeros((0, 1)), np.zeros(0))
    assert mean_new[0] == pytest.approx(lines.mu[0])
    assert var_new[0] > var_lone[0] > var_many[0]


def test_a_suite_of_many_subjects_weighs_one_benchmark():
    weights = suite_weights(["arc_easy", "arc_challenge", "piqa"] + [f"hendrycksTest-s{i}" for i in range(16)])
    assert weights[2] == 1.0 and weights[0] == pytest.approx(1 / np.sqrt(2))
    assert np.sum(weights[3:] ** 2) == pytest.approx(1.0)  # 16 subjects: the variance of one column


# --- recovery on a known latent model --------------------------------------------------------

def test_recovers_the_shared_slope_and_the_family_efficiencies():
    efficiencies = np.array([-1.5, -0.6, 0.0, 0.5, 1.0, 1.6])
    table, truth = synthetic_families(3, efficiencies)
    p = ObservationalPredictor(family="fam0", n_boot=0, calibrate=False, score_link="sigmoid").fit(table, "task0")
    estimated = p.efficiencies()
    true = truth["efficiency"]
    assert np.max(np.abs((estimated - estimated.mean()) - (true - true.mean()))) < 0.25  # e-folds of compute
    cap = p.capabilities_
    scores = cap.scores()[:, 0]
    latent = np.array([truth["latent"][key] for key in zip(cap.matrix.models["family"], cap.matrix.models["model"])])
    # PC1 is the latent capability up to scale: the slope per standard deviation is scale-free
    assert cap.full.lines.slope[0] / scores.std() == pytest.approx(SLOPE / latent.std(), rel=0.1)


def test_intervals_cover_at_the_stated_level_over_seeds():
    """Each seed draws new family efficiencies and benchmarks; every family's largest model is
    forecast from everything else. Bootstrap + offset posterior + residuals, not yet calibrated, of the
    latent model alone (blend=1: the blend's intervals hold only once calibrated on the blended
    held-out points, which the public backtests measure, 91% at 90%)."""
    inside90, inside50, widths = [], [], []
    for seed in range(8):
        table, _ = synthetic_families(100 + seed)
        for family in ("fam1", "fam4"):
            largest = f"{family}-m4"
            train = without(table, [largest])
            for task in ("task0", "task3", "task7"):
                p = ObservationalPredictor(family=family, n_boot=100, calibrate=False, score_link="sigmoid", seed=seed,
                                           blend=1.0)
                f = p.fit(train, task).predict(**target_of(table, largest))
                y = actual(table, largest, task)
                inside90.append(f.lower <= y <= f.upper)
                lo50, hi50 = f.interval(0.5)
                inside50.append(lo50 <= y <= hi50)
                widths.append(f.upper - f.lower)
    assert 0.8 <= np.mean(inside90) <= 1.0
    assert 0.3 <= np.mean(inside50) <= 0.8  # not merely wide: the 50% interval misses about half
    assert np.median(widths) < 0.25


def test_a_family_without_models_of_its_own_gets_a_wider_interval():
    table, _ = synthetic_families(7)
    family, target = "fam2", "fam2-m4"
    with_own = ObservationalPredictor(family=family, n_boot=200, calibrate=False, score_link="sigmoid")
    with_own.fit(without(table, [target]), "task0")
    new = ObservationalPredictor(family=family, n_boot=200, calibrate=False, score_link="sigmoid")
    new.fit(table[table["family"] != family], "task0")
    a, b = with_own.predict(**target_of(table, target)), new.predict(**target_of(table, target))
    assert new.n_own_ == 0 and with_own.n_own_ == 4
    assert (b.upper - b.lower) > 1.5 * (a.upper - a.lower)
    assert any("population offset" in w for w in b.warnings)


def test_a_saved_fit_forecasts_the_same(tmp_path):
    table, _ = synthetic_families(5)
    p = ObservationalPredictor(family="fam1", n_boot=50, calibrate=False, score_link="sigmoid")
    p.fit(without(table, ["fam1-m4"]), "task2")
    loaded = load_predictor(save_predictor(p, tmp_path / "fit.json"))
    target = target_of(table, "fam1-m4")
    a, b = p.predict(**target), loaded.predict(**target)
    assert (b.value, b.lower, b.upper) == pytest.approx((a.value, a.lower, a.upper))


# --- backtests: the record contract, no leak, auto ------------------------------------------------

def test_backtest_forecasts_a_family_with_no_other_model_and_keeps_the_contract():
    table, _ = synthetic_families(11, n_families=4)
    table = table[~table["model"].isin(["fam3-m0", "fam3-m1", "fam3-m2", "fam3-m3"])]  # fam3: one model
    sigmoid = MethodOptions(n_boot=50, extra={"score_link": "sigmoid"})  # the families' true link
    outcome = run_backtest(table, "model in ['fam0-m4', 'fam3-m4']", method="observational", tasks=["task1"],
                           options=sigmoid)
    records = {r.model: r.contract() for r in outcome.records}
    assert set(records["fam3-m4"]) == set(RECORD_KEYS)
    assert records["fam3-m4"]["predicted"] is not None and records["fam3-m4"]["method_used"] == "observational"
    assert "0 own model" in records["fam3-m4"]["form_used"] and "4 own model" in records["fam0-m4"]["form_used"]
    width = {m: r["upper"] - r["lower"] for m, r in records.items()}
    assert width["fam3-m4"] > width["fam0-m4"]
    calibrated = outcome.predictors[("task1", "fam0")]  # widened by every family's held-out largest models
    assert calibrated.calibration_ is not None and calibrated.calibration_.n_points >= 4


def test_held_out_scores_never_reach_the_fit():
    """Holding out only one task of a model must not let its other tasks place it on the capability
    scale: the forecast equals the one with the whole model held out, whatever its other scores."""
    table, _ = synthetic_families(13)
    whole = summary_table(run_backtest(table, "model == 'fam3-m4'", method="observational", tasks=["task0"],
                                       n_boot=50, calibrate=False))
    poisoned = table.copy()
    other = (poisoned["model"] == "fam3-m4") & (poisoned["task"] != "task0")
    poisoned.loc[other, "value"] = 1.0  # its other scores, absurdly high
    one_task = summary_table(run_backtest(poisoned, "model == 'fam3-m4' and task == 'task0'",
                                          method="observational", n_boot=50, calibrate=False))
    assert one_task["predicted"].iloc[0] == pytest.approx(whole["predicted"].iloc[0])
    assert one_task["upper"].iloc[0] == pytest.approx(whole["upper"].iloc[0])


def test_auto_weighs_observational_and_forecasts_a_family_too_small_for_its_own_law():
    """With several families, auto compares observational with the per-family candidates over the ladder's
    tasks (its gate), and a family with no model of its own left is forecast across families, not skipped."""
    table, _ = synthetic_families(17, n_models=4, n_families=4)
    table = without(table, ["fam3-m0", "fam3-m1", "fam3-m2"])  # fam3: one model, the held-out one
    outcome = run_backtest(table, "model in ['fam2-m3', 'fam3-m3']", method="auto", tasks=["task0", "task4"],
                           n_boot=30)
    for task in ("task0", "task4"):
        scores = outcome.predictors[(task, "fam2")].selection_scores_
        assert "observational" in scores and "carry-forward" in scores
    small = [r for r in outcome.records if r.family == "fam3"]
    assert len(small) == 2
    assert all(r.method_used == "auto -> observational" and np.isfinite(r.predicted) for r in small)


def test_registry_entry():
    method = METHODS["observational"]
    assert method.pools_families and method.predictor_class == "ObservationalPredictor"


# --- bad input -------------------------------------------------------------------------------------

def test_one_family_is_a_clear_error():
    table, _ = synthetic_families(2)
    one = table[table["family"] == "fam0"]
    with pytest.raises(ObservationalError, match="pools model families; the table has 1"):
        ObservationalPredictor(family="fam0", n_boot=0, calibrate=False).fit(one, "task0")


def test_benchmarks_without_overlap_are_a_clear_error():
    table, _ = synthetic_families(2)
    split = table[((table["family"] == "fam0") & table["task"].isin(["task0", "task1"]))
                  | ((table["family"] == "fam1") & table["task"].isin(["task2", "task3"]))]
    with pytest.raises(ObservationalError, match="no 'acc' benchmark is shared by 2 families"):
        benchmark_matrix(split, "acc")


def test_models_without_compute():
    """Models with no tokens (no compute) still shape the capability scale, with a warning; a target
    without compute, or a table where too few models have one, is an error."""
    table, _ = synthetic_families(4)
    partial = table.copy()
    unknown = partial["family"] == "fam3"
    partial.loc[unknown, ["tokens", "flops"]] = np.nan
    p = ObservationalPredictor(family="fam3", n_boot=20, calibrate=False, score_link="sigmoid").fit(partial, "task0")
    assert any("without compute" in w for w in p.fit_warnings_) and p.n_own_ == 0
    assert np.isfinite(p.predict(flops=3e20).value)
    with pytest.raises(CapscaleError, match="needs the target's flops"):
        p.predict(params=1e9)
    none = table.assign(tokens=np.nan, flops=np.nan)
    with pytest.raises(ObservationalError, match="known compute"):
        ObservationalPredictor(n_boot=0, calibrate=False).fit(none, "task0")


def test_cli_backtest_on_one_family_says_why(tmp_path, capsys):
    table, _ = synthetic_families(2)
    path = tmp_path / "one.csv"
    table[table["family"] == "fam0"].to_csv(path, index=False)
    code = main(["backtest", str(path), "--holdout", "model == 'fam0-m4'", "--method", "observational",
                 "--task", "task0", "--n-boot", "20", "--jobs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error: no held-out model could be forecast" in err
    assert "pools model families" in err


def test_cli_backtest_writes_records(tmp_path, capsys):
    table, _ = synthetic_families(9, n_families=4)
    path = tmp_path / "families.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "records.json"
    code = main(["backtest", str(path), "--holdout", "model in ['fam0-m4', 'fam1-m4']", "--method",
                 "observational", "--task", "task5", "--n-boot", "30", "--jobs", "1", "--no-progress", "--no-calibrate",
                 "--json", str(out), "--plot", str(tmp_path / "plots")])
    assert code == 0
    records = json.loads(out.read_text())
    assert len(records) == 2 and all(set(r) == set(RECORD_KEYS) and r["predicted"] is not None for r in records)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2


def test_cli_fit_and_predict_a_family_from_the_pooled_table(tmp_path, capsys):
    table, _ = synthetic_families(6, n_families=4)
    path = tmp_path / "families.csv"
    without(table, ["fam2-m4"]).to_csv(path, index=False)
    fit = tmp_path / "fit.json"
    base = ["fit", str(path), "--task", "task3", "--method", "observational", "--out", str(fit), "--n-boot", "30",
            "--no-calibrate", "--no-progress"]
    assert main(base) == 2 and "name the target's with --family" in capsys.readouterr().err
    assert main(base + ["--family", "fam2"]) == 0
    assert "compute efficiency" in capsys.readouterr().out
    flops = target_of(table, "fam2-m4")["flops"]
    assert main(["predict", str(fit), "--flops", f"{flops:g}"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("task3 acc: ") and "observational" in printed


def test_a_task_with_several_rows_per_model_is_left_out_or_named():
    """0- and 5-shot rows under one task name: the capability scale leaves the task out (with a
    warning) and forecasting it is the same clear error as for the per-family methods."""
    table, _ = synthetic_families(8, n_families=3)
    twice = table[table["task"] == "task0"].assign(value=lambda t: t["value"] * 0.9, num_fewshot=5)
    table = pd.concat([table.assign(num_fewshot=0), twice], ignore_index=True)
    assert "task0" not in benchmark_matrix(table, "acc").tasks
    p = ObservationalPredictor(family="fam0", n_boot=0, calibrate=False, score_link="sigmoid").fit(table, "task1")
    assert any("task0" in w and "num_fewshot" in w for w in p.fit_warnings_)
    with pytest.raises(CapscaleError, match="several rows"):
        ObservationalPredictor(family="fam0", n_boot=0, calibrate=False, score_link="sigmoid").fit(table, "task0")


def test_on_public_families_the_blended_forecast_beats_both_naive_anchors():
    """lm_eval_2023 (BLOOM, LLaMA, OPT, XGLM with models of their own left): each family's largest model
    held out and forecast on every shared benchmark it reports. The pooled forecast blended with the
    family's previous model (w from the table's own internal backtests) must beat carry-forward and the
    per-family line in log compute on average (point forecasts; the interval backtest with every
    method is evals/backtests/observational.py)."""
    from capscale.ladder import final_checkpoints, load_ladder

    table = load_ladder("results/ladders/lm_eval_2023.csv")
    acc = table[table["metric"] == "acc"]
    shared = set(benchmark_matrix(table, "acc").tasks)
    errors = {"observational": [], "carry-forward": [], "line": []}
    for family, rows in acc.groupby("family"):
        target = rows.sort_values("flops")["model"].iloc[-1]
        train = table[table["model"] != target].reset_index(drop=True)
        held = acc[acc["model"] == target]
        own = final_checkpoints(train[(train["family"] == family) & (train["metric"] == "acc")])
        for task in sorted(shared & set(held["task"])):
            mine = own[own["task"] == task].sort_values("flops")
            if len(mine) < 2:
                continue
            actual, flops = float(held.loc[held["task"] == task, "value"].iloc[-1]), float(held["flops"].iloc[0])
            p = ObservationalPredictor(family=family, n_boot=0, calibrate=False).fit(train, task)
            line = np.polyval(np.polyfit(np.log(mine["flops"]), mine["value"], 1), np.log(flops))
            errors["observational"].append(abs(p.predict(flops=flops).value - actual))
            errors["carry-forward"].append(abs(float(mine["value"].iloc[-1]) - actual))
            errors["line"].append(abs(float(np.clip(line, 0, 1)) - actual))
    mae = {name: float(np.mean(e)) for name, e in errors.items()}
    assert len(errors["observational"]) >= 200
    assert mae["observational"] < mae["carry-forward"] and mae["observational"] < mae["line"], mae
