"""The error contract: every ordinary mistake is one `error:` line naming what to fix, exit 2, no
traceback, and nothing written or lost. One row per mistake, each run through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capscale.cli import main

MC_LINE = json.dumps({"id": "a", "context": "the cat", "choices": ["sat", "ran"], "gold": 0})
GEN_LINE = json.dumps({"id": "g", "prompt": "the cat", "answer": "sat", "check": "exact", "max_new_tokens": 2})
LADDER_HEADER = "family,model,params,tokens,step,task,metric,value\n"


def mc_task(tmp: Path) -> Path:
    path = tmp / "mc.jsonl"
    path.write_text(MC_LINE + "\n")
    return path


def gen_task(tmp: Path) -> Path:
    path = tmp / "gen.jsonl"
    path.write_text(GEN_LINE + "\n")
    return path


def a_file(tmp: Path) -> Path:
    path = tmp / "not_a_folder"
    path.write_text("precious\n")
    return path


def ladder_csv(tmp: Path, rows: list[str]) -> Path:
    path = tmp / "ladder.csv"
    path.write_text(LADDER_HEADER + "".join(r + "\n" for r in rows))
    return path


def good_ladder_rows() -> list[str]:
    return [f"f,m{k},{10 ** (6 + k)},{2 * 10 ** (7 + k)},100,t,acc,{round(0.3 + 0.1 * k, 2)}" for k in range(4)]


def spec(tmp: Path, ckpt: Path, body: str) -> Path:
    path = tmp / "ladder.yaml"
    path.write_text(body.format(ckpt=ckpt, task=mc_task(tmp)))
    return path


def lm_eval_src(tmp: Path) -> Path:
    """The smallest folder ingest-lm-eval reads: one results file and one samples file of one run."""
    src = tmp / "lm_eval_out"
    src.mkdir()
    ts = "2024-01-01T00-00-00.000001"
    (src / f"results_{ts}.json").write_text(json.dumps({
        "config": {"model_args": {"pretrained": "/ckpt/m"}},
        "configs": {"t": {"output_type": "multiple_choice"}}}))
    sample = {"doc_id": 0, "doc": {"id": "q0"}, "target": "0", "arguments": {
        "gen_args_0": {"arg_0": "the cat", "arg_1": " sat"}, "gen_args_1": {"arg_0": "the cat", "arg_1": " ran"}},
        "resps": [[["-1.0", "True"]], [["-2.0", "False"]]]}
    (src / f"samples_t_{ts}.jsonl").write_text(json.dumps(sample) + "\n")
    return src


def tiny_store(tmp: Path) -> Path:
    import pandas as pd

    from capscale.store import ResultsStore

    store = ResultsStore(tmp / "store")
    store.upsert_checkpoint({"checkpoint": "m", "family": "f", "params": 1e6, "tokens": 2e7, "path": "/ckpt/m"})
    rows = pd.DataFrame({"checkpoint": "m", "task": "t", "item": ["q", "q"], "choice": [0, 1], "gold": [True, False],
                         "logprob": [-1.0, -2.0], "n_tokens": 1, "n_chars": 3, "n_bytes": 3, "greedy": False})
    store.write_pair("m", "t", rows, {})
    return store.root


def non_utf8(path: Path, first: str) -> Path:
    path.write_bytes(first.encode() + b"\n" + b'{"id": "b", "context": "caf\xe9"}\n')
    return path


# (id, argv builder (tmp, checkpoint) -> argv, what the error line must say)
CASES = [
    ("mc task not UTF-8", lambda t, c: ["eval", "--model", c, "--out", t / "o",
                                        "--task", non_utf8(t / "bad.jsonl", MC_LINE)], "bad.jsonl:2: not UTF-8"),
    ("gen task not UTF-8", lambda t, c: ["sample", "--model", c, "--out", t / "o",
                                         "--task", non_utf8(t / "bad.jsonl", GEN_LINE)], "bad.jsonl:2: not UTF-8"),
    ("sidecar not UTF-8", lambda t, c: ["eval", "--model", c, "--out", t / "o", "--task", mc_task(t)]
     if (t / "mc.yaml").write_bytes(b"name: caf\xe9\n") else [], "mc.yaml: not UTF-8"),
    ("task file missing", lambda t, c: ["eval", "--model", c, "--out", t / "o", "--task", t / "nope.jsonl"],
     "nope.jsonl: task file not found"),
    ("task is a folder", lambda t, c: ["eval", "--model", c, "--out", t / "o", "--task", t],
     "not a file (a task is one JSONL file)"),
    ("eval --out is a file", lambda t, c: ["eval", "--model", c, "--task", mc_task(t), "--out", a_file(t)],
     "not_a_folder: is a file; --out must name a results-store folder"),
    ("sample --out is a file", lambda t, c: ["sample", "--model", c, "--task", gen_task(t), "--out", a_file(t)],
     "not_a_folder: is a file"),
    ("ladder-eval --out is a file", lambda t, c: ["ladder-eval", spec(t, c, "checkpoints: [{{path: {ckpt}}}]\n"
                                                                      "tasks: [{task}]\n"), "--out", a_file(t)],
     "not_a_folder: is a file"),
    ("ingest --out is a file", lambda t, c: ["ingest-lm-eval", lm_eval_src(t), "--out", a_file(t)],
     "not_a_folder: is a file"),
    ("ladder params 0", lambda t, c: ["backtest", ladder_csv(t, good_ladder_rows() + ["f,z,0,2e7,100,t,acc,0.5"]),
                                      "--holdout", "model == 'm3'"], "params must be > 0, got 0 at line 6"),
    ("ladder tokens negative", lambda t, c: ["fit", ladder_csv(t, good_ladder_rows() + ["f,z,1e6,-2e7,0,t,acc,0.5"]),
                                             "--task", "t", "--out", t / "fit.json"], "tokens must be > 0"),
    ("ladder spec flops 0 after step 0", lambda t, c: ["ladder-eval", spec(
        t, c, "checkpoints: [{{path: {ckpt}, step: 10, flops: 0}}]\ntasks: [{task}]\n"), "--out", t / "o"],
     "checkpoints[1]: flops must be > 0 (0 only at step 0), got 0"),
    ("eval --params negative", lambda t, c: ["eval", "--model", c, "--task", mc_task(t), "--out", t / "o",
                                             "--params", "-5"], "--params must be > 0, got -5"),
    ("accuracy in percent", lambda t, c: ["backtest", ladder_csv(t, [r.replace(",0.", ",") + "0" for r in
                                                                     good_ladder_rows()]), "--holdout", "model == 'm3'"],
     "metric 'acc' has value 30 at line 2, line 3, line 4, line 5; percentages? divide by 100"),
    ("predict --flops 0", lambda t, c: ["predict", t / "fit.json", "--flops", "0"], "--flops must be a positive number"),
    ("predict --params negative", lambda t, c: ["predict", t / "fit.json", "--params=-1e9", "--tokens", "2e10"],
     "--params must be a positive number, got -1e+09"),
    ("predict on backtest records", lambda t, c: ["predict", (t / "bt.json").write_text("[{\"task\": \"t\"}]") and
                                                   t / "bt.json", "--flops", "1e20"],
     "not a capscale fit file; this looks like backtest records"),
    ("predict on a trends file", lambda t, c: ["predict", (t / "tr.json").write_text("{\"results\": []}") and
                                                t / "tr.json", "--flops", "1e20"], "not a capscale fit file"),
    ("eval --device tpu", lambda t, c: ["eval", "--model", c, "--task", mc_task(t), "--out", t / "o", "--device", "tpu"],
     "--device must be cpu, cuda, cuda:N, mps or auto; got 'tpu'"),
    ("sample --device cuda:x", lambda t, c: ["sample", "--model", c, "--task", gen_task(t), "--out", t / "o",
                                             "--device", "cuda:x"], "--device must be cpu, cuda, cuda:N, mps or auto"),
    ("eval --limit 0", lambda t, c: ["eval", "--model", c, "--task", mc_task(t), "--out", t / "o", "--limit", "0"],
     "--limit must be a whole number >= 1, got 0"),
    ("sample --limit -1", lambda t, c: ["sample", "--model", c, "--task", gen_task(t), "--out", t / "o",
                                        "--limit", "-1"], "--limit must be a whole number >= 1, got -1"),
    ("eval --token-budget 0", lambda t, c: ["eval", "--model", c, "--task", mc_task(t), "--out", t / "o",
                                            "--token-budget", "0"], "--token-budget must be >= 1"),
    ("empty ladder spec", lambda t, c: ["ladder-eval", spec(t, c, ""), "--out", t / "o"],
     "expected a mapping with a non-empty 'checkpoints' list"),
    ("ladder spec not UTF-8", lambda t, c: ["ladder-eval", (t / "s.yaml").write_bytes(b"family: caf\xe9\n") and
                                            t / "s.yaml", "--out", t / "o"], "s.yaml: not UTF-8"),
    ("summary of an empty folder", lambda t, c: ["summary", t], "no results"),
    ("ingest --meta missing", lambda t, c: ["ingest-lm-eval", lm_eval_src(t), "--out", t / "o", "--meta",
                                            t / "meta.csv"], "meta.csv: checkpoint metadata file not found"),
    ("summary --csv is a folder", lambda t, c: ["summary", tiny_store(t), "--csv", t], "Is a directory"),
]


@pytest.mark.parametrize("build, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ordinary_mistake_is_one_error_line_and_exit_2(build, message, tmp_path, checkpoints, capsys):
    argv = [str(a) for a in build(tmp_path, checkpoints["llama"])]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(argv + (["--no-progress"] if argv[0] in ("eval", "sample", "ladder-eval", "ingest-lm-eval")
                        else [])) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, err
    assert message in error_lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "choices").exists() and not (tmp_path / "o" / "samples").exists()
    assert {p: p.read_bytes() for p in before} == before  # nothing the user had is touched
