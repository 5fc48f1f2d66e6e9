from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_distributed_worker.py")
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
    assert latest["reread_collectives"] == 0
    assert latest["input_ok"]
    assert latest["target_ok"]
    assert latest["input_shape"] == [3 + 5]  # rank 0's last batch (3) + rank 1's (5), (N, 1) stored flat
    assert latest["inputs_ok"]
    assert latest["batch_auroc"] == pytest.approx(latest["expected_batch_auroc"])
