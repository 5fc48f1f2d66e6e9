from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_distributed_worker.py")
LATEST_WORKER = Path(__file__).with_name("_latest_batch_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_rank_averages_match_single_process(tmp_path: Path, torchrun):
    out = tmp_path / "result.json"
    torchrun(WORKER, str(out), timeout=170)
    data = json.loads(out.read_text())
    result, expected = data["result"], data["expected"]
    assert data["world_size"] == 2
    assert result["multiclass"]["auroc"] == pytest.approx(expected["multiclass_auroc"])
    assert result["multiclass"]["acc"] == pytest.approx(expected["multiclass_acc"])
    assert result["binary"]["auprc"] == pytest.approx(expected["binary_auprc"])
    assert result["batch_acc"] == pytest.approx(expected["acc"])  # one batch per rank: the batch is everything
    assert result["only_rank0"]["auroc"] == pytest.approx(expected["only_rank0_auroc"])
    assert result["meter"] == pytest.approx(expected["loss"])
    assert result["meters"]["loss"] == pytest.approx(expected["loss"])
    assert result["meters"]["rank0"] == 1.0
    assert result["meters"]["rank1"] == 2.0
    latest = result["latest"]  # rank 0's view; rank 1 read the same attributes (the gather is collective)
    assert latest["update_collectives"] == 0
    assert latest["read_collectives"] > 0
    assert latest["input_ok"]
    assert latest["target_ok"]
    assert latest["input_shape"] == [3 + 5]  # rank 0's last batch (3) + rank 1's (5), (N, 1) stored flat
    assert latest["inputs_ok"]
    assert latest["batch_auroc"] == pytest.approx(latest["expected_batch_auroc"])
    assert latest["value_auroc"] == pytest.approx(latest["expected_batch_auroc"])
    assert latest["local_value_auroc"] == pytest.approx(latest["expected_local_value_auroc"])


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_value_scores_the_latest_batch_of_every_rank_and_local_value_this_ranks(tmp_path: Path, torchrun):
    # The reference's `test_tensor_binary_distributed` scenario on 4 ranks, with uneven batches, a rank that has no
    # batch at the first step and one that skips a step (its latest batch is then the one before).
    world_size = 4
    torchrun(LATEST_WORKER, str(tmp_path), nproc=world_size, timeout=230)
    local_differs = False
    for rank in range(world_size):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world_size"] == world_size
        for step, data in enumerate(report["steps"]):
            expected, expected_local = data["expected"], data["expected_local"]
            assert data["update_collectives"] == 0, (rank, step)
            assert data["local_collectives"] == 0, (rank, step)
            assert data["input_in_rank_order"], (rank, step)
            for name in ("value", "val", "bat", "batch", "tasks"):
                assert data[name] == pytest.approx(expected), (rank, step, name)
            assert data["batch_score"] == pytest.approx(expected["auroc"])
            for name in ("local", "tasks_local"):
                assert data[name] == pytest.approx(expected_local, nan_ok=True), (rank, step, name)
            assert data["average"] == pytest.approx(data["expected_average"]), (rank, step)
            local_differs |= data["local"]["auroc"] != pytest.approx(expected["auroc"])
    assert local_differs  # the two views really differ somewhere
