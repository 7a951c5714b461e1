"""PassUntil scaling law (Hu et al. 2023) on synthetic ladders with known c, alpha."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capscale.errors import CapscaleError
from capscale.laws.backtest import RECORD_KEYS, run_backtest
from capscale.laws.fitting import fit_form, value_and_jacobian
from capscale.laws.forms import FORMS, PASS_UNTIL_POWER, normalise_inputs
from capscale.laws.passuntil import PassUntilPredictor, fit_law, law_parameters
from capscale.trends.emergence import accelerated_emergence
from capscale.laws.persist import load_predictor, save_predictor
from capscale.estimators import item_interval, pass_until_estimate

SIZES = np.geomspace(1e8, 3e9, 7)  # the ladder; 1e10 is held out
TARGET = 1e10
ALPHA, LOG_C = 0.6, 13.2  # PU(1e8) ~ 2e-4, PU(3e9) ~ 0.33, PU(1e10) ~ 0.58


def law(n, log_c=LOG_C, alpha=ALPHA):
    return np.exp(-np.exp(log_c - alpha * np.log(n)))


def task_ladder(noise=0.1, seed=0, sizes=SIZES, value=law, family="syn"):
    rng = np.random.default_rng(seed)
    rows = []
    for k, n in enumerate(sizes):
        pu = min(1.0, float(value(n)) * float(np.exp(rng.normal(0, noise))))
        rows.append({"family": family, "model": f"m{k}", "params": n, "tokens": 20 * n, "flops": 120 * n * n,
                     "step": np.nan, "task": "gen", "metric": "pass_until", "value": pu, "checkpoint": f"m{k}"})
    return pd.DataFrame(rows)


def sample_until(p, until, budget, rng):
    """Exact PassUntil records: draw until ``until`` successes or ``budget`` draws (negative binomial)."""
    positions = np.cumsum(rng.geometric(p[None, :], size=(until, p.size)), axis=0)
    reached = positions[-1] <= budget
    n = np.where(reached, positions[-1], budget)
    c = np.where(reached, until, (positions <= budget).sum(0))
    return n, c


def item_ladder(n_items=40, seed=0, until=4, budget=5000, sizes=(*SIZES, TARGET)):
    """Items with their own c_i, alpha_i; per-item counts sampled until K successes; the task value is the
    mean of the per-item PassUntil estimates. Returns (ladder, items, item truth)."""
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.35, 0.9, n_items)
    p_small = np.exp(rng.uniform(np.log(1e-5), np.log(0.05), n_items))  # at the smallest model
    log_c = np.log(-np.log(p_small)) + alpha * np.log(sizes[0])
    rows, items = [], []
    for k, n in enumerate(sizes):
        p = law(n, log_c, alpha)
        drawn, correct = sample_until(p, until, budget, rng)
        items += [{"checkpoint": f"m{k}", "task": "gen", "item": f"q{i:03d}", "n_drawn": int(drawn[i]),
                   "n_correct": int(correct[i]), "until": until} for i in range(n_items)]
        rows.append({"family": "syn", "model": f"m{k}", "params": n, "tokens": 20 * n, "flops": 120 * n * n,
                     "step": np.nan, "task": "gen", "metric": "pass_until",
                     "value": float(np.mean(pass_until_estimate(drawn, correct, until))), "checkpoint": f"m{k}"})
    truth = pd.DataFrame({"item": [f"q{i:03d}" for i in range(n_items)], "alpha": alpha, "log_c": log_c})
    return pd.DataFrame(rows), pd.DataFrame(items), truth


# --- the form ----------------------------------------------------------------------------


def test_form_is_data_with_exact_gradient_and_fit_form_recovers_it():
    form = FORMS["pass_until_power"]
    assert PASS_UNTIL_POWER["params"] is form and form.inputs == ("params",) and form.space == "log"
    assert FORMS["pass_until_power_flops"].inputs == ("flops",)
    raw = {"params": SIZES}
    z, ref = normalise_inputs(form, raw)
    truth = {"a": LOG_C - ALPHA * ref["params"][0], "alpha": ALPHA}
    assert np.allclose(form(truth, z), law(SIZES))
    x = np.array([truth["a"], truth["alpha"]]) + 0.05
    _, analytic = value_and_jacobian(form, x, ["a", "alpha"], {}, z)
    _, complex_step = value_and_jacobian(form, x, ["a", "alpha"], {}, z, exact_only=True)
    assert np.allclose(analytic, complex_step, rtol=1e-9, atol=1e-14)
    y = law(SIZES) * np.exp(np.random.default_rng(0).normal(0, 0.02, len(SIZES)))
    fitted = fit_form(form, raw, y)
    assert fitted.params["alpha"] == pytest.approx(ALPHA, abs=0.03)
    linear = fit_law(SIZES, y)  # the predictor's closed form agrees with the generic robust fit
    assert linear.params["alpha"] == pytest.approx(fitted.params["alpha"], abs=0.03)
    assert law_parameters(linear)["log_c"] == pytest.approx(LOG_C, abs=0.7)


# --- task-level law ----------------------------------------------------------------------


def test_task_law_recovers_parameters_and_forecasts_a_larger_model():
    ladder = task_ladder()
    predictor = PassUntilPredictor(n_boot=300, seed=1).fit(ladder, "gen")
    assert predictor.alpha_ == pytest.approx(ALPHA, abs=0.06)
    assert predictor.log_c_ == pytest.approx(LOG_C, abs=1.2)
    f = predictor.predict(params=TARGET)
    assert f.lower <= law(TARGET) <= f.upper
    assert f.lower < f.value < f.upper and abs(f.value - law(TARGET)) < 0.08
    assert f.n_boot + f.n_boot_failed == 300 and f.loss is None and f.warnings == []
    again = PassUntilPredictor(n_boot=300, seed=1).fit(ladder, "gen").predict(params=TARGET, tokens=1.0)
    assert (again.value, again.lower, again.upper) == (f.value, f.lower, f.upper)


def test_task_law_in_flops_and_interval_rows_as_weights():
    ladder = task_ladder(noise=0.02)
    flops = PassUntilPredictor(x="flops", n_boot=50).fit(ladder, "gen")
    assert flops.alpha_ == pytest.approx(ALPHA / 2, abs=0.03)  # flops = 120 N^2
    assert flops.predict(params=TARGET, tokens=20 * TARGET).value == pytest.approx(law(TARGET), abs=0.05)
    # one corrupted rung: with a wide interval (lower/upper rows) it barely pulls the fit
    bad = ladder.copy()
    bad.loc[3, "value"] /= 8
    plain = PassUntilPredictor(n_boot=20).fit(bad, "gen")
    spread = np.where(np.arange(len(bad)) == 3, 50.0, 1.2)
    bounds = [bad.assign(metric=f"pass_until_{side}", value=bad["value"] * spread**sign)
              for side, sign in (("lower", -1), ("upper", 1))]
    weighted = PassUntilPredictor(n_boot=20).fit(pd.concat([bad, *bounds], ignore_index=True), "gen")
    assert weighted.weighted_ and not plain.weighted_
    assert abs(weighted.alpha_ - ALPHA) < 0.02 < abs(plain.alpha_ - ALPHA)


def test_values_of_one_few_points_and_extrapolation():
    ladder = task_ladder(noise=0.0, sizes=np.geomspace(1e8, 3e10, 7))  # the top rung has PU ~ 0.8
    ladder.loc[6, "value"] = 1.0  # log(-log 1) = -inf: clipped, and weighted to nothing
    predictor = PassUntilPredictor(n_boot=20).fit(ladder, "gen")
    assert predictor.alpha_ == pytest.approx(ALPHA, abs=1e-6)
    two = PassUntilPredictor(n_boot=20).fit(ladder.iloc[:2], "gen")
    assert any(">= 3 runs" in w for w in two.predict(params=TARGET).warnings)
    with pytest.raises(CapscaleError, match="distinct params"):
        PassUntilPredictor(n_boot=20).fit(ladder.iloc[:1], "gen")
    far = predictor.predict(params=1e13)
    assert any("far extrapolation" in w for w in far.warnings) and 0.0 <= far.lower <= far.upper <= 1.0
    with pytest.raises(CapscaleError, match="fit one family"):
        PassUntilPredictor().fit(pd.concat([ladder, ladder.assign(family="other")]), "gen")


# --- per-item law ---------------------------------------------------------------------------


def test_per_item_law_recovers_items_and_forecasts_the_task():
    ladder, items, truth = item_ladder()
    train = ladder[ladder["params"] < 5e9]
    predictor = PassUntilPredictor(per_item=True, n_boot=150, seed=2).fit(train, "gen", items=items)
    table = predictor.items_table_.merge(truth, on="item", suffixes=("", "_true"))
    assert len(table) == 40 and table["own_slope"].all()
    assert np.median(np.abs(table["alpha"] - table["alpha_true"])) < 0.1
    assert predictor.alpha_pool_ == pytest.approx(truth["alpha"].mean(), abs=0.08)
    true_value = float(np.mean(law(TARGET, truth["log_c"].to_numpy(), truth["alpha"].to_numpy())))
    actual = float(ladder["value"].iloc[-1])
    f = predictor.predict(params=TARGET)
    assert f.lower <= true_value <= f.upper and f.lower <= actual <= f.upper
    assert abs(f.value - true_value) < 0.05
    # the task-level law on the same ladder, with the items redrawn in its bootstrap
    task = PassUntilPredictor(n_boot=150, seed=2).fit(train, "gen", items=items)
    plain = PassUntilPredictor(n_boot=150, seed=2).fit(train, "gen")
    assert task.items_resampled_ and not plain.items_resampled_
    g, h = task.predict(params=TARGET), plain.predict(params=TARGET)
    assert g.value == pytest.approx(h.value) and (g.lower, g.upper) != (h.lower, h.upper)
    assert g.lower <= actual <= g.upper


def test_degenerate_items_take_the_pooled_slope():
    ladder, items, _ = item_ladder(n_items=20, seed=3)
    never = pd.DataFrame([{"checkpoint": f"m{k}", "task": "gen", "item": "never", "n_drawn": 5000, "n_correct": 0,
                           "until": 4} for k in range(len(SIZES) + 1)])
    once = never.assign(item="once", n_correct=[0, 0, 0, 0, 0, 0, 2, 4])
    predictor = PassUntilPredictor(per_item=True, n_boot=30).fit(ladder[ladder["params"] < 5e9], "gen",
                                                                 items=pd.concat([items, never, once]))
    table = predictor.items_table_.set_index("item")
    for name in ("never", "once"):
        assert not table.loc[name, "own_slope"]
        assert table.loc[name, "alpha"] == pytest.approx(predictor.alpha_pool_)
    # never solved in 7 x 5000 draws: finite, and at the largest rung below the Jeffreys upper bound of 0 in 5000
    level = np.exp(-np.exp(table.loc["never", "log_c"] - table.loc["never", "alpha"] * np.log(SIZES[-1])))
    assert 0 < level < item_interval(5000, 0, level=0.9)[1]
    assert predictor.n_items_pooled_ == 2
    with pytest.raises(CapscaleError, match="per-item sample counts"):
        PassUntilPredictor(per_item=True).fit(ladder, "gen")


def test_saved_fits_predict_the_same(tmp_path):
    ladder, items, _ = item_ladder(n_items=15, seed=4)
    for per_item in (False, True):
        predictor = PassUntilPredictor(per_item=per_item, n_boot=40).fit(ladder, "gen", items=items)
        path = save_predictor(predictor, tmp_path / f"fit{per_item}.json")
        a, b = predictor.predict(params=3e10), load_predictor(path).predict(params=3e10)
        assert (a.value, a.lower, a.upper) == pytest.approx((b.value, b.lower, b.upper))


# --- accelerated emergence -----------------------------------------------------------------------

X = np.geomspace(1e8, 1e10, 7)
T = np.log(X) - np.log(X).mean()


def noisy(seed, curvature=0.0, noise=0.15):
    g = 1.0 - ALPHA * T + curvature * T**2
    rng = np.random.default_rng(seed)
    return np.minimum(np.exp(-np.exp(g)) * np.exp(rng.normal(0, noise, len(X))), 1.0)


def test_accelerated_emergence_verdicts_and_sign():
    exact = accelerated_emergence(X, np.exp(-np.exp(1.0 - ALPHA * T)))
    assert exact["verdict"] == "linear" and exact["alpha"] == pytest.approx(ALPHA)
    assert exact["p_value"] == pytest.approx(1.0)
    faster = accelerated_emergence(X, noisy(0, curvature=-0.25))  # concave: alpha grows with N
    assert faster["verdict"] == "accelerated" and faster["curvature"] < 0
    assert faster["alpha_at_max"] > faster["alpha_at_min"] and faster["p_value"] < 0.05
    slower = accelerated_emergence(X, noisy(0, curvature=0.25))
    assert slower["verdict"] == "decelerated" and slower["curvature"] > 0
    assert accelerated_emergence(X[:3], noisy(0)[:3])["verdict"] == "insufficient"
    assert accelerated_emergence(X[:3], noisy(0)[:3])["alpha"] == pytest.approx(ALPHA, abs=0.3)
    ones = accelerated_emergence(np.append(X, 1e12), np.append(noisy(1), 1.0))
    assert ones["n_excluded"] == 1 and ones["n"] == 7


@pytest.mark.parametrize("mode", ["relative", "se", "equal"])
def test_accelerated_emergence_false_positive_rate_and_power(mode):
    def verdict(seed, curvature):
        pu = noisy(seed, curvature)
        if mode == "se":
            return accelerated_emergence(X, pu, se=0.15 * pu)["verdict"]
        return accelerated_emergence(X, pu, weighting=mode)["verdict"]

    null = [verdict(s, 0.0) for s in range(200)]
    assert np.mean([v != "linear" for v in null]) <= 0.10
    bent = [verdict(s, -0.2) for s in range(100)]
    assert np.mean([v == "accelerated" for v in bent]) >= 0.8


# --- backtest ---------------------------------------------------------------------------------


def test_backtest_on_a_pass_until_only_ladder_keeps_the_record_contract():
    ladder, items, _ = item_ladder(n_items=15, seed=5)
    assert set(ladder["metric"]) == {"pass_until"}
    for method, kwargs in (("pass-until", {}), ("pass-until-items", {"items": items})):
        outcome = run_backtest(ladder, "params > 5e9", metric="pass_until", method=method, n_boot=30, **kwargs)
        assert not outcome.skipped
        (record,) = outcome.records
        contract = record.contract()
        assert list(contract) == RECORD_KEYS and contract["model"] == "m7"
        assert contract["lower"] <= contract["upper"] and contract["abs_error"] < 0.15
    missing = run_backtest(ladder, "params > 5e9", metric="pass_until", method="pass-until-items", n_boot=10)
    (record,) = missing.records  # never skipped silently: a record without a forecast, and why
    assert record.contract()["predicted"] is None and "per-item sample counts" in record.reason
    assert "per-item sample counts" in missing.skipped[0][2]


def test_cli_backtest_with_metric_pass_until_uses_the_passuntil_law(tmp_path, capsys):
    """`capscale backtest LADDER --metric pass_until` works like the accuracy backtest, no --method needed."""
    import json

    from capscale.cli import main

    path = tmp_path / "ladder.csv"
    task_ladder(noise=0.05, sizes=(*SIZES, TARGET)).to_csv(path, index=False)
    out = tmp_path / "records.json"
    assert main(["backtest", str(path), "--metric", "pass_until", "--holdout", "params > 5e9", "--n-boot", "50",
                 "--json", str(out)]) == 0
    assert "method pass-until" in capsys.readouterr().out
    (record,) = json.loads(out.read_text())
    assert list(record) == RECORD_KEYS and abs(record["predicted"] - law(TARGET)) < 0.1
