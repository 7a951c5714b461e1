"""capscale.ingest against the real lm-eval CLI: one tiny run, then checks that our rows
reproduce lm-eval's own numbers exactly, plus hand-edited copies of its files for the
error and skip paths (cheap: no second lm-eval run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capscale.errors import StoreError
from capscale.ingest import ingest_lm_eval
from capscale.store import CHOICE_COLUMNS, ResultsStore

pytestmark = [
    pytest.mark.slow,
    # expected on every ingest of this run: the generative task is skipped, most calls pass no tokenizer
    pytest.mark.filterwarnings("ignore:skipped .*generate_until:UserWarning"),
    pytest.mark.filterwarnings("ignore:no tokenizer given:UserWarning"),
]

ITEMS = [
    {"id": "q1", "context": "The cat sat on the", "choices": ["mat.", "dog", "park in the city"], "gold": 0},
    {"id": "q2", "context": "Paris is the capital of", "choices": ["France.", "Spain", "the moon ünï"], "gold": 2},
    {"id": "q3", "context": "Two plus two is ", "choices": ["four.", "five."], "gold": 1},
    {"id": "q4", "context": "A dog runs in the", "choices": ["park.", "sky", "cat", "é"], "gold": 3},
    {"id": "q5", "context": "The sky is", "choices": ["blue today", "green"], "gold": 0},
    {"id": "q6", "context": "", "choices": ["Hello", "Bye bye"], "gold": 1},
]

# plain MC with index targets; string targets + a custom delimiter + mutual info + one shot; generative
TASK_YAMLS = {
    "tiny_mc": """
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list: [{metric: acc}, {metric: acc_norm}, {metric: acc_bytes}]
""",
    "tiny_mi": """
output_type: multiple_choice
doc_to_text: "Q: {{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{choices[gold]}}"
target_delimiter: " => "
fewshot_split: test
num_fewshot: 1
metric_list: [{metric: acc}, {metric: acc_norm}, {metric: acc_mutual_info}]
""",
    "tiny_gen": """
