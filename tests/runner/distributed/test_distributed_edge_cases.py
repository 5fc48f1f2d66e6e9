"""
Data edge cases under DDP (two `torchrun` processes on gloo): short accumulation windows keep the replicas
identical, evaluating a train split counts each sample once, `infer` works with an empty shard, and a NaN loss on
one rank stops every rank together.

The worker (`workers/edge_worker.py`) runs once per module; the tests read what each rank saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).parents[1] / "workers" / "edge_worker.py"

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, torchrun) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp-edge")
    torchrun(WORKER, str(out_dir), timeout=240)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize("data", ["map_window", "stream_window"])
def test_a_short_last_accumulation_window_keeps_the_replicas_identical(ranks, data):
    for rank0, rank1 in zip(ranks[0][data], ranks[1][data]):
        torch.testing.assert_close(rank0, rank1, rtol=0, atol=0)


def test_evaluating_the_train_split_counts_each_sample_once(ranks):
    for report in ranks:
        assert report["evaluate"]["count"] == 37
        assert report["evaluate"]["loss"] == pytest.approx(report["evaluate"]["expected_loss"], rel=1e-5)


def test_infer_gathers_every_row_in_order_even_with_an_empty_shard(ranks):
    for report in ranks:
        evaluate = report["evaluate"]
        torch.testing.assert_close(evaluate["single"], evaluate["expected_rows"][:1])
        torch.testing.assert_close(evaluate["rows"], evaluate["expected_rows"])


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(ranks):
    for report in ranks:
        assert "non-finite training loss on split 'train' at epoch 0, step 2 (batch 1" in report["nan"]


def test_step_results_keep_a_meter_any_rank_updated_and_leave_out_one_no_rank_updated(ranks):
    rank0, rank1 = (report["meters"] for report in ranks)
    meters = [[{key: step.get(key) for key in ("loss", "rare")} for step in rank["steps"]] for rank in (rank0, rank1)]
    assert meters[0] == meters[1]  # reduced together: the same meters, the same values
    assert len(rank0["steps"]) == 5
    for step in rank0["steps"] + rank1["steps"]:
        assert "time" not in step or step["time"] == step["time"]  # telemetry's s/step, never the empty meter's nan
    assert ["rare" in step for step in rank0["steps"]] == [False, False, True, True, True]
    assert [step["rare"] for step in rank0["steps"][2:]] == [1.0, 1.0, 1.0]  # over the ranks that updated it
    for epoch in (rank0["epoch"], rank1["epoch"]):
        assert epoch["rare"] == 1.0  # the average over the updates of every rank
        assert "time" not in epoch
