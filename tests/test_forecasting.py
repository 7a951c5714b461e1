"""Issue 11's forecaster: step 2's ceiling, step 1 chosen by rolling origin, short ladders, auto, and
intervals that hold — on synthetic ladders with known truth and on the shipped public ladders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capscale.errors import CapscaleError
from capscale.laws.auto import AutoPredictor
from capscale.laws.fitting import fit_form, refit_many
from capscale.laws.forms import FORMS, normalise_inputs
from capscale.laws.direct import CarryForwardPredictor, DirectPredictor
from capscale.laws.twostep import TwoStepPredictor
from capscale.laws.rolling import origin_splits
from capscale.synthetic import olmo_like_ladder

# --- new forms recover known parameters ------------------------------------------------------

NEW_CASES = {
    "chinchilla_shared": ({"E": 1.6, "a": -0.8, "b": -1.1, "alpha": 0.31}, {}, 0.002),
    "exponential_loss_pinned": ({"kappa": -1.0, "gamma": 0.7, "e0": 0.05, "zc": -3.0}, {"e0", "zc"}, 0.003),
    "linear_compute": ({"c0": 0.45, "c1": 0.04}, {}, 0.004),
    "sigmoid_params": ({"a": 0.85, "k": 1.1, "x0": 0.4, "b": 0.25}, {"b"}, 0.005),
}


def raw_inputs(form):
    if form.inputs == ("params", "tokens"):
        n = np.repeat(np.geomspace(1e7, 1e9, 5), 4)
        return {"params": n, "tokens": n * np.tile([10, 20, 60, 200], 5)}
    if form.inputs == ("loss",):
        return {"loss": np.linspace(2.0, 5.0, 30)}
    return {form.inputs[0]: np.geomspace(1e15, 1e21, 25)}


@pytest.mark.parametrize("name", sorted(NEW_CASES))
def test_new_forms_recover_known_parameters(name):
    form = FORMS[name]
    truth, fixed_names, noise = NEW_CASES[name]
    raw = raw_inputs(form)
    z, reference = normalise_inputs(form, raw)
    clean = form(truth, z)
    rng = np.random.default_rng(7)
    y = clean * np.exp(rng.normal(0, noise, clean.shape)) if form.space == "log" else clean + rng.normal(0, noise, clean.shape)
    fit = fit_form(form, raw, y, fixed={p: truth[p] for p in fixed_names}, reference=reference)
    for p, value in truth.items():
        assert fit.params[p] == pytest.approx(value, abs=0.08 + 0.1 * abs(value)), p


def test_batched_refits_reach_the_same_optimum_as_one_at_a_time_fits():
    """Bootstrap refits are solved together; on each resample they must find what fit_form finds."""
    form = FORMS["chinchilla"]
    raw = raw_inputs(form)
    truth = {"E": 1.7, "a": -1.0, "alpha": 0.34, "b": -1.2, "beta": 0.28}
    z, _ = normalise_inputs(form, raw)
    rng = np.random.default_rng(3)
    y = form(truth, z) * np.exp(rng.normal(0, 0.003, len(z["params"])))
    full = fit_form(form, raw, y)
    weights = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=20).astype(float)
    batched = refit_many(full, raw, y, weights)
    for w, fit in zip(weights, batched):
        rows = np.repeat(np.arange(len(y)), w.astype(int))
        alone = fit_form(form, {k: v[rows] for k, v in raw.items()}, y[rows], starts=[full.params],
                         reference=full.reference)
        assert fit is not None and fit.objective <= alone.objective * (1 + 1e-6) + 1e-12
        target = {"params": np.array([5e9]), "tokens": np.array([1e11])}
        assert fit.predict(**target)[0] == pytest.approx(alone.predict(**target)[0], rel=2e-3)


# --- step 2: where accuracy ends ---------------------------------------------------------------

def low_ceiling_ladder(seed: int = 0) -> pd.DataFrame:
    """Accuracy that truly rises to ~0.94 at loss 0, observed only on the foot of its sigmoid (0.27-0.37)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, n in enumerate(np.geomspace(2e7, 6e8, 6)):
        for step in range(1, 11):
            d = 20 * n * step / 10
            loss = 0.7 + 30 * n ** -0.25 + 40 * d ** -0.25
            acc = 0.25 + 0.75 / (1 + np.exp(4.0 * (loss - 0.6))) + rng.normal(0, 0.004)
            base = {"family": "f", "model": f"m{k}", "params": n, "tokens": d, "flops": 6 * n * d, "step": step,
                    "task": "t", "chance": 0.25}
            rows += [{**base, "metric": "bpb_correct", "value": loss}, {**base, "metric": "acc", "value": acc}]
    return pd.DataFrame(rows)