output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{choices[0]}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 3, do_sample: false}
metric_list: [{metric: exact_match}]
""",
}


@pytest.fixture(scope="module")
def lmeval_run(tmp_path_factory):
    """A tiny Llama, three tasks, and one real `lm_eval --log_samples` run over them."""
    from capscale.tinymodels import save_random_checkpoint, train_tokenizer

    root = tmp_path_factory.mktemp("lmeval")
    sentences = [it["context"] + " " + " ".join(it["choices"]) for it in ITEMS] * 10
    model_dir = save_random_checkpoint(root / "tinyllama", train_tokenizer(sentences, vocab_size=300), arch="llama")
    items_path = root / "items.jsonl"
    items_path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in ITEMS), encoding="utf-8")
    task_dir = root / "tasks"
    task_dir.mkdir()
    for name, body in TASK_YAMLS.items():
        head = f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {items_path}}}}}\n"
        (task_dir / f"{name}.yaml").write_text(head + "test_split: test\n" + body)
    out = root / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(root / "ds_cache"), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(TASK_YAMLS),
           "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "8",
           "--log_samples", "--output_path", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_path,) = out.rglob("results_*.json")
    return {"root": root, "model_dir": model_dir, "out": out, "run_dir": results_path.parent,
            "results": json.loads(results_path.read_text())}


def read_samples(run_dir: Path, task: str) -> list[dict]:
    (path,) = run_dir.glob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ingested(lmeval_run, tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("store"))
    report = ingest_lm_eval(lmeval_run["out"], store, tokenizer=str(lmeval_run["model_dir"]), progress=False)
    return store, report


def copy_run(lmeval_run, dest: Path) -> Path:
    """A private copy of the lm-eval output folder to corrupt."""
    target = dest / "run"
    shutil.copytree(lmeval_run["run_dir"], target)
    return target


def test_report_counts_pairs_and_skips_generation(ingested):
    store, report = ingested
    assert report.pairs_written == 2
    assert report.pairs_skipped_existing == 0
    assert report.n_rows == 2 * sum(len(it["choices"]) for it in ITEMS)
    assert [Path(f).name.split("_2")[0] for f, _ in report.tasks_skipped_not_mc] == ["samples_tiny_gen"]
    assert "generate_until" in report.tasks_skipped_not_mc[0][1]
    rows = store.read_choices()
    assert list(rows.columns) == CHOICE_COLUMNS
    assert set(rows["task"]) == {"tiny_mc", "tiny_mi"}  # generation rows never written


def test_rows_equal_lmeval_logprobs_and_targets(ingested, lmeval_run):
    store, _ = ingested
    rows = store.read_choices().sort_values(["task", "item", "choice"])
    for task in ("tiny_mc", "tiny_mi"):
        for sample in read_samples(lmeval_run["run_dir"], task):
            doc = sample["doc"]
            got = rows[(rows["task"] == task) & (rows["item"] == doc["id"])]
            n = len(doc["choices"])  # tiny_mi also holds n unconditional mutual-info requests: not choices
            assert len(got) == n
            assert got["logprob"].tolist() == [float(r[0][0]) for r in sample["resps"][:n]]
            assert got["greedy"].tolist() == [r[0][1] == "True" for r in sample["resps"][:n]]
            assert got["gold"].tolist() == [j == doc["gold"] for j in range(n)]
            assert got["n_chars"].tolist() == [len(c) for c in doc["choices"]]
            assert got["n_bytes"].tolist() == [len(c.encode("utf-8")) for c in doc["choices"]]
            assert (got["n_tokens"] > 0).all()


def test_acc_and_acc_norm_match_lmeval(ingested, lmeval_run):
    """Recomputing lm-eval's metrics from our rows gives its numbers: gold, logprobs and lengths are right."""
    store, _ = ingested
    rows = store.read_choices().sort_values(["task", "item", "choice"])
    for task in ("tiny_mc", "tiny_mi"):
        expected = lmeval_run["results"]["results"][task]
        per_item = {"acc": [], "acc_norm": [], "acc_bytes": []}
        for _, g in rows[rows["task"] == task].groupby("item"):
            gold = g["gold"].to_numpy()
            lp = g["logprob"].to_numpy()
            per_item["acc"].append(gold[np.argmax(lp)])
            per_item["acc_norm"].append(gold[np.argmax(lp / g["n_chars"].to_numpy())])
            per_item["acc_bytes"].append(gold[np.argmax(lp / g["n_bytes"].to_numpy())])
        for metric, values in per_item.items():
            if f"{metric},none" in expected:
                assert np.mean(values) == pytest.approx(expected[f"{metric},none"], abs=1e-12), (task, metric)
    assert "acc_bytes,none" in lmeval_run["results"]["results"]["tiny_mc"]


def test_manifest_and_run_note(ingested, lmeval_run):
    store, _ = ingested
    manifest = store.read_manifest()
    assert manifest["checkpoint"].tolist() == ["tinyllama"]
    row = manifest.iloc[0]
    assert row["family"] == "lm-eval" and row["model"] == "tinyllama"
    assert row["path"] == str(lmeval_run["model_dir"])
    assert row["params_total"] == lmeval_run["results"]["config"]["model_num_parameters"]
    assert 0 < row["params"] < row["params_total"]  # non-embedding, counted from config.json
    assert pd.isna(row["tokens"]) and pd.isna(row["flops"]) and pd.isna(row["step"])
    note = store.run_info("tinyllama", "tiny_mi")
    assert note["target_delimiter"] == " => " and note["num_fewshot"] == 1
    assert note["n_items_mutual_info_requests_dropped"] == len(ITEMS)


