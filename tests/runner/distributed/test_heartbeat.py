"""
A hung rank is named: when a collective runs past `dist_timeout`, the error on rank 0 names the rank that did not
arrive with its last step and phase, and every rank that can still act writes its Python stack to
`stacks/rank{r}.txt` in the run directory. The heartbeat behind it is a background thread that stops with `train()`.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import distributed as dist

from danling.runner.distributed.hangs import RankHungError, describe_hang, is_timeout
from danling.runner.distributed.heartbeat import Heartbeat, HeartbeatBoard, Watchdog

WORKER = Path(__file__).parents[1] / "workers" / "hang_worker.py"
HANG_AT_STEP = 3  # where the worker's rank 1 stops, inside `train_step`

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def exit_statuses(launcher_output: str) -> dict[int, int]:
    # torchrun's failure summary: "rank : R (local_rank: L)" followed by "exitcode : S", for every rank that failed.
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", launcher_output)
    return {int(rank): int(status) for rank, status in found}


@pytest.mark.distributed
def test_a_rank_hung_in_train_step_is_named_and_every_rank_writes_its_stack(tmp_path, torchrun):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = torchrun(WORKER, str(run_dir), "20", timeout=120, check=False)  # kills the group on timeout
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert elapsed < 60, f"the hang took {elapsed:.0f} s to end"
    statuses = exit_statuses(output)
    assert set(statuses) == {0, 1}, output[-4000:]  # both ranks failed...
    assert 0 not in statuses.values(), statuses  # ...with a non-zero status
    log = (run_dir / "run.log").read_text()  # rank 0's log
    named = re.search(r"rank 1 did not arrive: step (\d+) in (\w+)", log)
    assert named is not None, log[-3000:]
    assert (int(named.group(1)), named.group(2)) == (HANG_AT_STEP, "train_step")
    assert "collective timed out after 20 s (dist_timeout)" in log
    hung_stack = (run_dir / "stacks" / "rank1.txt").read_text()
    assert "in stall_here" in hung_stack
    assert "in train_step" in hung_stack
    waiting_stack = (run_dir / "stacks" / "rank0.txt").read_text()
    assert "Timed out" in waiting_stack
    assert "backward" in waiting_stack


@pytest.mark.distributed
def test_a_healthy_run_writes_no_stacks_and_stops_its_heartbeat_thread(tmp_path, torchrun):
    run_dir = tmp_path / "run"
    torchrun(WORKER, str(run_dir), "5", "healthy", timeout=120)
    assert not (run_dir / "stacks").exists()
    for rank in range(2):
        threads = json.loads((run_dir / f"threads-rank{rank}.json").read_text())
        assert not [name for name in threads if name.startswith("danling-heartbeat")], threads


# One process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def board():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True, timeout=timedelta(seconds=10))
    return HeartbeatBoard(store, "test")


def test_the_watchdog_publishes_the_phase_and_progress_the_loop_sets(tmp_path, board):
    heartbeat = Heartbeat()
    position = {"step": 0, "batch": 0}
    progress = lambda: (position["step"], position["batch"])  # noqa: E731
    watchdog = Watchdog(board, 0, 2, progress, lambda: heartbeat.phase, str(tmp_path / "rank0.txt"), timeout=5)
    heartbeat.enter("train")
    position.update(step=7, batch=3)
    watchdog.start()
    deadline = time.monotonic() + 10
    while board.beats(2)[0] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    beats = board.beats(2)
    watchdog.stop()
    assert not watchdog.is_alive()
    assert beats[1] is None  # rank 1 never published
    assert (beats[0]["step"], beats[0]["batch"], beats[0]["phase"]) == (7, 3, "train_step")
    with heartbeat.during("save_checkpoint"):
        assert watchdog.beat()["phase"] == "save_checkpoint"
    assert watchdog.beat()["phase"] == "train_step"
    assert not (tmp_path / "rank0.txt").exists()  # nothing asked for a stack


def waiting_for_the_stack(board: HeartbeatBoard, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if board.marked("dumped", 2) == {1}:
            return True
        time.sleep(0.05)
    return False


def test_a_dump_request_makes_the_watchdog_write_the_main_threads_stack(tmp_path, board):
    path = tmp_path / "stacks" / "rank1.txt"
    watchdog = Watchdog(board, 1, 2, lambda: (3, 4), lambda: "evaluate", str(path), timeout=5)
    watchdog.start()
    board.request_dump(0)  # rank 0's collective timed out
    dumped = waiting_for_the_stack(board, 10)
    watchdog.stop()  # before it would end this process for a hang nobody reported
    assert dumped
    assert not watchdog.is_alive()
    stack = path.read_text()
    assert "rank 1 at step 3 in evaluate; rank 0's collective timed out waiting" in stack
    assert "in waiting_for_the_stack" in stack  # the main thread, where it was


def test_the_runner_closing_stops_a_running_watchdog(tmp_path, board):
    from danling.runner import TorchRunner

    runner = TorchRunner({"log": False, "dir": str(tmp_path / "run")})
    watchdog = Watchdog(board, 0, 2, lambda: (0, None), lambda: "start", str(tmp_path / "rank0.txt"))
    runner._heartbeat.watchdog = watchdog
    watchdog.start()
    runner.close()
    assert not watchdog.is_alive()
    assert "danling-heartbeat-rank0" not in [thread.name for thread in threading.enumerate()]


def test_watching_in_one_process_starts_no_thread(tmp_path):
    heartbeat = Heartbeat()
    before = threading.active_count()
    with heartbeat.watch(str(tmp_path), 5, lambda: (0, None)):
        assert heartbeat.watchdog is None
        assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="Timed out"), heartbeat.watch(str(tmp_path), 5, lambda: (0, None)):
        raise RuntimeError("Timed out waiting 5000ms for recv operation to complete")  # not distributed: unchanged


def test_timeouts_of_collectives_are_told_from_other_errors():
    gloo = "[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation"
    assert is_timeout(RuntimeError(gloo))
    assert is_timeout(RuntimeError("Application timeout caused pair closure"))  # gloo, after a timeout
    assert is_timeout(torch.distributed.DistBackendError("Watchdog caught collective operation timeout"))
    assert not is_timeout(RuntimeError("DataLoader timed out after 10 seconds"))
    assert not is_timeout(RuntimeError("CUDA out of memory"))


def test_the_message_names_the_missing_ranks_their_step_and_phase():
    now = 1000.0
    beats = {
        0: {"step": 5, "phase": "train_step", "batch": 2, "unchanged_for": 30.0, "time": now},
        1: {"step": 4, "phase": "save_checkpoint", "batch": None, "unchanged_for": 28.0, "time": now - 2.0},
        2: {"step": 5, "phase": "train_step", "batch": 2, "unchanged_for": 10.0, "time": now - 60.0, "host": "n2"},
        3: None,
    }
    message = describe_hang(0, 4, 30, beats, [1, 2, 3], 10.0, "run/stacks", dumped={0, 1}, now=now)
    assert message == (
        "rank 0 of 4: a collective timed out after 30 s (dist_timeout) at step 5 in train_step; "
        "rank 1 did not arrive: step 4 in save_checkpoint, unchanged for 30 s; "
        "rank 2 did not arrive: step 5 in train_step (batch 2 of the epoch), unchanged for 70 s (host n2): "
        "no heartbeat since, the process is dead or frozen holding the interpreter lock; "
        "rank 3 did not arrive: no heartbeat ever published: it wrote no stack; stacks in run/stacks"
    )
    error = pickle.loads(pickle.dumps(RankHungError(message, 0, {1: beats[1], 3: None}, "run/stacks")))
    assert (str(error), error.rank, error.missing, error.stacks) == (message, 0, {1: beats[1], 3: None}, "run/stacks")
    everyone = describe_hang(1, 2, None, {0: beats[0], 1: beats[0]}, [], 10.0, "s", now=now)
    assert everyone.startswith("rank 1 of 2: a collective timed out after torch's default timeout at step 5")
    assert "every rank was waiting in a collective" in everyone
