"""capscale sample --backend vllm: the HF backend's rows and completions, drawn by vLLM (GPU only).

Runs only where a CUDA GPU and vLLM are present (evals/bench/gpu_bench.sh runs it); the request
building is tested everywhere (it needs neither)."""

from __future__ import annotations

import importlib.util
import json
import math

import pandas as pd
import pytest

from capscale.scoring.sampler import Prompt, SampleRun
from capscale.scoring.vllm_backend import completion_tokens, request_seed, vllm_requests


def test_requests_carry_token_ids_n_and_a_seed_per_item_and_first_sample():
    prompts = [Prompt((5, 6, 7), key=11, max_new_tokens=4, stop=("\n",)),
               Prompt((8,), key=12, max_new_tokens=2, stop=())]
    runs = [SampleRun(0, 0, 3), SampleRun(1, 4, 2), SampleRun(0, -1, 1)]
    requests = vllm_requests(prompts, runs, seed=7, temperature=0.8, top_p=0.9)
    assert [ids for ids, _, _ in requests] == [[5, 6, 7], [8], [5, 6, 7]]
    first, second, greedy = (params for _, params, _ in requests)
    assert (first["n"], first["max_tokens"], first["stop"]) == (3, 4, ["\n"])
    assert (first["temperature"], first["top_p"]) == (0.8, 0.9)
    assert first["seed"] == request_seed(7, 11, 0) != second["seed"] == request_seed(7, 12, 4)
    assert second["stop"] is None and greedy["temperature"] == 0.0 and "seed" not in greedy
    cold = vllm_requests(prompts, [SampleRun(1, 0, 5)], seed=7, temperature=0.0, top_p=1.0)
    assert [(params["n"], copies) for _, params, copies in cold] == [(1, 5)]  # one greedy completion, 5 copies
    assert request_seed(7, 11, 0) == request_seed(7, 11, 0) != request_seed(8, 11, 0)
    assert completion_tokens([3, 4, 0], eos_id=0) == [3, 4] and completion_tokens([3, 4], eos_id=0) == [3, 4]


needs_gpu_vllm = pytest.mark.skipif(
    not (importlib.util.find_spec("vllm") and __import__("torch").cuda.is_available()),
    reason="needs a CUDA GPU and vLLM (pip install 'capscale[vllm]')")


@pytest.fixture(scope="module")
def gpu_checkpoint(tmp_path_factory, tokenizer):
    """A random-init Llama vLLM can serve (head size 64) and a task whose answers are its own greedy
    completions, so that correctness is neither always nor never."""
    import torch

    from capscale.models import load_checkpoint
    from capscale.scoring.sampler import generate
    from capscale.tinymodels import save_random_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    path = save_random_checkpoint(root / "llama", tokenizer, arch="llama", d_model=128, n_layers=2, n_heads=2,
                                  max_length=256, seed=3)
    ck = load_checkpoint(str(path), device="cuda", dtype="bfloat16")
    prompts_text = [f"the cat sat on the mat {k}" for k in range(24)]
    prompts = [Prompt(tuple(tokenizer.encode(p, add_special_tokens=False)), k, 3, ())
               for k, p in enumerate(prompts_text)]
    with torch.no_grad():
        greedy = generate(ck.model, tokenizer, prompts, [SampleRun(k, -1, 1) for k in range(len(prompts))], seed=0,
                          temperature=0.0, top_p=1.0, device="cuda")
    task = root / "gen.jsonl"
    with task.open("w") as f:
        for k, (p, out) in enumerate(zip(prompts_text, greedy)):
            f.write(json.dumps({"id": f"g{k}", "prompt": p, "answer": tokenizer.decode(out[0]).strip(),
                                "check": "exact", "max_new_tokens": 3}) + "\n")
    del ck
    torch.cuda.empty_cache()
    return path, task


@needs_gpu_vllm
def test_vllm_backend_writes_the_hf_backends_rows(gpu_checkpoint, tmp_path):
    from capscale.cli import main

    path, task = gpu_checkpoint
    common = ["sample", "--model", str(path), "--task", str(task), "--until", "2", "--max-samples", "64",
              "--device", "cuda", "--dtype", "bfloat16", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "hf"), "--backend", "hf"]) == 0
    assert main(common + ["--out", str(tmp_path / "vllm"), "--backend", "vllm"]) == 0
    hf, vl = (pd.read_parquet(tmp_path / s / "samples") for s in ("hf", "vllm"))
    assert list(hf.columns) == list(vl.columns) and (hf.dtypes == vl.dtypes).all()
    assert list(hf["item"]) == list(vl["item"])
    # greedy decoding is deterministic on both: the same answers up to bf16 near-ties
    assert (hf["greedy_text"] == vl["greedy_text"]).mean() >= 0.9
    assert vl["greedy_correct"].mean() >= 0.9
    assert ((vl["n_correct"] <= 2) & (vl["n_drawn"] <= 64) & (vl["n_correct"] <= vl["n_drawn"])).all()
    assert set(vl["stop_reason"]) <= {"until", "budget"}
    # both sample the same distribution: the per-sample success rates agree within noise
    rates = [(s["n_correct"].sum(), s["n_drawn"].sum()) for s in (hf, vl)]
    p = sum(c for c, _ in rates) / sum(n for _, n in rates)
    z = (rates[0][0] / rates[0][1] - rates[1][0] / rates[1][1]) / math.sqrt(p * (1 - p) * sum(1 / n for _, n in rates))
    assert abs(z) < 4
    completions = pd.read_parquet(tmp_path / "vllm" / "completions")
    counts = completions.groupby("item")["count"].sum()
    assert (counts.reindex(vl["item"]).to_numpy() == vl["n_drawn"].to_numpy()).all()
    # a rerun finds the pair done and draws nothing
    assert main(common + ["--out", str(tmp_path / "vllm"), "--backend", "vllm"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "vllm" / "samples"), vl)