def test_second_ingest_writes_nothing(ingested, lmeval_run):
    store, _ = ingested
    before = {p.name: p.stat().st_mtime_ns for p in store.choices_dir.glob("*.parquet")}
    again = ingest_lm_eval(lmeval_run["out"], store, progress=False)
    assert again.pairs_written == 0 and again.n_rows == 0
    assert again.pairs_skipped_existing == 2
    assert {p.name: p.stat().st_mtime_ns for p in store.choices_dir.glob("*.parquet")} == before


def test_without_tokenizer_counts_are_unknown_and_names_are_settable(lmeval_run, tmp_path):
    store = ResultsStore(tmp_path / "store")
    with pytest.warns(UserWarning, match="token counts are unknown"):
        report = ingest_lm_eval(lmeval_run["out"], store, family="tiny", checkpoint="ckpt-A", progress=False)
    assert report.pairs_written == 2
    rows = store.read_choices()
    assert (rows["n_tokens"] == -1).all() and set(rows["checkpoint"]) == {"ckpt-A"}
    assert store.read_manifest()["family"].tolist() == ["tiny"]


def test_docs_without_ids_use_doc_id(lmeval_run, tmp_path):
    run_dir = copy_run(lmeval_run, tmp_path)
    (path,) = run_dir.glob("samples_tiny_mc_*.jsonl")
    samples = read_samples(run_dir, "tiny_mc")
    for s in samples:
        del s["doc"]["id"]
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    store = ResultsStore(tmp_path / "store")
    ingest_lm_eval(run_dir, store, progress=False)
    items = store.read_choices().query("task == 'tiny_mc'")["item"]
    assert sorted(set(items)) == sorted(str(s["doc_id"]) for s in samples)


