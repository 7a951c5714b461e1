"""Ladder-table I/O: strict loading, clear errors, the slices predictors use, and the shipped ladders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capscale.errors import CapscaleError
from capscale.ladder import (
    LadderError,
    final_checkpoints,
    holdout_split,
    load_ladder,
    metric_series,
    select,
)
from capscale.metrics import ladder_table
from capscale.store import ResultsStore

SHIPPED = Path(__file__).resolve().parents[1] / "results" / "ladders"
HEADER = "family,model,params,tokens,flops,step,task,metric,value"


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def ladder_frame() -> pd.DataFrame:
    """Two families, three models with intermediate steps, one extra column (token_multiplier)."""
    records = []
    for family, model, params, mult, steps in [
        ("f", "small", 1e6, 20, [100, 200, 300]),
        ("f", "big", 1e7, 20, [100, 250]),
        ("g", "over", 1e6, 640, [np.nan]),
    ]:
        for step in steps:
            tokens = params * mult * (1.0 if np.isnan(step) else step / 300)
            records.append({"family": family, "model": model, "params": params, "tokens": tokens,
                            "flops": 6 * params * tokens, "step": step, "task": "t", "metric": "acc",
                            "value": 0.5, "token_multiplier": mult, "stderr": 0.01})
    return pd.DataFrame.from_records(records)


# --- loading and validation ----------------------------------------------------------------

def test_missing_required_columns_named_with_file(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", ["family,model,params,step,task,metric", "f,m,1,2,t,acc"])
    with pytest.raises(LadderError) as err:
        load_ladder(path)
    assert str(path) in str(err.value)
    assert "['tokens', 'value']" in str(err.value)
    assert isinstance(err.value, CapscaleError)


def test_non_numeric_cell_names_its_csv_line_and_column(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", [
        HEADER,
        "f,m1,1e6,2e7,,10,t,acc,0.4",
        "f,m2,1e6,2e7,,10,t,acc,0.5",
        "f,m3,lots,2e7,,10,t,acc,0.6",
        "f,m4,oops,2e7,,10,t,acc,0.7",
    ])
    with pytest.raises(LadderError) as err:
        load_ladder(path)
    message = str(err.value)
    assert f"{path}: line 4" in message  # header is line 1, so the third data row is line 4
    assert "'params'" in message and "'lots'" in message


def test_non_numeric_cell_in_parquet_names_its_row(tmp_path):
    df = ladder_frame().astype({"value": object})
    df.loc[2, "value"] = "n/a"
    path = tmp_path / "ladder.parquet"
    df.astype({"value": str}).to_parquet(path)
    with pytest.raises(LadderError, match=r"row 3: column 'value' has non-numeric value 'n/a'"):
        load_ladder(path)


def test_nan_and_inf_values_are_errors_unless_dropped(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", [
        HEADER,
        "f,m1,1e6,2e7,,10,t,acc,0.4",
        "f,m2,1e6,2e7,,10,t,acc,",
        "f,m3,1e6,2e7,,10,t,acc,inf",
        "f,m4,1e6,2e7,,10,t,acc,0.7",
    ])
    with pytest.raises(LadderError) as err:
        load_ladder(path)
    assert str(path) in str(err.value) and "line 3, line 4" in str(err.value)
    with pytest.warns(UserWarning, match=r"dropped 2 row\(s\)"):
        df = load_ladder(path, drop_nonfinite=True)
    assert list(df["model"]) == ["m1", "m4"]


def test_flops_filled_from_params_and_tokens_only_where_missing(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", [
        HEADER,
        "f,a,1e6,2e7,,10,t,acc,0.4",
        "f,b,1e6,2e7,5e15,10,t,acc,0.5",
        "f,c,1e6,,,10,t,acc,0.6",
    ])
    df = load_ladder(path).set_index("model")
    assert df.loc["a", "flops"] == pytest.approx(6 * 1e6 * 2e7)
    assert df.loc["b", "flops"] == 5e15
    assert math.isnan(df.loc["c", "flops"])


def test_absent_flops_and_step_columns_mean_6nd_and_final(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", ["family,model,params,tokens,task,metric,value,arch",
                                               "f,a,1e6,2e7,t,loss,3.1,d=96"])
    df = load_ladder(path)
    assert list(df.columns[:9]) == HEADER.split(",") and df.columns[9] == "arch"
    assert df.loc[0, "flops"] == pytest.approx(1.2e14)
    assert math.isnan(df.loc[0, "step"])
    assert len(final_checkpoints(df)) == 1


def test_unknown_format_and_missing_file_are_clear(tmp_path):
    odd = tmp_path / "ladder.txt"
    odd.write_text(HEADER + "\n")
    with pytest.raises(LadderError, match="unknown ladder format"):
        load_ladder(odd)
    with pytest.raises(LadderError, match="no such ladder file"):
        load_ladder(tmp_path / "absent.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(LadderError, match="results store"):
        load_ladder(tmp_path / "folder")


def test_parquet_round_trip_keeps_extra_columns(tmp_path):
    path = tmp_path / "ladder.parquet"
    ladder_frame().to_parquet(path)
    df = load_ladder(path)
    assert len(df) == 6 and "token_multiplier" in df.columns and df["value"].dtype == float


# --- results store ----------------------------------------------------------------------

def choice_rows(checkpoint: str, margins: list[float]) -> pd.DataFrame:
    """Two-choice items; the gold choice 0 wins where the margin is positive."""
    records = []
    for i, margin in enumerate(margins):
        for choice, lp in ((0, -1.0), (1, -1.0 - margin)):
            records.append({"checkpoint": checkpoint, "task": "toy", "item": f"q{i}", "choice": choice,
                            "gold": choice == 0, "logprob": lp, "n_tokens": 1, "n_chars": 3, "n_bytes": 3,
                            "greedy": False})
    return pd.DataFrame.from_records(records)


def test_results_store_folder_is_accepted(tmp_path):
    store = ResultsStore(tmp_path / "out")
    for name, params, margins in (("s", 1e6, [1.0, -1.0, -1.0, 1.0]), ("l", 4e6, [1.0, 1.0, 1.0, -1.0])):
        store.upsert_checkpoint({"checkpoint": name, "family": "toy", "params": params, "tokens": 2e7,
                                 "flops": None, "step": 500, "path": f"/ckpt/{name}", "model": name})
        store.write_pair(name, "toy", choice_rows(name, margins), {"note": "test"})
    df = load_ladder(store.root)
    acc = df[(df["metric"] == "acc")].set_index("model")["value"]
    assert acc["s"] == pytest.approx(0.5) and acc["l"] == pytest.approx(0.75)
    assert (df["flops"] == 6 * df["params"] * df["tokens"]).all()  # manifest had no flops
    assert {"checkpoint", "stderr", "n_items", "chance"} <= set(df.columns)
    assert set(metric_series(df, "toy", "acc").columns) >= {"params", "tokens", "flops", "step", "value",
                                                            "stderr", "n_items", "chance"}


# --- slices -----------------------------------------------------------------------------

def test_final_checkpoints_picks_each_models_max_step():
    final = final_checkpoints(ladder_frame())
    got = {(m, None if np.isnan(s) else s) for m, s in zip(final["model"], final["step"])}
    assert got == {("small", 300.0), ("big", 250.0), ("over", None)}


def test_holdout_split_with_a_query_on_an_extra_column():
    df = ladder_frame()
    train, held = holdout_split(df, "token_multiplier > 100 or (family == 'f' and params >= 1e7)")
    assert set(held["model"]) == {"over", "big"}
    assert set(train["model"]) == {"small"}
    assert len(train) + len(held) == len(df)


@pytest.mark.parametrize("query", ["params >> 3", "nosuch > 1", "params >"])
def test_bad_holdout_query_quotes_query_and_pandas_message(query):
    with pytest.raises(LadderError) as err:
        holdout_split(ladder_frame(), query)
    assert f"invalid holdout query {query!r}" in str(err.value)
    assert len(str(err.value)) > len(f"invalid holdout query {query!r}: ")


def test_holdout_query_matching_nothing_or_everything_is_an_error():
    with pytest.raises(LadderError, match="matches no rows"):
        holdout_split(ladder_frame(), "params > 1e12")
    with pytest.raises(LadderError, match="nothing is left to fit"):
        holdout_split(ladder_frame(), "params > 0")


def test_select_and_metric_series():
    df = ladder_frame()
    assert len(select(df, task="t", metric=["acc", "nll_correct"])) == 6
    with pytest.raises(LadderError, match="no rows for task='x'"):
        select(df, task="x")
    series = metric_series(df, "t", "acc")
    assert list(series.columns) == ["family", "model", "params", "tokens", "flops", "step", "value", "stderr"]
    assert len(series) == 6


def test_metric_series_duplicates_name_the_key_and_the_varying_column():
    df = ladder_frame()
    df["num_fewshot"] = 0
    five = df[df["model"] == "big"].assign(num_fewshot=5)
    with pytest.raises(LadderError) as err:
        metric_series(pd.concat([df, five], ignore_index=True), "t", "acc")
    assert "('f', 'big', 100.0)" in str(err.value) and "num_fewshot" in str(err.value)


# --- shipped public ladders ------------------------------------------------------------------

@pytest.mark.parametrize("name, families", [
    ("pythia.csv", {"pythia", "pythia-deduped"}),
    ("pythia_arithmetic.csv", {"pythia-v0-deduped"}),
    ("openlm_overtraining.csv", {"openlm-c4_original", "openlm-rpj", "openlm-rw_original"}),
    ("inverse_scaling_pilot.csv", {"gpt2", "opt"}),
])
def test_shipped_ladder_loads_with_expected_families(name, families):
    df = load_ladder(SHIPPED / name)
    assert set(df["family"]) == families
    assert (df["params"] < df["params_total"]).all()  # params = non-embedding


def test_shipped_openlm_has_the_17_task_average_for_every_model():
    df = load_ladder(SHIPPED / "openlm_overtraining.csv")
    avg = df[df["task"] == "avg_top1_error_17"]
    assert len(avg) == df["model"].nunique() == 104 and set(avg["metric"]) == {"err"}
    model = "rpj-open_lm_7b-1.0"
    subset = ["bigbench_operators", "pubmed_qa_labeled", "hellaswag_zeroshot", "boolq", "arc_easy", "coqa",
              "bigbench_dyck_languages", "lambada_openai", "bigbench_novel_concepts", "winograd",
              "bigbench_cs_algorithms", "commonsense_qa", "bigbench_qa_wikidata", "hellaswag", "copa", "squad",
              "piqa"]
    accs = df[(df["model"] == model) & df["task"].isin(subset) & (df["metric"] == "acc")]["value"]
    assert len(accs) == 17
    assert avg.set_index("model").loc[model, "value"] == pytest.approx(float(np.mean(1 - accs)))


def test_shipped_inverse_scaling_choices_reproduce_the_aggregate_accuracy():
    items = pd.read_csv(SHIPPED / "inverse_scaling_pilot_items.csv.gz")
    items = items[items["task"].isin(["QA-v1-gpt2", "syllogism-0shot-opt"])].astype({"item": str})
    manifest = pd.read_csv(SHIPPED / "inverse_scaling_pilot_checkpoints.csv")
    ours = ladder_table(items, manifest)
    ours = ours[ours["metric"] == "acc"].set_index(["checkpoint", "task"])["value"]
    aggregate = load_ladder(SHIPPED / "inverse_scaling_pilot.csv")
    theirs = aggregate[aggregate["metric"] == "acc"].set_index(["checkpoint", "task"])["value"]
    assert len(ours) == 7
    np.testing.assert_allclose(ours.to_numpy(), theirs.loc[ours.index].to_numpy(), atol=1e-6)


# --- impossible values ---------------------------------------------------------------------

@pytest.mark.parametrize("row, message", [
    ("f,m2,0,2e7,,10,t,acc,0.5", "params must be > 0, got 0 at line 3"),
    ("f,m2,-1e6,2e7,,10,t,acc,0.5", "params must be > 0, got -1e+06 at line 3"),
    ("f,m2,1e6,0,,10,t,acc,0.5", "tokens must be > 0 (0 only at step 0), got 0 at line 3"),
    ("f,m2,1e6,-5,,0,t,acc,0.5", "tokens must be > 0 (0 only at step 0), got -5 at line 3"),
    ("f,m2,1e6,2e7,0,10,t,acc,0.5", "flops must be > 0 (0 only at step 0), got 0 at line 3"),
    ("f,m2,1e6,0,,,t,acc,0.5", "tokens must be > 0"),  # no step: a final checkpoint, not an initial one
    ("f,m2,1e6,2e7,,10,t,acc,45.2", "metric 'acc' has value 45.2 at line 3; percentages? divide by 100"),
    ("f,m2,1e6,2e7,,10,t,pass_at_8,1.5", "metric 'pass_at_8' has value 1.5"),
    ("f,m2,1e6,2e7,,10,t,err,-0.1", "metric 'err' has value -0.1"),
    ("f,m2,1e6,2e7,,10,t,brier,2.5", "metric 'brier' has value 2.5"),
])
def test_impossible_scales_and_percentages_are_errors_naming_the_line(tmp_path, row, message):
    path = write_csv(tmp_path / "ladder.csv", [HEADER, "f,m1,1e6,2e7,,10,t,acc,0.4", row])
    with pytest.raises(LadderError) as err:
        load_ladder(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_initial_checkpoints_and_bounded_metrics_inside_their_range_load(tmp_path):
    path = write_csv(tmp_path / "ladder.csv", [
        HEADER,
        "f,m1,1e6,0,0,0,t,acc,0.25",         # step 0: nothing trained yet
        "f,m1,1e6,2e7,,10,t,brier,1.4",      # multi-class Brier goes up to 2
        "f,m1,1e6,2e7,,10,t,nll_correct,35",  # losses are unbounded
        "f,m1,1e6,2e7,,10,t,acc,1.0",
    ])
    assert len(load_ladder(path)) == 4


@pytest.mark.parametrize("path", sorted(str(p) for p in SHIPPED.glob("*.csv")
                                        if not p.name.endswith("_checkpoints.csv"))
                         + ["results/toy", "results/toy/ladder.csv"])
def test_every_shipped_ladder_still_loads(path):
    assert len(load_ladder(Path(__file__).resolve().parents[1] / path)) > 0