def test_the_anchor_and_fixed_ceiling_move_step_2_toward_one():
    ladder = low_ceiling_ladder()
    fits = {c: TwoStepPredictor(step1="power_compute", ceiling=c, n_boot=0, calibrate=False).fit(
        ladder, "t", "acc", "bpb_correct") for c in ("fit", "anchor", "fixed")}
    at_zero = {c: float(p.step2_curve([0.0])[0]) for c, p in fits.items()}
    assert at_zero["anchor"] > at_zero["fit"] + 0.2, at_zero  # the foot of the sigmoid says nothing of its top
    assert abs(at_zero["anchor"] - 0.94) < 0.05  # the truth at loss 0 (its ceiling is 1 as the loss falls further)
    assert float(fits["fixed"].step2_curve([-50.0])[0]) == pytest.approx(1.0, abs=1e-9)  # upper asymptote = ceiling
    assert fits["fixed"].fit_[1].params["a"] == 1.0
    assert TwoStepPredictor(n_boot=0, calibrate=False).fit(ladder, "t", "acc", "bpb_correct").ceiling_mode_ == "anchor"


def test_the_anchor_is_a_squared_residual_that_huber_cannot_clip():
    """Data that saturate near 0.8 resist the anchor (L = 0, acc = 1). Under a Huber threshold sized for
    data residuals (1e-2) the anchor's large residual counts only linearly and the curve barely moves;
    as a squared residual (how TwoStepPredictor adds it) one point bends it toward 1."""
    form = FORMS["sigmoid_loss"]
    rng = np.random.default_rng(0)
    loss = np.linspace(0.6, 1.6, 60)
    acc = 0.25 + 0.55 / (1 + np.exp(5 * (loss - 1.1))) + rng.normal(0, 0.004, len(loss))
    reference = normalise_inputs(form, {"loss": loss})[1]
    free = fit_form(form, {"loss": loss}, acc, fixed={"b": 0.25}, reference=reference)
    x, y, w = np.append(loss, 0.0), np.append(acc, 1.0), np.append(np.ones(60), 1.0)
    at_zero = {}
    for name, delta in (("squared", np.append(np.full(60, 1e-2), np.inf)), ("huber", 1e-2)):
        fit = fit_form(form, {"loss": x}, y, fixed={"b": 0.25}, delta=delta, weights=w, reference=reference,
                       extra_starts=[free.params])
        at_zero[name] = float(fit.predict(loss=np.array([0.0]))[0])
    without = float(free.predict(loss=np.array([0.0]))[0])
    assert at_zero["huber"] - without < 0.02 < 0.1 < at_zero["squared"] - without


def test_a_ceiling_column_caps_accuracy():
    ladder = low_ceiling_ladder().assign(ceiling=0.9)
    p = TwoStepPredictor(step1="power_compute", ceiling="fixed", n_boot=0, calibrate=False).fit(
        ladder, "t", "acc", "bpb_correct")
    assert float(p.step2_curve([-50.0])[0]) == pytest.approx(0.9, abs=1e-6)


def test_the_anchor_is_refused_for_another_tasks_loss():
    ladder = low_ceiling_ladder()
    other = ladder.assign(task="val")
    both = pd.concat([ladder, other[other["metric"] == "bpb_correct"]], ignore_index=True)
    with pytest.raises(CapscaleError, match="own correct-answer loss"):
        TwoStepPredictor(ceiling="anchor", n_boot=0).fit(both, "t", "acc", "bpb_correct", loss_task="val")
    auto = TwoStepPredictor(n_boot=0, calibrate=False).fit(both, "t", "acc", "bpb_correct", loss_task="val")
    assert auto.ceiling_mode_ == "fit"


def test_exponential_fixed_ceiling_passes_through_it_at_zero_loss():
    ladder = low_ceiling_ladder()
    p = TwoStepPredictor(step1="power_compute", step2="exponential_loss", ceiling="fixed", n_boot=0,
                         calibrate=False).fit(ladder, "t", "acc", "bpb_correct")
    assert float(p.step2_curve([0.0])[0]) == pytest.approx(1.0, abs=1e-9)