def test_corrupted_line_names_file_and_line(lmeval_run, tmp_path):
    run_dir = copy_run(lmeval_run, tmp_path)
    (path,) = run_dir.glob("samples_tiny_mc_*.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # a truncated write
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(StoreError, match=rf"{path.name}:3\b"):
        ingest_lm_eval(run_dir, ResultsStore(tmp_path / "store"), progress=False)


def test_unresolvable_target_names_file_and_line(lmeval_run, tmp_path):
    run_dir = copy_run(lmeval_run, tmp_path)
    (path,) = run_dir.glob("samples_tiny_mi_*.jsonl")
    samples = read_samples(run_dir, "tiny_mi")
    samples[1]["target"] = "not a choice"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    with pytest.raises(StoreError, match=rf"{path.name}:2: target 'not a choice'"):
        ingest_lm_eval(run_dir, ResultsStore(tmp_path / "store"), progress=False)


def test_misread_tasks_are_skipped_not_written(lmeval_run, tmp_path):
    """Multiple-input tasks and rows that disagree with lm-eval's per-doc acc never reach the store."""
    run_dir = copy_run(lmeval_run, tmp_path)
    (mc_path,) = run_dir.glob("samples_tiny_mc_*.jsonl")
    mc = read_samples(run_dir, "tiny_mc")
    mc[0]["acc"] = 1.0 - mc[0]["acc"]
    mc_path.write_text("".join(json.dumps(s) + "\n" for s in mc), encoding="utf-8")
    (mi_path,) = run_dir.glob("samples_tiny_mi_*.jsonl")
    mi = read_samples(run_dir, "tiny_mi")
    for s in mi:  # winogrande style: one context per choice
        for k, arg in s["arguments"].items():
            arg["arg_0"] += k
    mi_path.write_text("".join(json.dumps(s) + "\n" for s in mi), encoding="utf-8")
    store = ResultsStore(tmp_path / "store")
    with pytest.warns(UserWarning, match="skipped"):
        report = ingest_lm_eval(run_dir, store, progress=False)
    assert report.pairs_written == 0
    reasons = dict((Path(f).name.split("_2")[0], r) for f, r in report.tasks_skipped_not_mc)
    assert "per-doc acc=" in reasons["samples_tiny_mc"] and f"{mc_path.name}:1" in reasons["samples_tiny_mc"]
    assert "multiple-input" in reasons["samples_tiny_mi"]
    assert not store.choices_dir.exists()


def test_one_name_for_several_models_is_refused(lmeval_run, tmp_path):
    run_dir = copy_run(lmeval_run, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (results_path,) = other.glob("results_*.json")
    results = json.loads(results_path.read_text())
    results["config"]["model_args"]["pretrained"] = "/elsewhere/bigger"
    results_path.write_text(json.dumps(results))
    with pytest.raises(StoreError, match="2 models"):
        ingest_lm_eval(tmp_path, ResultsStore(tmp_path / "store"), checkpoint="one", progress=False)


# --- names that never collide, metadata that makes a ladder -----------------------------------

def clone_run(lmeval_run, dest: Path, pretrained: str, n_right: int | None = None) -> Path:
    """A copy of the lm-eval output for the multiple-choice task only, as if run on ``pretrained``; with
    ``n_right`` the gold choice wins exactly on the first n_right items (a model of another size)."""
    run_dir = dest / "run"
    run_dir.mkdir(parents=True)
    (results_path,) = lmeval_run["run_dir"].glob("results_*.json")
    results = json.loads(results_path.read_text())
    results["config"]["model_args"]["pretrained"] = pretrained
    results["config"].pop("model_num_parameters", None)
    (run_dir / results_path.name).write_text(json.dumps(results))
    (samples_path,) = lmeval_run["run_dir"].glob("samples_tiny_mc_*.jsonl")
    samples = read_samples(lmeval_run["run_dir"], "tiny_mc")
    if n_right is not None:
        for k, s in enumerate(sorted(samples, key=lambda s: s["doc"]["id"])):
            gold = s["doc"]["gold"]
            for j, resp in enumerate(s["resps"]):
                resp[0][0] = str(-1.0 if (j == gold) == (k < n_right) else -2.0 - j)
            s.pop("acc", None), s.pop("acc_norm", None)
    (run_dir / samples_path.name).write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return run_dir


@pytest.mark.filterwarnings("ignore:.*is not a local directory:UserWarning")
def test_repeated_folder_names_get_names_from_the_path(lmeval_run, tmp_path):
    clone_run(lmeval_run, tmp_path / "src" / "a", "/ckpt/runA/step20")
    clone_run(lmeval_run, tmp_path / "src" / "b", "/ckpt/runB/step20")
    store = ResultsStore(tmp_path / "store")
    report = ingest_lm_eval(tmp_path / "src", store, progress=False)
    assert report.pairs_written == 2 and report.pairs_skipped_existing == 0
    manifest = store.read_manifest().set_index("checkpoint")
    assert manifest["path"].to_dict() == {"runA-step20": "/ckpt/runA/step20", "runB-step20": "/ckpt/runB/step20"}
    assert set(store.read_choices()["checkpoint"]) == {"runA-step20", "runB-step20"}
    again = ingest_lm_eval(tmp_path / "src" / "a", store, progress=False)  # one of them alone: the same name
    assert again.pairs_written == 0 and again.pairs_skipped_existing == 1
    clone_run(lmeval_run, tmp_path / "later", "/other/runA/step20")  # a third model, on its own later
    assert ingest_lm_eval(tmp_path / "later", store, progress=False).pairs_written == 1
    assert sorted(store.read_manifest()["checkpoint"]) == ["runA-step20", "runB-step20", "step20"]


@pytest.mark.filterwarnings("ignore:.*is not a local directory:UserWarning")
def test_one_name_with_other_numbers_is_an_error_naming_both(lmeval_run, tmp_path):
    """The same relative model path in two runs (two working folders), different results: never 'already present'."""
    clone_run(lmeval_run, tmp_path / "src" / "a", "step20", n_right=1)
    second = clone_run(lmeval_run, tmp_path / "src" / "b", "step20", n_right=2)
    with pytest.raises(StoreError) as err:
        ingest_lm_eval(tmp_path / "src", ResultsStore(tmp_path / "store"), progress=False)
    assert str(second) in str(err.value) and "src/a/run/samples_tiny_mc" in str(err.value)
    assert "other numbers" in str(err.value)


def test_rerun_registers_a_missing_manifest_row(ingested, lmeval_run, tmp_path):
    store = ResultsStore(tmp_path / "store")
    ingest_lm_eval(lmeval_run["out"], store, progress=False)
    store.manifest_path.write_text("checkpoint,family,params,tokens,flops,step,path,model,params_total\n")
    again = ingest_lm_eval(lmeval_run["out"], store, progress=False)
    assert again.pairs_written == 0 and store.read_manifest()["checkpoint"].tolist() == ["tinyllama"]


@pytest.mark.parametrize("kind", ["csv", "yaml"])
def test_meta_gives_the_scale_and_the_store_forecasts(lmeval_run, tmp_path, kind, capsys):
    from capscale.cli import main

    sizes = {k: 1e6 * 2 ** k for k in range(1, 7)}
    for k in sizes:
        clone_run(lmeval_run, tmp_path / "src" / f"m{k}", f"/ladder/m{k}", n_right=k)
    if kind == "csv":
        meta = tmp_path / "meta.csv"
        meta.write_text("checkpoint,family,model,params,tokens,step\n" + "".join(
            f"m{k},toy,m{k},{n:g},{20 * n:g},1000\n" for k, n in sizes.items()))
    else:
        meta = tmp_path / "meta.yaml"
        meta.write_text("family: toy\ncheckpoints:\n" + "".join(
            f"  - {{checkpoint: size{k}, model: run{k}, path: /ladder/m{k}, params: {n:g}, tokens: {20 * n:g}, "
            f"step: 1000}}\n" for k, n in sizes.items()))
    out = tmp_path / "store"
    assert main(["ingest-lm-eval", str(tmp_path / "src"), "--out", str(out), "--meta", str(meta), "--no-progress"]) == 0
    manifest = ResultsStore(out).read_manifest()
    assert set(manifest["family"]) == {"toy"} and len(manifest) == 6
    assert (manifest["flops"] == 6 * manifest["params"] * manifest["tokens"]).all()
    largest = manifest.loc[manifest["params"].idxmax()]
    assert largest["model"] == ("m6" if kind == "csv" else "run6")
    capsys.readouterr()
    code = main(["backtest", str(out), "--holdout", f"model == '{largest['model']}'", "--method", "direct",
                 "--metric", "acc", "--n-boot", "20", "--jobs", "1"])
    assert code == 0, capsys.readouterr().err
    assert "mean absolute error" in capsys.readouterr().out


def test_meta_without_an_entry_for_a_model_is_an_error(lmeval_run, tmp_path):
    clone_run(lmeval_run, tmp_path / "src" / "a", "/ladder/m1")
    clone_run(lmeval_run, tmp_path / "src" / "b", "/ladder/m2")
    meta = tmp_path / "meta.csv"
    meta.write_text("checkpoint,params,tokens\nm1,1e6,2e7\n")
    store = ResultsStore(tmp_path / "store")
    with pytest.raises(StoreError, match=r"no entry for /ladder/m2 \(checkpoint 'm2'\)"):
        ingest_lm_eval(tmp_path / "src", store, meta=meta, progress=False)
    assert not store.choices_dir.exists()


def test_corrupt_ingested_pair_is_named_and_repaired(lmeval_run, tmp_path):
    store = ResultsStore(tmp_path / "store")
    ingest_lm_eval(lmeval_run["out"], store, progress=False)
    before = store.read_choices().sort_values(["task", "item", "choice"]).reset_index(drop=True)
    bad = store.pair_path("tinyllama", "tiny_mc")
    bad.write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match=f"{bad}: corrupt or unreadable.*--repair"):
        ingest_lm_eval(lmeval_run["out"], store, progress=False)
    report = ingest_lm_eval(lmeval_run["out"], store, repair=True, progress=False)
    assert report.pairs_written == 1 and report.pairs_skipped_existing == 1
    after = store.read_choices().sort_values(["task", "item", "choice"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before)
