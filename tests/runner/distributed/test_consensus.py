"""
A failure on one rank stops every rank promptly with an error naming that rank and its problem, instead of leaving
the others blocked in their next collective until `dist_timeout`: checkpoint writes of rank 0 (mid-epoch, at the
end of an epoch), background saves (`async_save`) and rank 0's half of a sharded (FSDP2) commit.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
import torch

from danling.runner.distributed.consensus import FailureConsensus, RankFailedError

WORKER = Path(__file__).parents[1] / "workers" / "rank_failure_worker.py"
DIST_TIMEOUT = 120  # what the worker sets: a rank left waiting would take this long
STEPS_PER_EPOCH = 4  # 32 samples, batch 4, on 2 ranks


# One process


def test_a_contained_failure_is_raised_by_agree_unchanged_in_one_process():
    failures = FailureConsensus()
    with failures.contain():
        raise OSError(errno.ENOSPC, "No space left on device")
    with failures.contain():
        raise ValueError("a later failure")  # the first one is kept
    assert failures.failed
    with pytest.raises(OSError, match="No space left") as raised:
        failures.agree()
    assert raised.value.errno == errno.ENOSPC
    assert not failures.failed
    assert failures.agree(signum=15) == 15  # nothing kept: the signal passes through


def test_contain_lets_an_agreed_failure_and_base_exceptions_through():
    failures = FailureConsensus()
    with pytest.raises(RankFailedError), failures.contain():
        raise RankFailedError(1, "OSError: x", world_size=2)
    with pytest.raises(KeyboardInterrupt), failures.contain():
        raise KeyboardInterrupt
    assert not failures.failed


def test_a_failed_epoch_end_save_raises_the_original_error_in_one_process(tmp_path):
    from ..workers.rank_failure_worker import Job

    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    config = {"log": False, "dir": str(tmp_path / "run"), "epoch_end": 2, "checkpoint_dir": str(blocker / "ckpt")}
    runner = Job({**config, "dataloader": {"batch_size": 4}})
    with pytest.raises(NotADirectoryError, match="blocker"):
        runner.train()
    assert runner.steps == 2 * STEPS_PER_EPOCH  # one process: 8 steps per epoch; stopped at the first save


# Two processes: rank 0 fails, rank 1 must not wait for dist_timeout


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict:
    out = tmp_path_factory.mktemp("rank-failure")
    started = time.monotonic()
    result = torchrun(WORKER, str(out), timeout=3 * DIST_TIMEOUT, check=False)
    wall = time.monotonic() - started
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {"result": result, "wall": wall, "reports": reports, "out": out}


CASES = ["sync_mid_epoch", "async_in_epoch", "async_no_signals", "async_last_save", "sharded_commit", "sync_epoch_end"]


def test_both_ranks_exit_non_zero_long_before_dist_timeout(launch):
    result = launch["result"]
    assert result.returncode != 0
    assert launch["wall"] < DIST_TIMEOUT, launch["wall"]  # six failures, none waited for the timeout
    assert result.stderr.count("RankFailedError: rank 0 of 2 failed: NotADirectoryError") == 2, result.stderr[-4000:]
    assert sorted(launch["reports"][0]) == sorted(CASES)
    assert sorted(launch["reports"][1]) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_every_rank_raises_naming_rank_0_and_its_problem_within_seconds(launch, case):
    rank0, rank1 = (reports[case] for reports in launch["reports"])
    for report in (rank0, rank1):
        assert report["outcome"] == "RankFailedError", report
        assert report["failed_rank"] == 0
        assert report["message"].startswith("rank 0 of 2 failed: ")
        assert report["seconds"] < DIST_TIMEOUT / 3, report  # a rank left waiting would take 120 s
    assert rank1["message"] == rank0["message"]  # rank 1 knows what went wrong on rank 0
    assert rank1["steps"] == rank0["steps"]  # and stopped at the same step
    assert rank0["cause"] is not None  # the original error is chained on the failing rank
    assert rank1["cause"] is None


def test_the_messages_name_the_file_and_the_cause(launch):
    reports = launch["reports"][1]  # what rank 1, which did not fail, says
    out = launch["out"]
    sync = reports["sync_mid_epoch"]["message"]
    assert f"{out}/sync_mid_epoch/rank0/checkpoints/latest.pth" in sync
    assert "No space left on device (the disk is full)" in sync
    for case in ("async_in_epoch", "async_no_signals", "async_last_save"):
        message = reports[case]["message"]
        assert "AsyncSaveError: background save of checkpoint" in message
        assert f"{out}/{case}/rank0/checkpoints/latest.pth" in message
        assert "the disk is full" in message
    assert "Input/output error renaming" in reports["sharded_commit"]["message"]
    assert "latest.dcp" in reports["sharded_commit"]["message"]
    assert f"Not a directory: '{out}/blocker/checkpoints'" in reports["sync_epoch_end"]["message"]


def test_each_failure_stops_the_run_where_it_happened(launch):
    reports = launch["reports"][1]
    assert reports["sync_mid_epoch"]["steps"] == 3  # save_steps=3: the first mid-epoch save
    assert reports["sync_epoch_end"]["steps"] == STEPS_PER_EPOCH  # the first epoch's save
    assert reports["sharded_commit"]["steps"] == STEPS_PER_EPOCH
    assert reports["async_last_save"]["steps"] == STEPS_PER_EPOCH  # the run's last save, found when draining
    for case in ("async_in_epoch", "async_no_signals"):  # found at a step boundary of the next epoch
        assert STEPS_PER_EPOCH < reports[case]["steps"] < 2 * STEPS_PER_EPOCH, reports[case]


def test_the_failure_is_in_rank_0s_log(launch):
    logs = list((launch["out"] / "sync_mid_epoch" / "rank0").rglob("run.log"))
    assert logs
    assert "rank 0: rank 0 of 2 failed: OSError" in logs[0].read_text()


pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def test_a_failed_sharded_commit_raises_its_error_in_one_process_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    from danling.runner.checkpointing import ShardedCheckpointManager, sharded

    manager = ShardedCheckpointManager(str(tmp_path))
    manager.save({"model": {"w": torch.ones(2)}}, steps=1, keep=0)

    def failing_swap(temporary: str, target: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sharded, "swap_into_place", failing_swap)
    with pytest.raises(OSError, match="Input/output error"):
        manager.save({"model": {"w": torch.zeros(2)}}, steps=2, keep=0)
    monkeypatch.undo()
    assert torch.equal(manager.load(manager.path("latest"))["model"]["w"], torch.ones(2))  # verified, intact


def test_a_preemption_save_that_fails_raises_its_error_not_preempted(tmp_path, monkeypatch):
    import os
    import signal

    from danling.runner.checkpointing import formats

    from ..workers.rank_failure_worker import Job

    def disk_full(self, state, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    config = {"log": False, "dir": str(tmp_path / "run"), "epoch_end": 2, "dataloader": {"batch_size": 4}}
    runner = Job({**config, "async_save": True})
    original = runner.optimizer_step

    def step_then_signal():
        original()
        if runner.steps == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    runner.optimizer_step = step_then_signal
    monkeypatch.setattr(formats.TorchFileFormat, "write", disk_full)
    with pytest.raises(OSError, match=r"latest\.pth.*the disk is full"):  # not Preempted: nothing was saved
        runner.train()
    assert runner.steps == 3
