"""--holdout queries: the grammar the README and the backtests use works, and nothing in a query runs code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.ladder import LadderError, holdout_split
from capscale.query import query_mask


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "family": ["f", "f", "f", "g", "g"],
        "model": ["gpt2-xl", "opt-1.3b", "toy-s5", "toy-s1", "toy-s2"],
        "params": [1.5e9, 1.3e9, 4e6, 1e5, 4e5],
        "params_total": [1.6e9, 1.4e9, 5e6, 2e5, 5e5],
        "tokens": [3e10, 3e10, 8e7, 2e6, 8e6],
        "token_multiplier": [20, 640, 20, 20, 20],
        "greedy": [True, False, True, False, True],
        "loss:c4_val": [2.1, 2.2, 3.0, 4.0, 3.5],
        "checkpoint": pd.Series(["a", np.nan, "c", "d", "e"], dtype=object),
    })


@pytest.mark.parametrize("query, held", [
    ("model == 'toy-s5'", ["toy-s5"]),
    ("model in ['gpt2-xl', 'opt-1.3b']", ["gpt2-xl", "opt-1.3b"]),
    ("model not in ('gpt2-xl', 'opt-1.3b', 'toy-s1')", ["toy-s5", "toy-s2"]),
    ("params_total > 5e8 and not (params_total < 2e9 and token_multiplier == 20)", ["opt-1.3b"]),
    ("params > 1e9 or family == 'g' and params < 2e5", ["gpt2-xl", "opt-1.3b", "toy-s1"]),  # and binds tighter
    ("(params > 1e9) & ~(model == 'gpt2-xl') | (model == 'toy-s1')", ["opt-1.3b", "toy-s1"]),
    ("1e5 < params <= 4e6", ["toy-s5", "toy-s2"]),
    ("tokens / params > 20 * 1.05", ["opt-1.3b"]),
    ("6 * params * tokens > 1e20 and -params < -1.4e9", ["gpt2-xl"]),
    ("params ** 0.5 < 400 and params != 4e5", ["toy-s1"]),
    ("`loss:c4_val` - 1 > 2.6", ["toy-s1"]),
    ("greedy == True and family != 'f'", ["toy-s2"]),
    ("checkpoint == 'c' or checkpoint >= 'e'", ["toy-s5", "toy-s2"]),
    ("model == 'it''s' or model == \"toy-s1\"", ["toy-s1"]),  # adjacent literals concatenate, as in Python
])
def test_queries_select_the_rows_they_say(query, held):
    train, out = holdout_split(table(), query)
    assert out["model"].tolist() == held
    assert len(train) + len(out) == len(table())


def test_the_shipped_backtest_queries_run_on_the_shipped_ladders(tmp_path):
    from capscale.ladder import load_ladder

    pythia = load_ladder("results/ladders/pythia.csv")
    assert query_mask(pythia, "params > 3e9").any()
    pilot = load_ladder("results/ladders/inverse_scaling_pilot.csv")
    assert set(holdout_split(pilot, "model in ['gpt2-xl', 'opt-1.3b']")[1]["model"]) == {"gpt2-xl", "opt-1.3b"}


INJECTIONS = [
    "@pd.io.common.os.system('touch {marker}')",
    "__import__('os').system('touch {marker}')",
    "model == __import__('os').system('touch {marker}')",
    "model.__class__",
    "().__class__.__bases__",
    "params.apply(print)",
    "model.str.contains('x')",
    "params[0] == 1",
    "f'{{open(\"{marker}\", \"w\")}}' == 'x'",
    "(lambda: open('{marker}', 'w'))() == 1",
    "(m := open('{marker}', 'w')) == 1",
    "[open('{marker}', 'w') for _ in 'x'] == 1",
    "{{'a': 1}} == 1",
    "model is not None",
    "params if open('{marker}', 'w') else 1",
    "params @ params",
    "params % 2 == 0",
    "`model`.__class__",
    "b'x' == model",
    "None == params",
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_injection_attempts_are_errors_and_run_nothing(template, tmp_path):
    marker = tmp_path / "ran"
    query = template.format(marker=marker)
    with pytest.raises(LadderError) as err:
        holdout_split(table(), query)
    assert f"invalid holdout query {query!r}" in str(err.value)
    assert "not allowed" in str(err.value)
    assert not marker.exists()


def test_injection_through_the_cli_is_exit_2_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    ladder = tmp_path / "ladder.csv"
    ladder.write_text("family,model,params,tokens,task,metric,value\nf,a,1e6,2e7,t,acc,0.4\nf,b,2e6,4e7,t,acc,0.5\n")
    query = f"@pd.io.common.os.system('touch {marker}')"
    assert main(["backtest", str(ladder), "--holdout", query]) == 2
    assert capsys.readouterr().err.startswith("error: invalid holdout query")
    assert not marker.exists()


@pytest.mark.parametrize("query, message", [
    ("nosuch > 1", "unknown column 'nosuch'"),
    ("model > 5", "cannot compare 'model' (text) with '5' (number)"),
    ("params", "not a condition"),
    ("params and model == 'x'", "'params' is not a condition"),
    ("model + 'x' == 'y'", "arithmetic needs numbers, 'model' is text"),
    ("'a' * 100000000 == 'b'", "arithmetic needs numbers"),
    ("model in model", "'in' needs a list of literals"),
    ("params in [abs(1)]", "a function call is not allowed: 'abs(1)'"),
    ("[1, 2] == params", "a list is only allowed after 'in'"),
    ("params >> 3", "operator '>>' is not allowed: 'params >> 3'"),
    ("params >", "not a valid expression"),
    ("`unclosed > 1", "unclosed backtick"),
    ("", "empty query"),
])
def test_errors_name_the_offending_part(query, message):
    with pytest.raises(LadderError) as err:
        holdout_split(table(), query)
    assert message in str(err.value)


def test_huge_powers_do_not_hang():
    """Literals are floats: 10**10**10 is inf at once instead of a billion-digit integer."""
    assert query_mask(table(), "10 ** 10 ** 10 > params").all()
