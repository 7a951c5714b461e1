"""Many workers, one store: shards of a job array and a Ray cluster leave exactly the serial run's store,
also when a worker dies in the middle of a pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from capscale.cli import main
from capscale.errors import CapscaleError
from capscale.rayrun import placement
from capscale.shards import parse_shard, shard_of

REPO = Path(__file__).resolve().parents[1]
LIMIT = "8"  # items per task: the property does not need more, and the tests stay fast
KEY = ["checkpoint", "task", "item", "choice"]


def ladder_eval(spec: Path, out: Path, *extra: str) -> int:
    return main(["ladder-eval", str(spec), "--out", str(out), "--limit", LIMIT, "--no-progress", *extra])


def sample(spec: Path, out: Path, checkpoints: list[str], *extra: str) -> int:
    args = ["sample", "--ladder", str(spec), "--out", str(out), "--limit", "3", "--until", "1", "--max-samples",
            "6", "--batch", "8", "--no-progress", *extra]
    for name in checkpoints:
        args += ["--checkpoint", name]
    return main(args)


def sorted_frame(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    return df.sort_values(key).reset_index(drop=True)


def assert_same_store(out: Path, reference: Path) -> None:
    """Row for row the same per-choice rows and manifest (logprobs to float noise: workers use other thread counts)."""
    got, want = (sorted_frame(pd.read_parquet(p / "choices"), KEY) for p in (out, reference))
    assert not got.duplicated(KEY).any()
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got.drop(columns="logprob"), want.drop(columns="logprob"))
    np.testing.assert_allclose(got["logprob"], want["logprob"], rtol=1e-6)
    manifests = [sorted_frame(pd.read_csv(p / "checkpoints.csv"), ["checkpoint"]) for p in (out, reference)]
    pd.testing.assert_frame_equal(*manifests)
    assert not list(out.rglob(".*.tmp")), "no temporaries left behind"


def spec_checkpoints(smoke: Path) -> list[str]:
    return [c["checkpoint"] for c in yaml.safe_load((smoke / "ladder.yaml").read_text())["checkpoints"]]


@pytest.fixture(scope="module")
def serial(smoke_ladder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "store"
    assert ladder_eval(smoke_ladder / "ladder.yaml", out) == 0
    return out


def test_shards_partition_the_checkpoints_evenly_whatever_their_order():
    names = [f"run{k % 4}-step{k}" for k in range(10)]
    shards = [shard_of(names, i, 3) for i in (1, 2, 3)]
    assert set().union(*shards) == set(names)
    assert sum(len(s) for s in shards) == len(names)  # disjoint
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [shard_of(list(reversed(names)), i, 3) for i in (1, 2, 3)] == shards


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "2/1"])
def test_a_bad_shard_is_one_error_line(smoke_ladder, tmp_path, capsys, text):
    assert ladder_eval(smoke_ladder / "ladder.yaml", tmp_path / "out", "--shard", text) == 2
    assert capsys.readouterr().err.startswith("error: --shard")
    assert parse_shard(" 2 / 8 ") == (2, 8)


def test_ray_workers_get_one_gpu_each_or_share_the_cpus():
    gpu = placement({"GPU": 4, "CPU": 32}, "auto", None, n_groups=10)
    assert (gpu.device, gpu.workers, gpu.resources["num_gpus"]) == ("cuda", 4, 1)
    cpu = placement({"CPU": 8}, "auto", 2, n_groups=10)
    assert (cpu.device, cpu.workers, cpu.threads, cpu.resources) == ("cpu", 2, 4, {"num_cpus": 4})
    assert placement({"CPU": 8}, "cpu", None, n_groups=3).workers == 3  # never more workers than checkpoints
    with pytest.raises(CapscaleError, match="no GPU"):
        placement({"CPU": 8}, "cuda", None, n_groups=3)


@pytest.mark.slow
def test_three_shards_together_equal_the_serial_run_and_a_rerun_resumes(smoke_ladder, serial, tmp_path, capsys):
    spec, out = smoke_ladder / "ladder.yaml", tmp_path / "sharded"
    for i in (1, 2, 3):
        assert ladder_eval(spec, out, "--shard", f"{i}/3") == 0
    assert_same_store(out, serial)

    names = spec_checkpoints(smoke_ladder)
    second = shard_of(names, 2, 3)
    files = {p: p.stat().st_mtime_ns for p in (out / "choices").glob("*.parquet")}
    capsys.readouterr()
    assert ladder_eval(spec, out, "--shard", "2/3") == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in second) and not any(n in printed for n in set(names) - second)
    assert "done" not in printed.split("status", 1)[1]  # every pair of the shard was skipped
    assert {p: p.stat().st_mtime_ns for p in (out / "choices").glob("*.parquet")} == files


@pytest.mark.slow
def test_ray_equals_the_serial_run_and_a_worker_killed_mid_pair_is_retried(smoke_ladder, serial, tmp_path):
    ray = pytest.importorskip("ray")
    spec = smoke_ladder / "ladder.yaml"
    names = spec_checkpoints(smoke_ladder)
    marker = tmp_path / "worker-died"
    env = {"PYTHONPATH": str(REPO), "CAPSCALE_TEST_CRASH_PAIR": f"{names[3]}|arith|{marker}"}
    sampled = names[-1:]  # one checkpoint: one more worker to start, enough to show the sampling path
    assert sample(spec, tmp_path / "sample-serial", sampled) == 0

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.ray_crash.install"})
    try:
        assert ladder_eval(spec, tmp_path / "ray", "--ray") == 0
        assert marker.exists(), "the worker should have died on its first attempt at the pair"
        assert sample(spec, tmp_path / "sample-ray", sampled, "--ray") == 0
    finally:
        ray.shutdown()
    assert_same_store(tmp_path / "ray", serial)
    for folder, key in (("samples", ["checkpoint", "task", "item"]),
                        ("completions", ["checkpoint", "task", "item", "text"])):
        got, want = (sorted_frame(pd.read_parquet(tmp_path / s / folder), key) for s in ("sample-ray", "sample-serial"))
        pd.testing.assert_frame_equal(got, want)
