"""
`TorchRunner` under DDP on CPU: two `torchrun` processes on gloo, checked through the files each rank writes.

The worker (`workers/ddp_worker.py`) runs once per module; every test below reads what the ranks reported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORKERS = Path(__file__).parents[1] / "workers"
LAUNCH_TIMEOUT = 240  # seconds; the launch itself takes ~10 s of CPU, but CI machines are shared

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict[str, Any]:
    r"""Run the DDP worker once; return each rank's JSON report, tensors and the output directory."""
    out_dir = tmp_path_factory.mktemp("ddp")
    torchrun(WORKERS / "ddp_worker.py", str(out_dir), timeout=LAUNCH_TIMEOUT)
    reports = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    tensors = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    return {"reports": reports, "tensors": tensors, "out_dir": out_dir}


def test_both_ranks_join_one_gloo_group(ranks):
    reports = ranks["reports"]
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["runner_rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["world_size"] == report["runner_world_size"] == report["env_world_size"] == 2
        assert report["backend"] == "gloo"
        assert report["wrapped"] == "DistributedDataParallel"


def test_id_timestamp_and_seed_agree_across_ranks(ranks):
    # Rank 1 was started with another timestamp, seed and config: it must have adopted rank 0's.
    rank0, rank1 = ranks["reports"]
    assert rank1["timestamp"] == rank0["timestamp"] != "999999999999"
    assert rank1["id"] == rank0["id"]
    assert rank0["seed"] == rank1["seed"] == 1


def test_drawn_seed_agrees_across_ranks(ranks):
    rank0, rank1 = ranks["reports"]
    assert rank0["drawn_config_seed"] == rank0["drawn_seed"]
    assert rank1["drawn_seed"] == rank0["drawn_seed"]


def test_replicas_start_and_end_identical(ranks):
    tensors0, tensors1 = ranks["tensors"]
    # The ranks built their models from different random weights; DDP must have broadcast rank 0's.
    for name in ("initial", "final"):
        assert len(tensors0[name]) == len(tensors1[name]) == 2
        for p0, p1 in zip(tensors0[name], tensors1[name]):
            assert torch.equal(p0, p1), name
    assert not all(torch.equal(a, b) for a, b in zip(tensors0["initial"], tensors0["final"])), (
        "training changed nothing"
    )


def test_result_files_written_once_by_rank_zero(ranks):
    rank0, rank1 = ranks["reports"]
    run_dir = ranks["out_dir"] / "run"
    assert rank0["run_dir"] == rank1["run_dir"] == str(run_dir)
    assert rank1["writes"] == []
    for name in ("results.json", "latest.json", "checkpoints/latest.pth"):
        assert (run_dir / name).is_file()
        # Once per epoch (two epochs), by rank 0 only.
        assert rank0["writes"].count(name) == 2, name
    assert sorted(p.name for p in ranks["out_dir"].iterdir() if p.is_dir()) == ["accum", "run"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["id"] == rank0["id"]
    assert saved["timestamp"] == rank0["timestamp"]
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # the RNG state of each rank


def test_only_rank_zero_logs_and_writes_tensorboard(ranks):
    rank0, rank1 = ranks["reports"]
    assert rank0["logger_is_none"] is False
    assert rank1["logger_is_none"] is True
    assert rank0["writer_is_none"] is False
    assert rank1["writer_is_none"] is True
    assert len(list((ranks["out_dir"] / "run").glob("events.out.tfevents.*"))) == 1
    log = (ranks["out_dir"] / "run" / "run.log").read_text()
    # One line per epoch: a second rank writing the same file would double them.
    assert log.count("epoch [0/1]") == 1
    assert log.count("epoch [1/1]") == 1


def test_epoch_losses_are_identical_across_ranks(ranks):
    rank0, rank1 = ranks["reports"]
    assert rank0["results"] == rank1["results"]  # timings included: summed or averaged over the ranks
    assert sorted(rank0["results"]) == ["0", "1"]


def test_epoch_throughput_counts_the_samples_of_every_rank(ranks):
    results = ranks["reports"][0]["results"]["0"]
    for split, samples in (("train", 64), ("val", 37)):
        result = results[split]
        assert result["samples_per_s"] * result["epoch_time"] == pytest.approx(samples, rel=1e-6)
        assert result["data_time"] + result["compute_time"] == pytest.approx(result["epoch_time"])


def test_evaluation_loss_is_the_sample_weighted_mean_over_all_ranks(ranks):
    rank0, rank1 = ranks["reports"]
    # 37 samples: shards of 19 and 18, evaluated in batches of 4 (last batches of 3 and 2).
    assert sorted([rank0["val_shard_length"], rank1["val_shard_length"]]) == [18, 19]
    expected = rank0["expected_val_loss"]  # the whole val set in one process, from the final model
    assert rank1["expected_val_loss"] == pytest.approx(expected, rel=1e-6)
    for report in (rank0, rank1):
        assert report["results"]["1"]["val"]["loss"] == pytest.approx(expected, rel=1e-5)
        assert report["evaluate_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert rank0["evaluate_val_loss"] == rank1["evaluate_val_loss"]


def test_infer_gathers_every_sample_in_dataset_order(ranks):
    for tensors in ranks["tensors"]:
        predictions, expected = tensors["infer"], tensors["expected_infer"]
        assert predictions.shape == expected.shape == (37, 1)
        assert torch.allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(ranks["tensors"][0]["infer"], ranks["tensors"][1]["infer"])


def test_gradient_accumulation_under_ddp(ranks):
    for report in ranks["reports"]:
        accum = report["accum"]
        # 64 samples / 2 ranks / batch 4 = 8 micro-steps per epoch, 2 epochs, accum_steps=2.
        assert accum["micro_steps_per_epoch"] == 8
        assert accum["steps"] == 8
        assert accum["optimizer_step"] == 8
        # no_sync on the first micro-step of each window: one gradient all-reduce per optimizer step, not 16.
        assert accum["allreduce"] == 8
    tensors0, tensors1 = ranks["tensors"]
    for p0, p1, reference in zip(tensors0["accum_final"], tensors1["accum_final"], tensors0["accum_reference"]):
        assert torch.equal(p0, p1)
        # Each step equals one SGD step on the mean gradient of the 16 samples of its window.
        assert torch.allclose(p0, reference, rtol=1e-5, atol=1e-6)


def test_accumulate_without_ddp_wrapper(tmp_path, subprocess_run):
    result = subprocess_run([sys.executable, str(WORKERS / "single_worker.py"), str(tmp_path)], timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "single.json").read_text())
    assert report["world_size"] == 1
    assert report["distributed"] is False
    assert report["model_type"] == "Linear"
    assert report["steps_seen"] == [0, 1, 1, 2]