# --- step 1 chosen by rolling origin --------------------------------------------------------

def law_ladder(kind: str, seed: int = 0) -> pd.DataFrame:
    """Final-checkpoint-only ladders whose loss follows one law: (N, D) with different exponents, or
    compute alone (every run at the same tokens per parameter)."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = np.geomspace(1e7, 1e9, 6)
    multipliers = [5, 20, 80, 320] if kind == "chinchilla" else [20]
    for i, n in enumerate(sizes):
        for m in multipliers:
            d = n * m
            if kind == "chinchilla":
                loss = 1.2 + 400 * n ** -0.45 + 40 * d ** -0.15
            else:
                loss = 1.5 + 60 * (6 * n * d) ** -0.09
            loss *= np.exp(rng.normal(0, 0.002))
            base = {"family": "f", "model": f"m{i}x{m}", "params": n, "tokens": d, "flops": 6 * n * d, "task": "t"}
            rows += [{**base, "metric": "bpb_correct", "value": loss},
                     {**base, "metric": "acc", "value": 0.25 + 0.7 / (1 + np.exp(4 * (loss - 2.5)))}]
    return pd.DataFrame(rows).assign(step=np.nan)


@pytest.mark.parametrize("kind, expected", [("chinchilla", {"chinchilla"}), ("power_compute", {"power_compute"})])
def test_rolling_origin_picks_the_form_that_generated_the_ladder(kind, expected):
    picks = {TwoStepPredictor(n_boot=0, calibrate=False, intermediate=False).fit(
        law_ladder(kind, seed), "t", "acc", "bpb_correct").step1_form_ for seed in range(3)}
    assert picks == expected


def test_origins_hold_out_the_largest_sizes_and_keep_two_sizes_to_fit():
    finals = law_ladder("power_compute")[lambda d: d["metric"] == "acc"]
    splits = origin_splits(finals, 3)
    assert [k for k, _, _ in splits] == [1, 2, 3]
    k, train, test = splits[0]
    assert {m for _, m in test} == {"m5x20"} and len(train) == 5
    assert len(origin_splits(finals.head(3), 3)) == 1  # 3 sizes: one origin (fit on 2)
    assert origin_splits(finals.head(2), 3) == []


# --- short ladders: every method forecasts from 2 or 3 runs ---------------------------------

def short_ladder(n_runs: int) -> pd.DataFrame:
    sizes = np.geomspace(1e8, 1e10, 6)[:n_runs]
    values = [0.30, 0.35, 0.37, 0.45, 0.47, 0.55]
    rows = [{"family": "f", "model": f"m{i}", "params": n, "tokens": 2e11, "flops": 6 * n * 2e11, "step": np.nan,
             "task": "t", "metric": "acc", "value": values[i], "chance": 0.25} for i, n in enumerate(sizes)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_runs", [2, 3])
@pytest.mark.parametrize("cls", [DirectPredictor, CarryForwardPredictor, AutoPredictor])
def test_two_or_three_runs_give_a_forecast_inside_its_interval(cls, n_runs):
    f = cls(n_boot=50).fit(short_ladder(n_runs), "t", "acc", loss=None).predict(params=3e10, tokens=2e11)
    assert np.isfinite(f.value) and f.lower <= f.value <= f.upper and f.upper > f.lower
    assert f.n_points == n_runs and f.form_used


def test_two_runs_span_carry_forward_and_the_line():
    ladder = short_ladder(2)
    line = DirectPredictor(form="linear", n_boot=200).fit(ladder, "t", "acc").predict(params=1e10, tokens=2e11)
    carry = CarryForwardPredictor(n_boot=200).fit(ladder, "t", "acc").predict(params=1e10, tokens=2e11)
    assert carry.value == pytest.approx(0.35)
    slope = 0.05 / np.log(10 ** 0.4)  # per e-fold: the two runs are 10^0.4 apart
    assert line.value == pytest.approx(0.35 + slope * np.log(1e10 / 10 ** 8.4), rel=1e-6)
    assert carry.lower <= 0.35 and carry.upper >= line.value - 1e-9


# --- auto and intervals ----------------------------------------------------------------------

def test_auto_picks_two_step_on_an_olmo_like_ladder_and_says_so():
    ladder, truth = olmo_like_ladder(seed=1, n_tasks=2)
    train = ladder[~ladder["model"].isin(["7B-4T", "13B-5T"])]
    p = AutoPredictor(n_boot=100).fit(train, "task0", "acc", "bpb_correct")
    assert p.method_used_.startswith("two-step")
    f = p.predict(params=7e9, tokens=4e12)
    assert f.method_used == f"auto -> {p.method_used_}" and f.internal_error == pytest.approx(p.internal_errors_[p.method_used_])
    assert "->" in f.form_used and f.n_points == 16
    assert f.lower <= f.value <= f.upper


def misspecified(seed: int) -> tuple[pd.DataFrame, float]:
    """Accuracy whose slope in log size keeps changing (curving up or down by seed), forecast by a line
    3x beyond the largest size: the form is wrong, and more so the further out."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(1e8, 3e9, 7)
    curvature = 0.004 * rng.choice([-1.0, 1.0])

    def truth(n):
        x = np.log(n / 1e8)
        return 0.4 + 0.03 * x + curvature * x ** 2

    value = truth(sizes) + rng.normal(0, 0.01, len(sizes))
    rows = [{"family": "f", "model": f"m{i}", "params": n, "tokens": 2e11, "flops": 6 * n * 2e11, "step": np.nan,
             "task": "t", "metric": "acc", "value": v} for i, (n, v) in enumerate(zip(sizes, value))]
    return pd.DataFrame(rows), truth(1e10) + rng.normal(0, 0.01)


