"""
Step evaluations (`eval_steps`) under DDP (two `torchrun` processes on gloo): every rank makes the same
evaluations at the same steps, each over the whole (unevenly sharded) val set, and a run resumed from a mid-epoch
checkpoint repeats none and misses none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).parents[1] / "workers" / "eval_steps_worker.py"

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, torchrun) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp-eval-steps")
    torchrun(WORKER, str(out_dir), timeout=240)
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_every_rank_evaluates_at_the_same_steps_over_the_whole_val_set(ranks):
    # 5 optimizer steps an epoch: every second step, and the epoch ends (5, 10); step 10 once.
    expected = [(0, 2), (0, 4), (0, 5), (1, 6), (1, 8), (1, 10)]
    for report in ranks:
        assert [(r["epoch"], r["step"]) for r in report["records"]] == expected
        assert report["evaluated"] == [step for _, step in expected]
    assert ranks[0]["records"] == ranks[1]["records"]  # the same numbers on every rank
    assert ranks[0]["records"][-1]["val"]["loss"] == pytest.approx(ranks[0]["final_val_loss"], abs=1e-6)


def test_a_run_resumed_from_a_mid_epoch_checkpoint_repeats_no_evaluation_and_misses_none(ranks):
    for report in ranks:
        assert report["resumed_from"] == 3
        assert [(r["epoch"], r["step"]) for r in report["resumed_records"]] == [
            (r["epoch"], r["step"]) for r in report["records"]
        ]
        assert report["resumed_evaluated"] == [4, 5, 6, 8, 10]
        for ours, straight in zip(report["resumed_records"], report["records"]):
            for split in ("train", "val"):
                if split in straight:
                    assert ours[split]["loss"] == pytest.approx(straight[split]["loss"], abs=1e-6)
