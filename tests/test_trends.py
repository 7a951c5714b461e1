"""capscale trends: shape classes, calibration on flat noise, families kept apart, noise fallbacks, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.ladder import validate
from capscale.ladder import read_items
from capscale.trends import analyse_ladder, decide_shape
from capscale.trends.evidence import bigbench_scores
from capscale.trends.noise import curve_noise, item_covariance

N_SIM = 199
T7 = np.linspace(0.0, 3.0, 7)
CLEAN = {
    "flat": [0.5] * 7,
    "improving": [0.30, 0.38, 0.46, 0.55, 0.63, 0.71, 0.80],
    "inverse": [0.80, 0.72, 0.63, 0.55, 0.47, 0.38, 0.30],
    "u_shaped": [0.70, 0.55, 0.40, 0.30, 0.45, 0.60, 0.75],
    "inverted_u": [0.30, 0.45, 0.60, 0.70, 0.55, 0.40, 0.30],
    "emergent": [0.25, 0.25, 0.25, 0.25, 0.70, 0.78, 0.85],
}


@pytest.mark.parametrize("label", sorted(CLEAN))
def test_each_class_on_a_clean_curve(label):
    shape = decide_shape(T7, np.array(CLEAN[label]), np.eye(7) * 0.01**2, chance_g=0.25, n_sim=N_SIM)
    assert shape.label == label
    if label != "flat":
        assert shape.p_value < 0.05
    if label in ("u_shaped", "inverted_u"):
        assert shape.turning_index == 3  # inside the ladder
    if label == "emergent":
        assert shape.floor["n_points"] == 4 and shape.floor["near_chance"]


def test_gradual_s_curve_is_not_emergent_and_high_floor_is_not_emergent():
    s_curve = 0.25 + 0.6 / (1 + np.exp(-(T7 - 1.5) / 0.6))   # a broad sigmoid: improving throughout
    assert decide_shape(T7, s_curve, np.eye(7) * 0.005**2, chance_g=0.25, n_sim=N_SIM).label == "improving"
    jump_far_above_chance = np.array(CLEAN["emergent"]) + 0.3   # the floor sits far above chance
    shape = decide_shape(T7, jump_far_above_chance, np.eye(7) * 0.01**2, chance_g=0.25, n_sim=N_SIM)
    assert shape.label == "improving"


def test_flat_noisy_curves_are_rarely_called_inverse_or_emergent():
    """Calibration: at alpha = 0.05 a flat curve with the stated noise is called inverse or emergent in at
    most 5% of seeded repetitions (and something other than flat in about alpha of them)."""
    rng = np.random.default_rng(123)
    sigma, n, reps = 0.03, 6, 200
    t = np.sort(rng.uniform(0, 3, n))
    calls = []
    for rep in range(reps):
        y = 0.5 + rng.normal(0, sigma, n)
        calls.append(decide_shape(t, y, np.eye(n) * sigma**2, chance_g=0.25, n_sim=N_SIM, seed=rep).label)
    assert np.mean([c in ("inverse", "emergent") for c in calls]) <= 0.05
    assert np.mean([c != "flat" for c in calls]) <= 0.09


def test_excess_scatter_absorbs_an_off_curve_model():
    """A jump then one model far below its neighbours (item noise tiny): emergent, not a turning point."""
    y = np.array([0.015, 0.006, 0.017, 0.022, 0.717, 0.451, 0.687])  # Pythia 2-shot addition
    se = np.sqrt(y * (1 - y) / 5000) + 1e-3
    shape = decide_shape(np.log10([1.4e19, 5e19, 1.3e20, 2e20, 4e20, 1e21, 1.8e21]), y, np.diag(se**2), n_sim=N_SIM)
    assert shape.label == "emergent" and shape.tau > 0.05


def ladder_rows(family, models, params, values, task="t", metric="acc", **extra):
    rows = []
    for i, (m, p, v) in enumerate(zip(models, params, values)):
        row = {"family": family, "model": m, "params": p, "tokens": 20 * p, "task": task, "metric": metric, "value": v}
        row.update({k: (val[i] if isinstance(val, (list, tuple, np.ndarray)) else val) for k, val in extra.items()})
        rows.append(row)
    return rows


def test_families_are_never_pooled():
    """Family A (small) falls, family B (large) rises: pooled along compute that is a U; each is monotone."""
    a = ladder_rows("A", ["a1", "a2", "a3", "a4", "a5"], [1e6, 3e6, 1e7, 3e7, 1e8],
                    [0.80, 0.70, 0.60, 0.50, 0.40], stderr=0.01)
    b = ladder_rows("B", ["b1", "b2", "b3", "b4", "b5"], [3e8, 1e9, 3e9, 1e10, 3e10],
                    [0.40, 0.50, 0.60, 0.70, 0.80], stderr=0.01)
    ladder = validate(pd.DataFrame(a + b), "test")
    report = analyse_ladder(ladder, "acc", n_sim=N_SIM)
    got = {r.family: r for r in report.results}
    assert got["A"].label == "inverse" and got["B"].label == "improving"
    assert set(got["A"].models) == {"a1", "a2", "a3", "a4", "a5"} and set(got["B"].models) == {"b1", "b2", "b3", "b4", "b5"}


def test_lower_is_better_metric_improves_when_it_falls():
    rows = ladder_rows("f", ["m1", "m2", "m3", "m4"], [1e6, 1e7, 1e8, 1e9], [3.0, 2.5, 2.0, 1.5],
                       metric="bpb_correct", stderr=0.02)
    result = analyse_ladder(validate(pd.DataFrame(rows), "test"), "bpb_correct", n_sim=N_SIM).results[0]
    assert result.direction == "lower" and result.label == "improving"


def points_frame(**cols):
    base = {"model": ["m1", "m2", "m3", "m4"], "checkpoint": ["c1", "c2", "c3", "c4"],
            "value": [0.40, 0.45, 0.50, 0.55]}
    base.update(cols)
    return pd.DataFrame(base)


def test_item_covariance_is_the_item_bootstrap_covariance():
    rng = np.random.default_rng(0)
    base = rng.random(60) < 0.5
    matrix = np.vstack([base ^ (rng.random(60) < q) for q in (0.1, 0.2, 0.3)]).astype(float)
    draws = rng.integers(0, 60, size=(20000, 60))
    boot = np.cov(np.stack([matrix[:, d].mean(axis=1) for d in draws[:4000]]).T)
    assert np.allclose(item_covariance(matrix, binary=False), boot, rtol=0.15, atol=2e-4)


def test_noise_source_fallbacks():
    items = pd.DataFrame([{"checkpoint": c, "task": "t", "item": i, "acc": float((i + k) % 3 == 0)}
                          for k, c in enumerate(["c1", "c2", "c3", "c4"]) for i in range(30)])
    points = points_frame(stderr=[0.02] * 4, n_items=[100] * 4)
    assert curve_noise(points, "acc", items, "t").source == "items"
    assert curve_noise(points, "acc", None, "t").source == "stderr"
    assert curve_noise(points.drop(columns="stderr"), "acc", None, "t").source == "n_items"
    assert curve_noise(points.drop(columns=["stderr"]), "p_correct", None, "t").source == "none"  # not a 0/1 metric
    assert curve_noise(points.drop(columns=["stderr", "n_items"]), "acc", None, "t").source == "none"
    var = np.diag(curve_noise(points.drop(columns="stderr"), "acc", None, "t").cov)
    assert np.allclose(var, (0.4 * 100 + 0.5) / 101 * (1 - (0.4 * 100 + 0.5) / 101) / 100, rtol=0.3)


def test_without_noise_the_report_says_so_and_gives_no_p_values():
    rows = ladder_rows("f", ["m1", "m2", "m3", "m4", "m5"], [1e6, 1e7, 1e8, 1e9, 1e10], [0.3, 0.4, 0.5, 0.6, 0.7])
    report = analyse_ladder(validate(pd.DataFrame(rows), "test"), "acc", n_sim=N_SIM)
    result = report.results[0]
    assert result.noise_source == "none" and result.p_value is None and result.label == "improving"
    assert any("without confidence" in note for note in report.notes)


def test_bigbench_scores():
    lin, brk = bigbench_scores([0, 1, 2, 3, 4])
    assert lin == pytest.approx(4.0) and brk == pytest.approx(4.0)
    lin_j, brk_j = bigbench_scores([0, 0.01, 0, 0.01, 1.0])
    assert brk_j > 10 and lin_j < lin
    assert bigbench_scores([1, 0.5, 0])[0] < 0   # getting worse: negative


def small_ladder(tmp_path):
    rows = ladder_rows("A", ["a1", "a2", "a3", "a4", "a5"], [1e6, 3e6, 1e7, 3e7, 1e8], [0.26, 0.24, 0.25, 0.70, 0.80],
                       task="jumpy", chance=0.25, n_items=400, checkpoint=["a1", "a2", "a3", "a4", "a5"])
    rows += ladder_rows("A", ["a1", "a2", "a3", "a4", "a5"], [1e6, 3e6, 1e7, 3e7, 1e8], [0.7, 0.6, 0.5, 0.4, 0.3],
                        task="worse", chance=0.25, n_items=400, checkpoint=["a1", "a2", "a3", "a4", "a5"])
    path = tmp_path / "ladder.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_cli_end_to_end_writes_json_and_plots(tmp_path, capsys):
    path = small_ladder(tmp_path)
    out_json, plots = tmp_path / "trends.json", tmp_path / "plots"
    rc = main(["trends", str(path), "--json", str(out_json), "--plot", str(plots), "--n-sim", str(N_SIM)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "emergent" in printed and "inverse" in printed
    payload = json.loads(out_json.read_text())
    labels = {r["task"]: r["label"] for r in payload["results"]}
    assert labels == {"jumpy": "emergent", "worse": "inverse"}
    assert all(r["noise_source"] == "n_items" and r["p_value"] < 0.05 for r in payload["results"])
    assert sorted(p.name for p in plots.glob("*.png")) == ["jumpy.png", "worse.png"]


def test_cli_items_from_a_per_choice_rows_file(tmp_path):
    """--items accepts per-choice rows (CSV.gz): noise then comes from the item bootstrap and the
    continuous p_correct of the same items is checked for hidden progress on the flat task."""
    rows, ladder = [], []
    for k, (ck, params) in enumerate(zip(["s", "m", "l", "xl"], [1e6, 1e7, 1e8, 1e9])):
        # even items: right, by a margin that grows with scale; odd items: wrong by a fixed margin.
        # accuracy stays at 0.5 while p_correct (softmax over the two choices) rises.
        margins = np.where(np.arange(200) % 2 == 0, 0.1 + 0.5 * k, -0.1)
        for i, d in enumerate(margins):
            rows += [{"checkpoint": ck, "task": "t", "item": i, "choice": 0, "gold": True, "logprob": -1.0},
                     {"checkpoint": ck, "task": "t", "item": i, "choice": 1, "gold": False, "logprob": -1.0 - d}]
        ladder.append({"family": "f", "model": ck, "checkpoint": ck, "params": params, "tokens": 20 * params,
                       "task": "t", "metric": "acc", "value": 0.5})
    items_path, ladder_path, out_json = tmp_path / "items.csv.gz", tmp_path / "ladder.csv", tmp_path / "r.json"
    pd.DataFrame(rows).to_csv(items_path, index=False)
    pd.DataFrame(ladder).to_csv(ladder_path, index=False)
    assert "bpb_correct" not in read_items(items_path, "items").columns   # byte counts unknown
    rc = main(["trends", str(ladder_path), "--items", str(items_path), "--json", str(out_json), "--n-sim", str(N_SIM)])
    assert rc == 0
    result = json.loads(out_json.read_text())["results"][0]
    assert result["noise_source"] == "items" and result["chance"] == pytest.approx(0.5)
    assert result["label"] == "flat"
    assert result["hidden_progress"]["hidden_progress"] is True
    assert result["hidden_progress"]["metrics"]["p_correct"]["source"] == "items"


def test_per_sample_rows_give_pass_until_noise(tmp_path):
    rows = [{"checkpoint": ck, "task": "g", "item": i, "n_drawn": 100, "n_correct": int(c), "until": 1000}
            for ck, rate in [("c1", 0.02), ("c2", 0.04), ("c3", 0.08), ("c4", 0.16)]
            for i, c in enumerate(np.random.default_rng(2).binomial(100, rate, 40))]
    path = tmp_path / "samples.parquet"
    pd.DataFrame(rows).to_parquet(path)
    items = read_items(path, "items")
    points = points_frame(checkpoint=["c1", "c2", "c3", "c4"],
                          value=items.groupby("checkpoint")["pass_until"].mean().to_numpy())
    noise = curve_noise(points, "pass_until", items, "g")
    assert noise.source == "items" and np.all(np.diag(noise.cov) > 0)