def test_calibration_restores_coverage_where_the_form_is_wrong():
    """A straight line through a curving trend: its t interval covers the truth half the time; widened by
    the ladder's own rolling-origin errors it covers at about the stated 90%."""
    hits = {True: [], False: []}
    for seed in range(40):
        ladder, truth = misspecified(seed)
        for calibrate in (True, False):
            f = DirectPredictor(form="linear", n_boot=200, calibrate=calibrate).fit(ladder, "t", "acc").predict(
                params=1e10, tokens=2e11)
            hits[calibrate].append(f.lower <= truth <= f.upper)
    assert np.mean(hits[False]) <= 0.6
    assert np.mean(hits[True]) >= 0.8


def test_the_point_forecast_is_always_inside_its_interval():
    """Skewed bootstrap draws (the toy ladder's arith, whose full fit sits above most refits) used to
    give a forecast outside its own percentile interval."""
    from capscale.ladder import load_ladder

    ladder = load_ladder("results/toy")
    train = ladder[ladder["model"] != "toy-s5"]
    for task in ("arith", "facts", "override", "copy"):
        for method in (TwoStepPredictor, DirectPredictor):
            f = method(n_boot=100).fit(train, task, "acc", "bpb_correct").predict(params=443232, tokens=8865792)
            for level, (lo, hi) in f.intervals.items():
                assert lo <= f.value <= hi, (task, method.__name__, level)


@pytest.mark.parametrize("name", ["lm_eval_2023.csv", "opt_bloom.csv"])
def test_every_family_with_two_runs_left_gets_a_forecast_for_every_task(name):
    """Hold out each family's largest model: every task of every family that keeps >= 2 runs with that
    task is forecast (inside its interval); the others are forecast only across families (auto ->
    observational) or get a record that says why, never silence."""
    from capscale.ladder import load_ladder
    from capscale.laws.backtest import run_backtest, summary_table
    from capscale.laws.registry import MethodOptions

    ladder = load_ladder(f"results/ladders/{name}")
    every = {"lm_eval_2023.csv": 6, "opt_bloom.csv": 3}[name]  # every k-th task, all families: at test speed
    ladder = ladder[ladder["task"].isin(sorted(ladder["task"].unique())[::every])]
    acc = ladder[ladder["metric"] == "acc"]
    largest = acc.loc[acc.groupby("family")["params"].idxmax(), "model"].unique().tolist()
    outcome = run_backtest(ladder, f"model in {largest}", metric="acc", method="auto", jobs=2,
                           options=MethodOptions(n_boot=20))
    table = summary_table(outcome)
    left = acc[~acc["model"].isin(largest)].groupby(["family", "task"])["model"].nunique()
    held = acc[acc["model"].isin(largest)].groupby(["family", "task"]).size()
    assert len(table) == len(held)  # one record per held-out (family, task)
    for _, r in table.iterrows():
        n_left = int(left.get((r["family"], r["task"]), 0))
        if n_left >= 2 or r["method_used"] == "auto -> observational":
            assert np.isfinite(r["predicted"]), (r["family"], r["task"], r["reason"])
            assert r["lower"] <= r["predicted"] <= r["upper"]
        else:
            assert not np.isfinite(r["predicted"]) and r["reason"], (r["family"], r["task"])


