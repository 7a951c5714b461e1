"""capscale's per-choice numbers are lm-eval's numbers (HF backend, float32, CPU).

The same JSONL file goes through lm-eval with a 4-line YAML and through ``capscale eval``;
every per-choice logprob must agree within 1e-4, greedy flags and acc / acc_norm exactly,
for two architectures and with contexts that need left truncation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from capscale.cli import main
from capscale.metrics import item_metrics
from tests.conftest import write_lm_eval_yaml


def run_lm_eval(checkpoint, task_file, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    write_lm_eval_yaml(tmp_path / "yaml", "toymc", task_file)
    manager = TaskManager(include_path=str(tmp_path / "yaml"), include_defaults=False)
    out = simple_evaluate(
        model="hf", model_args={"pretrained": str(checkpoint), "dtype": "float32"}, tasks=["toymc"],
        task_manager=manager, batch_size=8, device="cpu", log_samples=True,
    )
    return out["samples"]["toymc"], out["results"]["toymc"]


@pytest.mark.parametrize("task", ["mc_task", "fewshot_task"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_choice_logprobs_and_accuracy_equal_lm_eval(arch, task, checkpoints, request, tmp_path):
    """Also on a task whose items share a few-shot block (several items packed per row)."""
    task_file = request.getfixturevalue(task)
    samples, results = run_lm_eval(checkpoints[arch], task_file, tmp_path)
    store = tmp_path / "store"
    assert main(["eval", "--model", str(checkpoints[arch]), "--task", str(task_file), "--out", str(store),
                 "--no-progress"]) == 0
    ours = pd.read_parquet(store / "choices").set_index(["item", "choice"])

    n_compared, max_diff = 0, 0.0
    for s in samples:
        item = s["doc"]["id"]
        for j, resp in enumerate(s["resps"]):
            logprob, greedy = float(resp[0][0]), resp[0][1] in (True, "True")
            row = ours.loc[(item, j)]
            max_diff = max(max_diff, abs(row["logprob"] - logprob))
            assert bool(row["greedy"]) == greedy, (item, j)
            n_compared += 1
    assert n_compared == len(ours)
    assert max_diff < 1e-4

    per_item = item_metrics(ours.reset_index()).set_index("item")
    for s in samples:
        assert per_item.loc[s["doc"]["id"], "acc"] == s["acc"]
        assert per_item.loc[s["doc"]["id"], "acc_norm"] == s["acc_norm"]
    assert per_item["acc"].mean() == pytest.approx(results["acc,none"], abs=1e-12)
    assert per_item["acc_norm"].mean() == pytest.approx(results["acc_norm,none"], abs=1e-12)


def test_truncated_contexts_are_counted(checkpoints, mc_task, tmp_path):
    """The fixture task has long contexts every 6th item; the 64-token window forces truncation."""
    store = tmp_path / "store"
    assert main(["eval", "--model", str(checkpoints["llama"]), "--task", str(mc_task), "--out", str(store),
                 "--no-progress"]) == 0
    from capscale.store import ResultsStore

    info = ResultsStore(store).run_info("llama", "toymc")
    assert info["n_truncated_items"] == 4
    assert any("left-truncated" in w for w in info["warnings"])
    assert np.isfinite(pd.read_parquet(store / "choices")["logprob"]).all()


def test_lm_eval_task_spec_scores_the_same_strings(checkpoints, mc_task, tmp_path):
    """``--task lm-eval:NAME`` (items built by lm-eval's task objects) gives the JSONL task's rows."""
    write_lm_eval_yaml(tmp_path / "yaml", "toymc", mc_task)
    common = ["eval", "--model", str(checkpoints["gpt2"]), "--no-progress"]
    assert main(common + ["--task", str(mc_task), "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--task", "lm-eval:toymc", "--include-path", str(tmp_path / "yaml"),
                          "--out", str(tmp_path / "b")]) == 0
    a = pd.read_parquet(tmp_path / "a" / "choices").sort_values(["item", "choice"]).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "b" / "choices").sort_values(["item", "choice"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
