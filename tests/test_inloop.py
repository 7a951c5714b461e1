"""capscale.score inside a training loop: each step becomes a ladder point with the rows `capscale eval` writes."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

import capscale
from capscale.cli import main
from capscale.errors import CapscaleError

KEY = ["checkpoint", "task", "item", "choice"]


def tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    from capscale.tinymodels import model_config

    torch.manual_seed(seed)
    config = model_config("llama", len(tokenizer), d_model=32, n_layers=2, n_heads=4, max_length=64)
    return AutoModelForCausalLM.from_config(config)


def sorted_rows(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(KEY).reset_index(drop=True)


def test_import_capscale_stays_light():
    import subprocess

    code = "import sys, capscale; capscale.score; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_three_training_steps_become_three_ladder_points(tokenizer, mc_task, tmp_path):
    import torch

    model = tiny_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(1, len(tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    out, returned = tmp_path / "store", {}
    for step in (1, 2, 3):
        model.train()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        returned[step] = capscale.score(model, tokenizer, [str(mc_task)], checkpoint=f"tiny-step{step}", step=step,
                                        tokens=step * batch.numel(), out=out, family="tiny")
        assert model.training, "the model goes back to training mode"

    assert main(["summary", str(out), "--csv", str(tmp_path / "ladder.csv")]) == 0
    table = pd.read_csv(tmp_path / "ladder.csv")
    assert sorted(table["step"].unique()) == [1, 2, 3]
    assert set(table["model"]) == {"tiny"} and set(table["family"]) == {"tiny"}
    nll = table[table["metric"] == "nll_correct"].set_index("step")["value"]
    assert nll.nunique() == 3, "each step's weights give their own numbers"
    for step, metrics in returned.items():
        assert metrics["toymc"]["nll_correct"] == pytest.approx(nll[step])
    manifest = pd.read_csv(out / "checkpoints.csv").set_index("checkpoint")
    assert manifest.loc["tiny-step3", "tokens"] == 3 * batch.numel()
    assert manifest.loc["tiny-step3", "flops"] == pytest.approx(6 * manifest.loc["tiny-step3", "params"] * 384)

    # the same weights saved and scored by `capscale eval` give the same rows
    saved = tmp_path / "tiny-step3"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    assert main(["eval", "--model", str(saved), "--task", str(mc_task), "--out", str(tmp_path / "evaluated"),
                 "--no-progress"]) == 0
    inloop = sorted_rows(out / "choices")
    inloop = inloop[inloop["checkpoint"] == "tiny-step3"].reset_index(drop=True)
    evaluated = sorted_rows(tmp_path / "evaluated" / "choices")
    pd.testing.assert_frame_equal(inloop.drop(columns=["checkpoint", "logprob"]),
                                  evaluated.drop(columns=["checkpoint", "logprob"]))
    np.testing.assert_allclose(inloop["logprob"], evaluated["logprob"], rtol=1e-6)

    # a second call for a finished step reads the stored pair back instead of scoring again
    pair = next((out / "choices").glob("tiny-step3--*.parquet"))
    before = pair.stat().st_mtime_ns
    again = capscale.score(model, tokenizer, [str(mc_task)], checkpoint="tiny-step3", step=3, out=out)
    assert again == returned[3] and pair.stat().st_mtime_ns == before


def test_fsdp_is_refused_with_advice(tokenizer, mc_task, tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        model = fully_shard(tiny_model(tokenizer))
        with pytest.raises(CapscaleError, match="full state dict"):
            capscale.score(model, tokenizer, [str(mc_task)], checkpoint="x", out=tmp_path / "store")
    finally:
        dist.destroy_process_group()
    assert not (tmp_path / "store").exists(), "nothing is written for a refused model"


def split_worker(rank: int, checkpoint: str, task: str, out: str, rendezvous: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(AutoModelForCausalLM.from_pretrained(checkpoint))
        result = capscale.score(model, AutoTokenizer.from_pretrained(checkpoint), [task], checkpoint="ddp",
                                out=out, split=True)
        assert (result is None) == (rank != 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_split_the_items_and_rank0_writes_the_same_rows(checkpoints, mc_task, tmp_path):
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(checkpoints["llama"])
    mp.spawn(split_worker, args=(path, str(mc_task), str(tmp_path / "split"), str(tmp_path / "rdv")), nprocs=2)
    alone = capscale.score(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                           [str(mc_task)], checkpoint="ddp", out=tmp_path / "alone")
    split, single = (pd.read_parquet(tmp_path / s / "choices") for s in ("split", "alone"))
    pd.testing.assert_frame_equal(split.drop(columns="logprob"), single.drop(columns="logprob"))  # same order too
    np.testing.assert_allclose(split["logprob"], single["logprob"], rtol=1e-6)
    assert set(alone) == {"toymc"}