@pytest.mark.parametrize("method", ["auto", "two-step", "direct", "carry-forward"])
def test_saved_fits_of_every_method_predict_the_same(tmp_path, method):
    """capscale fit / predict: the saved predictor (auto: with the candidate it chose inside) gives
    the forecast, intervals and calibration of the fitted one."""
    from capscale.laws.persist import load_predictor, save_predictor
    from capscale.laws.registry import MethodOptions, make_predictor

    ladder = low_ceiling_ladder()
    predictor = make_predictor(method, MethodOptions(n_boot=40)).fit(ladder, "t", "acc", "bpb_correct")
    loaded = load_predictor(save_predictor(predictor, tmp_path / "fit.json"))
    a, b = predictor.predict(params=2e9, tokens=4e10), loaded.predict(params=2e9, tokens=4e10)
    assert (a.value, a.lower, a.upper) == pytest.approx((b.value, b.lower, b.upper))
    assert sorted(a.intervals) == sorted(b.intervals) and a.method_used == b.method_used
    for level in a.intervals:
        assert a.intervals[level] == pytest.approx(b.intervals[level])


def test_step1_average_is_the_equal_weight_mean_of_the_forms_and_survives_a_save(tmp_path):
    """step1="average": every eligible form fitted, forecasts averaged with equal weights; the bootstrap
    refits every member; a saved fit predicts the same."""
    from capscale.laws.persist import load_predictor, save_predictor
    from capscale.laws.step1 import fit_step1, predict_loss

    ladder = law_ladder("chinchilla", 0)
    train = ladder[ladder["params"] < 5e8]
    p = TwoStepPredictor(step1="average", n_boot=40, seed=1).fit(train, "t", "acc", "bpb_correct")
    assert p.step1_form_ == "average"
    assert p.form_used_.startswith("average(chinchilla, chinchilla_shared, power_compute) ->")
    finals = p.data_
    target = dict(params=1e9, tokens=2e10, flops=6e9 * 2e10)
    members = [predict_loss(target, fit_step1(f, finals, finals["loss"].to_numpy(float)))
               for f in ("chinchilla", "chinchilla_shared", "power_compute")]
    f = p.predict(**target)
    assert f.loss == pytest.approx(np.mean(members), rel=1e-9)
    assert min(members) < f.loss < max(members), "the forms disagree here: the average is between them"
    assert all(len(b1.members) == 3 for b1, _ in p.boot_fits_) and len(p.boot_fits_) >= 30
    again = load_predictor(save_predictor(p, tmp_path / "fit.json")).predict(**target)
    assert (again.value, again.lower, again.upper, again.loss) == pytest.approx((f.value, f.lower, f.upper, f.loss))


def test_step1_average_keeps_the_rolling_origin_choice_on_short_ladders():
    from capscale.laws.losslaw import LossLawPredictor
    from capscale.laws.step1 import fit_step1, predict_loss

    ladder = law_ladder("chinchilla", 0)
    short = ladder[ladder["params"] < 1.2e8]  # 3 sizes x 4 token multipliers
    chosen = TwoStepPredictor(step1="auto", n_boot=0, calibrate=False).fit(short, "t", "acc", "bpb_correct")
    averaged = TwoStepPredictor(step1="average", n_boot=0, calibrate=False).fit(short, "t", "acc", "bpb_correct")
    assert averaged.step1_form_ == chosen.step1_form_ != "average"
    law = LossLawPredictor(step1="average", n_boot=20, calibrate=False).fit(ladder, "t", "bpb_correct")
    assert law.form_used_.startswith("average(")
    target = dict(params=2e9, tokens=4e10, flops=6 * 2e9 * 4e10)
    forms = ("chinchilla", "chinchilla_shared", "power_compute")
    y = law.data_["value"].to_numpy(float)
    mean = np.mean([predict_loss(target, fit_step1(f, law.data_, y)) for f in forms])
    assert law.predict(**target).value == pytest.approx(mean, rel=1e-9)
