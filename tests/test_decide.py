"""Issue 15: which recipe wins at scale (capscale decide / decide-backtest), loss-to-loss laws and transfer,
on synthetic ladders with known truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.decide import RECORD_KEYS, TOO_CLOSE, decide
from capscale.laws.fitting import fit_form, value_and_jacobian
from capscale.laws.forms import FORMS, normalise_inputs, normalised_loss_to_loss, shifted_power_params
from capscale.laws.losslaw import LossLawPredictor, LossToLossPredictor
from capscale.laws.registry import MethodOptions
from capscale.laws.transfer import TRANSFER_KEYS, fit_transfer_map

TARGET = 1e9
SIZES = np.geomspace(1e6, 1e8, 6)


def power_loss(p: dict, n: float) -> float:
    c = 6 * n * 20 * n
    return p["E"] + p["A"] * c ** -p["alpha"]


def recipe_ladder(n_tasks: int, seed: int, spread: float, noise: float = 0.005, sizes=SIZES) -> pd.DataFrame:
    """Two recipes per task, each a power law in compute (20 tokens/param) measured with noise, at six
    sizes and the target; recipe B's law is A's with its floor and scale perturbed by ``spread``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_tasks):
        e, alpha = rng.uniform(1.5, 2.5), rng.uniform(0.2, 0.3)
        scale = e * (120 * 1e12) ** alpha  # the reducible loss equals the floor at the smallest size
        for recipe in ("A", "B"):
            law = {"E": e * np.exp(rng.normal(0, spread)), "A": scale * np.exp(rng.normal(0, 2 * spread)),
                   "alpha": alpha + rng.normal(0, 0.01)}
            for n in [*sizes, TARGET]:
                rows.append({"family": recipe, "model": f"{recipe}-{n:.0f}", "params": n, "tokens": 20 * n,
                             "flops": 120 * n * n, "step": np.nan, "task": f"t{k}", "metric": "loss",
                             "value": power_loss(law, n) * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


# --- the loss-to-loss form -------------------------------------------------------------------------

def test_loss_to_loss_form_recovers_known_parameters():
    form = FORMS["loss_to_loss"]
    truth = {"K": 0.8, "E0": 1.6, "kappa": 1.3, "E1": 0.9}
    source = np.linspace(2.0, 6.0, 40)
    clean = truth["K"] * (source - truth["E0"]) ** truth["kappa"] + truth["E1"]
    y = clean * np.exp(np.random.default_rng(5).normal(0, 0.001, clean.shape))
    fit = fit_form(form, {"loss": source}, y)
    found = shifted_power_params(fit.params, fit.reference)
    for name, value in truth.items():
        assert found[name] == pytest.approx(value, abs=0.05 + 0.05 * abs(value)), name
    assert np.max(np.abs(fit.predict(loss=source) / clean - 1)) < 0.003
    # the closed-form gradient is exact (the solver relies on it)
    z, reference = normalise_inputs(form, {"loss": source})
    x = np.array([normalised_loss_to_loss(truth, reference)[p] for p in form.param_names]) + 0.05
    _, analytic = value_and_jacobian(form, x, list(form.param_names), {}, z)
    _, complex_step = value_and_jacobian(form, x, list(form.param_names), {}, z, exact_only=True)
    assert np.allclose(analytic, complex_step, rtol=1e-9, atol=1e-12)


def validation_ladder(seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A validation loss following a Chinchilla law, a task loss a shifted power law of it, and an
    accuracy a sigmoid of the task loss; 7 sizes x 2 token multipliers x 8 checkpoints."""
    rng = np.random.default_rng(seed)
    rows = []

    def truth(n, d):
        l0 = 1.8 + 40 * n ** -0.3 + 60 * d ** -0.28
        l1 = 0.7 * (l0 - 1.6) ** 1.3 + 0.9
        return l0, l1, 0.25 + 0.7 / (1 + np.exp(5 * (l1 - 1.6)))

    for n in np.geomspace(1e6, 1e9, 7):
        for m in (20, 80):
            for step in range(1, 9):
                d = n * m * step / 8
                l0, l1, acc = truth(n, d)
                for task, metric, v in (("val", "loss", l0 * np.exp(rng.normal(0, 0.003))),
                                        ("t", "bpb_correct", l1 * np.exp(rng.normal(0, 0.003))),
                                        ("t", "acc", acc + rng.normal(0, 0.005))):
                    rows.append({"family": "f", "model": f"n{n:.0f}-{m}", "params": n, "tokens": d,
                                 "flops": 6 * n * d, "step": step, "task": task, "metric": metric, "value": v,
                                 "chance": 0.25})
    return pd.DataFrame(rows), dict(zip(("val", "bpb_correct", "acc"), truth(1e9, 2e10)))


def test_loss_to_loss_predictor_forecasts_the_task_loss_and_accuracy_through_the_validation_loss():
    ladder, truth = validation_ladder()
    train = ladder[ladder["params"] < 5e8]
    loss = LossToLossPredictor(source_task="val", n_boot=100).fit(train, "t", "bpb_correct")
    f = loss.predict(params=1e9, tokens=2e10)
    assert f.lower <= truth["bpb_correct"] <= f.upper
    assert abs(f.value / truth["bpb_correct"] - 1) < 0.01
    assert loss.map_params_["kappa"] == pytest.approx(1.3, abs=0.3)
    acc = LossToLossPredictor(n_boot=100).fit(train, "t", "acc", "bpb_correct", loss_task="val")
    g = acc.predict(params=1e9, tokens=2e10)
    assert g.lower <= truth["acc"] <= g.upper and abs(g.value - truth["acc"]) < 0.02
    assert g.loss == pytest.approx(f.value) and "loss_to_loss -> sigmoid_loss" in acc.form_used_
    direct = LossLawPredictor(n_boot=100).fit(train, "val", "loss").predict(params=1e9, tokens=2e10)
    assert direct.lower <= truth["val"] <= direct.upper


# --- P(A beats B) is calibrated -----------------------------------------------------------------------

def test_decisions_at_90_percent_confidence_are_right_at_least_90_percent_of_the_time():
    """Known truth: each task's two recipes follow power laws; the target run (1e9) is held out and its
    measured loss is the truth. Decisions called at 90% must be right >= 90% of the time, and there must
    be enough of them for that to mean something."""
    ladder = recipe_ladder(n_tasks=16, seed=11, spread=0.05)
    result = decide(ladder, "family", "params > 5e8", metric="loss", methods=["loss-law"],
                    options=MethodOptions(n_boot=100, step1="power_compute"))
    records = pd.DataFrame(result["records"])
    called = records[records["called"]]
    assert len(called) >= 5
    assert called["correct"].astype(float).mean() >= 0.9
    assert set(called["decision"]) <= {"A", "B"} and set(records.loc[~records["called"], "decision"]) <= {TOO_CLOSE}
    confident = records["p_a_beats_b"].sub(0.5).abs() >= 0.4
    assert (records.loc[confident, "called"]).all()


def test_single_scale_draws_are_paired_when_both_recipes_share_items():
    """A's correct items are a superset of B's: whichever items a resample draws, A never scores below B,
    so paired draws call A; independent draws of two 200-item benchmarks would not be sure."""
    n_items = 200
    rows, item_rows = [], []
    for recipe, n_right in (("A", 120), ("B", 115)):
        for n in (1e6, 1e7, 1e8):
            ckpt = f"{recipe}-{n:.0f}"
            right = min(n_items, int(n_right * (1 + np.log10(n / 1e8) / 10)))
            item_rows += [{"checkpoint": ckpt, "task": "t", "item": f"i{i:03d}", "acc": float(i < right)}
                          for i in range(n_items)]
            rows.append({"family": recipe, "model": ckpt, "params": n, "tokens": 20 * n, "flops": 120 * n * n,
                         "step": np.nan, "task": "t", "metric": "acc", "value": right / n_items,
                         "checkpoint": ckpt, "n_items": n_items})
        rows.append({**rows[-1], "model": f"{recipe}-target", "checkpoint": f"{recipe}-target", "params": 1e9,
                     "tokens": 2e10, "flops": 1.2e20})
    ladder, items = pd.DataFrame(rows), pd.DataFrame(item_rows)
    options = MethodOptions(n_boot=400)
    paired = decide(ladder, "family", "params > 5e8", methods=["single-scale"], options=options,
                    items={"item_metrics": items})["records"][0]
    alone = decide(ladder, "family", "params > 5e8", methods=["single-scale"], options=options)["records"][0]
    assert paired["paired"] and paired["p_a_beats_b"] > 0.99 and paired["decision"] == "A"
    assert not alone["paired"] and 0.6 < alone["p_a_beats_b"] < 0.95 and alone["decision"] == TOO_CLOSE


# --- the commands --------------------------------------------------------------------------------------

@pytest.fixture
def ladder_csv(tmp_path):
    path = tmp_path / "recipes.csv"
    recipe_ladder(n_tasks=2, seed=3, spread=0.05).to_csv(path, index=False)
    return path


def test_decide_cli_json_contract(ladder_csv, tmp_path, capsys):
    out = tmp_path / "decide.json"
    code = main(["decide", str(ladder_csv), "--recipe-col", "family", "--target", "params > 5e8", "--metric",
                 "loss", "--n-boot", "50", "--jobs", "1", "--no-progress", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["methods"] == ["single-scale", "loss-law"] and result["recipes"] == ["A", "B"]
    assert [t["label"] for t in result["targets"]] == ["params=1e+09,tokens=2e+10"]
    assert len(result["records"]) == 2 * 2  # tasks x methods x one pair x one target
    for record in result["records"]:
        assert list(record) == RECORD_KEYS
        assert 0.0 <= record["p_a_beats_b"] <= 1.0
        assert record["decision"] in ("A", "B", TOO_CLOSE)
        assert record["diff_lower"] <= record["diff"] <= record["diff_upper"]
        assert record["actual_winner"] in ("A", "B")  # the target runs exist: decide reports who won
    assert "decisions (" in capsys.readouterr().out
    explicit = main(["decide", str(ladder_csv), "--recipe-col", "family", "--target", "params=1e9,tokens=2e10",
                     "--metric", "loss", "--method", "loss-law", "--n-boot", "50", "--jobs", "1", "--no-progress",
                     "--json", str(out)])
    assert explicit == 0
    records = json.loads(out.read_text())["records"]
    assert all(r["actual_a"] is None for r in records)  # nothing held out: every run is fitted


def test_decide_backtest_cli_reports_the_compute_decision_frontier(ladder_csv, tmp_path, capsys):
    out = tmp_path / "bt.json"
    code = main(["decide-backtest", str(ladder_csv), "--recipe-col", "family", "--target", "params > 5e8",
                 "--metric", "loss", "--n-boot", "30", "--max-drop", "2", "--jobs", "1", "--no-progress",
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["dropped"] == [0, 1, 2]
    summary = pd.DataFrame(result["summary"])
    assert list(summary.columns) == ["method", "dropped", "n_pairs", "n_without_truth", "accuracy", "n_clear",
                                     "clear_accuracy", "called", "called_accuracy", "compute_fraction"]
    assert len(summary) == 2 * 3 and summary["n_pairs"].eq(2).all()
    assert summary["accuracy"].between(0, 1).all()
    law = summary[summary["method"] == "loss-law"].set_index("dropped")["compute_fraction"]
    assert law[0] > law[1] > law[2]  # dropping the largest rung uses less compute
    per_task = pd.DataFrame(result["per_task"])
    assert set(per_task["task"]) == {"t0", "t1"}
    assert all(list(r) == RECORD_KEYS for r in result["records"])
    assert "compute_fraction" in capsys.readouterr().out


def transfer_ladder(seed: int = 0) -> pd.DataFrame:
    """Recipe 'ref' on a Chinchilla-like ladder (sizes x 2 token multipliers); recipe 'new' whose loss is
    an exact loss-to-loss map of ref's, L_new = 1.3 (L_ref - E_ref) + E_ref + 0.2, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(1e6, 3e9, 8):
        for m in (20, 100):
            d = m * n
            ref = 1.7 + 30 * n ** -0.3 + 40 * d ** -0.28
            for recipe, value in (("ref", ref), ("new", 1.3 * (ref - 1.7) + 1.9)):
                rows.append({"family": recipe, "model": f"{recipe}-{n:.0f}-{m}", "params": n, "tokens": d,
                             "flops": 6 * n * d, "step": np.nan, "task": "val", "metric": "loss",
                             "value": value * np.exp(rng.normal(0, 0.002)), "multiplier": m})
    return pd.DataFrame(rows)


def test_transfer_from_two_runs_beats_an_independent_fit_on_them(tmp_path, capsys):
    path = tmp_path / "transfer.csv"
    transfer_ladder().to_csv(path, index=False)
    out = tmp_path / "transfer.json"
    code = main(["transfer", str(path), "--recipe-col", "family", "--reference", "ref", "--new", "new",
                 "--task", "val", "--target", "params > 1e9", "--runs", "multiplier == 20", "--step1", "chinchilla",
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    records = pd.DataFrame(result["records"])
    assert list(result["records"][0]) == TRANSFER_KEYS
    assert sorted(set(records["k"])) == [1, 2, 3] and len(records) == 3 * 2  # two target runs
    k1, k2 = records[records["k"] == 1], records[records["k"] == 2]
    assert k1["independent"].isna().all()  # one run determines no scale law
    assert (k2["transfer_rel_error"] < 0.01).all()
    assert (k2["transfer_rel_error"] < k2["independent_rel_error"]).all()
    assert all(len(r) == 2 for r in k2["runs"]) and k2["map"].iloc[0]["free"] == ["E1", "a"]
    assert "reference law" in capsys.readouterr().out


def test_transfer_map_frees_one_parameter_per_run():
    l_ref = np.array([3.0, 2.5, 2.2, 2.0])
    l_new = 1.3 * (l_ref - 1.5) ** 1.1 + 1.6
    for k, free in ((1, {"E1"}), (2, {"a", "E1"}), (3, {"a", "E1", "kappa"})):
        fit = fit_transfer_map(l_ref[:k], l_new[:k], 1.5)
        assert set(fit.params) - set(fit.fixed) == free
        assert np.allclose(fit.predict(loss=l_ref[:k]), l_new[:k], rtol=1e-4)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--target", "params > 5e8"], "one recipe only"),
    (["--target", "params > 1e12"], "matches no rows"),
    (["--target", "params=abc"], "must be a number"),
    (["--target", "params > 5e8", "--method", "magic"], "the method must be one of"),
], ids=["one recipe", "target matches nothing", "bad explicit target", "unknown method"])
def test_bad_decide_input_is_one_clear_error(tmp_path, capsys, args, message):
    ladder = recipe_ladder(n_tasks=1, seed=0, spread=0.05)
    if message == "one recipe only":
        ladder = ladder[ladder["family"] == "A"]
    path = tmp_path / "l.csv"
    ladder.to_csv(path, index=False)
    code = main(["decide", str(path), "--recipe-col", "family", "--metric", "loss", "--n-boot", "20", "--jobs",
                 "1", "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_recipes_without_a_common_size_cannot_be_ranked(tmp_path, capsys):
    a = recipe_ladder(n_tasks=1, seed=0, spread=0.05, sizes=np.geomspace(1e6, 1e8, 4))
    b = recipe_ladder(n_tasks=1, seed=1, spread=0.05, sizes=np.geomspace(1.5e6, 1.5e8, 4))
    ladder = pd.concat([a[a["family"] == "A"], b[b["family"] == "B"]])
    path = tmp_path / "l.csv"
    ladder.to_csv(path, index=False)
    code = main(["decide-backtest", str(path), "--recipe-col", "family", "--target", "params > 5e8", "--metric",
                 "loss", "--n-boot", "20", "--jobs", "1", "--no-progress"])
    assert code == 2 and "no common size" in capsys.readouterr().err


def test_bad_transfer_and_backtest_input(tmp_path, capsys):
    path = tmp_path / "t.csv"
    transfer_ladder().to_csv(path, index=False)
    base = ["transfer", str(path), "--recipe-col", "family", "--task", "val", "--target", "params > 1e9"]
    assert main(base + ["--reference", "ref", "--new", "ref"]) == 2
    assert "the same" in capsys.readouterr().err
    assert main(base + ["--reference", "ref", "--new", "other"]) == 2
    assert "is not a value of 'family'" in capsys.readouterr().err
    assert main(["decide-backtest", str(path), "--recipe-col", "family", "--target", "params=1e9,tokens=2e10",
                 "--metric", "loss"]) == 2
    assert "needs --target as a query" in capsys.readouterr().err


# --- the toy ladder's second recipe --------------------------------------------------------------------

def test_toy_recipe_b_changes_only_the_document_mix(tmp_path):
    from capscale.toyladder import check_plan_file, family_for
    from capscale.toyladder.corpus import DOC_KINDS, RECIPES, DocumentSampler, documents
    from capscale.toyladder.world import make_world

    world = make_world(0)
    assert documents(world, 0, 50) == documents(world, 0, 50, "A")  # recipe A's corpus is unchanged
    shares = {}
    for recipe in ("A", "B"):
        sampler = DocumentSampler(world, 0, recipe)
        kinds = sampler.rng.choices(DOC_KINDS, cum_weights=sampler.kind_cum, k=20000)
        shares[recipe] = {k: kinds.count(k) / len(kinds) for k in DOC_KINDS}
        for kind, weight in zip(DOC_KINDS, RECIPES[recipe]):
            assert shares[recipe][kind] == pytest.approx(weight, abs=0.015)
    assert shares["B"]["arithmetic"] > shares["A"]["arithmetic"] and shares["B"]["facts"] < shares["A"]["facts"]
    assert family_for("A") == "toy" and family_for("B") == "toy-b"
    check_plan_file(tmp_path, "smoke", 0, "B")
    with pytest.raises(Exception, match="pick another --out"):
        check_plan_file(tmp_path, "smoke", 0, "A")  # a recipe-B folder never resumes as recipe A


def test_a_pair_without_draws_is_ranked_but_never_called():
    """No noise estimate (or every bootstrap refit failed): P is a bare comparison of the points, which
    a backtest still scores as a ranking, but no decision is called at a confidence level."""
    from capscale.decide import Belief, MethodSpec, Target, decide_pair

    target = Target("t", {"A": {"flops": 1e20}, "B": {"flops": 1e20}})
    spread = Belief(0.60, np.random.default_rng(0).normal(0.60, 0.01, 200), 0.58, 0.62)
    bare = Belief(0.50)
    for a, b in ((spread, bare), (bare, Belief(0.40))):
        record = decide_pair("task", target, MethodSpec("direct"), "acc", "A", "B", a, b, 0.9, 0)
        assert record.p_a_beats_b == 1.0 and not record.called and record.decision == TOO_CLOSE
    both = decide_pair("task", target, MethodSpec("direct"), "acc", "A", "B", spread,
                       Belief(0.50, np.random.default_rng(1).normal(0.50, 0.01, 200), 0.48, 0.52), 0.9, 0)
    assert both.called and both.decision == "A"


def test_decide_picks_the_toy_recipe_that_wins_facts_at_s5_from_the_shipped_stores(tmp_path):
    """End to end on the shipped toy stores (recipe A = results/toy, B = results/toy_b): with s5 held out,
    ranking at s4 (paired over the same 434 items) calls recipe A on facts, and A is what s5 measured."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "toy.json"
    code = main(["decide", str(root / "results" / "toy"), str(root / "results" / "toy_b"), "--recipe-col", "family",
                 "--target", "params > 3e5", "--task", "facts", "--method", "single-scale", "--n-boot", "200",
                 "--jobs", "1", "--no-progress", "--json", str(out)])
    assert code == 0
    (record,) = json.loads(out.read_text())["records"]
    assert record["recipe_a"] == "toy" and record["recipe_b"] == "toy-b" and record["paired"]
    assert record["called"] and record["decision"] == "toy" == record["actual_winner"]
    assert record["actual_a"] > record["actual_b"]


def test_report_section_scores_single_scale_decisions_at_the_largest_common_size(tmp_path):
    """capscale report's decisions section: one row per task and pair, scored against the held-out runs."""
    from capscale.ladder import load_ladder
    from capscale.report.decisions import decisions_section

    ladder = load_ladder("results/ladders/pythia.csv")
    ladder = ladder[ladder["task"].isin(["arc_easy", "piqa", "sciq"])]
    section = decisions_section(ladder, "acc", tmp_path)
    assert section is not None and section["error"] == ""
    assert sorted(r["task"] for r in section["table"]) == ["arc_easy", "piqa", "sciq"]
    assert all(r["actual_winner"] in ("pythia", "pythia-deduped") for r in section["table"])
    assert "of 3 right" in section["summary"]
    one_family = ladder[ladder["family"] == "pythia"]
    assert decisions_section(one_family, "acc", tmp_path) is None


def test_forecasting_methods_get_the_per_item_data_their_registry_kind_names():
    """Two-step and direct resample items (and pair recipes on them) only if decide hands them the item
    metrics; auto gets the per-choice rows; carry-forward reads none."""
    from capscale.decide import parse_method
    from capscale.decide.run import items_for

    items = {"choices": object(), "item_metrics": object()}
    for name in ("two-step", "direct", "single-scale", "loss-law:bpb_correct"):
        assert items_for(parse_method(name), items) is items["item_metrics"], name
    assert items_for(parse_method("auto"), items) is items["choices"]
    assert items_for(parse_method("carry-forward"), items) is None
