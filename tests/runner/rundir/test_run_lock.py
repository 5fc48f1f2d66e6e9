"""
One writer per run directory: `run.lock`, concurrent launches, stale locks, and temporaries of live and dead writers.

Launches run in processes of their own (`workers/run_lock_worker.py`) and are killed with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from danling.runner import BaseRunner, RunDirectoryLocked
from danling.runner.checkpointing import CheckpointManager
from danling.runner.rundir.lock import LOCK_FILE, LockHolder, RunLock, held_by_another, process_start_ticks
from danling.runner.rundir.startup import RunDirGuard

from ..workers.run_lock_worker import LockRunner, first_save_config

WORKER = Path(__file__).parents[1] / "workers" / "run_lock_worker.py"
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="the launches are killed with SIGKILL")


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(process: subprocess.Popen, line: str) -> None:
    # The worker's log lines go to stdout too: read up to the line, or to the end of its output.
    said = []
    for got in process.stdout:
        if got.strip() == line:
            return
        said.append(got)
    process.kill()
    raise AssertionError(f"the worker never said {line!r}: {''.join(said)}{process.communicate(timeout=30)[1]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


@pytest.fixture
def sleeper():
    # A live process of this host that holds no lock: its PID is "alive" for every check.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait(timeout=30)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def write_lock(directory: Path, **fields) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(json.dumps(fields))
    return directory / LOCK_FILE


# Two launches at once


@pytest.mark.parametrize("auto_resume", [False, True], ids=["same-dir", "auto-resume"])
def test_a_second_launch_into_a_live_run_directory_stops_at_once_naming_the_first(tmp_path, auto_resume):
    run_dir = tmp_path / "run"
    first = start("hold", str(run_dir))
    try:
        wait_for(first, "ready")
        began = time.monotonic()
        second = start("launch", str(run_dir), *(["auto"] if auto_resume else []))
        out, err = second.communicate(timeout=120)
        elapsed = time.monotonic() - began
        assert second.returncode != 0
        assert "started" not in out
        for part in ("RunDirectoryLocked", f"pid {first.pid}", socket.gethostname(), str(run_dir / LOCK_FILE)):
            assert part in err, err
        assert elapsed < 60, f"the second launch took {elapsed:.0f} s to stop"
        assert first.poll() is None, "the first launch died"
        # The first run's directory is untouched: its lock and checkpoint.
        assert LockHolder.parse((run_dir / LOCK_FILE).read_text()).pid == first.pid
        assert (run_dir / "checkpoints" / "latest.pth").exists()
    finally:
        stop(first)


def test_a_lock_left_by_a_killed_launch_is_taken_over_with_a_warning(tmp_path):
    run_dir = tmp_path / "run"
    first = start("hold", str(run_dir))
    wait_for(first, "ready")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert LockHolder.parse((run_dir / LOCK_FILE).read_text()).pid == first.pid  # a SIGKILL leaves it behind
    with pytest.warns(RuntimeWarning, match=rf"taking over its lock .* pid {first.pid} .* no longer running"):
        runner = LockRunner({"dir": str(run_dir), "device": "cpu", "log": True, "auto_resume": True})
    log = (run_dir / "run.log").read_text()
    assert "[WARNING]" in log
    assert f"run directory {str(run_dir)!r}: taking over its lock" in log
    assert f"pid {first.pid}" in log
    assert LockHolder.parse((run_dir / LOCK_FILE).read_text()).is_this_process()
    assert runner.config.checkpoint.endswith("latest.pth")  # auto_resume continues the killed run
    runner.close()
    assert not (run_dir / LOCK_FILE).exists()  # released when the runner closes


def test_a_zombie_holder_counts_as_gone(tmp_path):
    run_dir = tmp_path / "run"
    first = start("hold", str(run_dir))
    wait_for(first, "ready")
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not Path(f"/proc/{first.pid}/stat").exists() or Path(f"/proc/{first.pid}/stat").read_text().split()[2] != "Z":
        if not Path(f"/proc/{first.pid}/stat").exists():
            pytest.skip("no /proc to see a zombie in")
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:  # not reaped yet: os.kill(pid, 0) still succeeds
        with pytest.warns(RuntimeWarning, match="no longer running"):
            RunLock(str(run_dir)).acquire()
    finally:
        stop(first)


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    lock = write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid, start_ticks=1)  # started at another time
    if process_start_ticks(sleeper.pid) is None:
        pytest.skip("no process start times on this platform")
    with pytest.warns(RuntimeWarning, match=f"pid {sleeper.pid}"):
        BaseRunner({"dir": str(run_dir), "log": True}).close()
    assert not lock.exists()


def test_a_lock_of_a_live_process_without_a_kernel_lock_is_refused(tmp_path, sleeper):
    # A holder whose kernel lock this host cannot see (a network file system, another tool): its content decides.
    run_dir = tmp_path / "run"
    write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid, start_ticks=process_start_ticks(sleeper.pid))
    with pytest.raises(RunDirectoryLocked, match=f"pid {sleeper.pid}") as raised:
        BaseRunner({"dir": str(run_dir), "log": True})
    assert raised.value.pid == sleeper.pid
    assert raised.value.lock_file == str(run_dir / LOCK_FILE)
    assert isinstance(raised.value, RuntimeError)
    assert sorted(os.listdir(run_dir)) == [LOCK_FILE]  # no run.log: nothing written into the holder's directory


def test_a_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    run_dir = tmp_path / "run"
    lock = write_lock(run_dir, host="node-elsewhere", pid=4242, since="2024-06-01 12:00:00")
    with pytest.raises(RunDirectoryLocked, match="node-elsewhere") as raised:
        BaseRunner({"dir": str(run_dir), "log": True})
    message = str(raised.value)
    for part in ("pid 4242", f"delete {str(lock)!r}", "cannot be checked", socket.gethostname()):
        assert part in message
    assert raised.value.host == "node-elsewhere"
    assert lock.exists()


# Who takes the lock


def test_runners_of_one_process_share_the_lock_and_the_last_close_releases_it(tmp_path):
    first = BaseRunner({"dir": str(tmp_path / "run"), "log": True})
    second = BaseRunner({"dir": str(tmp_path / "run"), "log": True})
    lock = tmp_path / "run" / LOCK_FILE
    second.close()
    assert lock.exists()
    first.close()
    assert not lock.exists()


def test_a_runner_that_writes_nothing_takes_no_lock(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid)
    runner = BaseRunner({"dir": str(run_dir), "log": False})  # evaluating only: no directory of its own
    assert not runner._run_dir_claim.held
    with pytest.raises(RunDirectoryLocked):
        runner.save_checkpoint()  # writing is what needs the lock


def test_other_ranks_of_a_job_take_no_lock(tmp_path, sleeper, monkeypatch):
    run_dir = tmp_path / "run"
    write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid)  # rank 0 of the job, say
    monkeypatch.setenv("RANK", "1")
    runner = BaseRunner({"dir": str(run_dir), "log": True})
    assert runner.dir == str(run_dir)
    assert not runner._run_dir_claim.held


def test_a_refused_start_never_removes_the_directory_it_raced_for(tmp_path, sleeper):
    run_dir = tmp_path / "experiments" / "run"
    guard = RunDirGuard(str(run_dir))  # both launches saw no directory...
    write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid)  # ...and the other one created and locked it
    guard.discard()
    assert held_by_another(str(run_dir))
    assert (run_dir / LOCK_FILE).exists()


# Temporaries and their writers


def test_the_sweep_keeps_temporaries_of_live_writers_and_removes_those_of_dead_ones(tmp_path, sleeper):
    manager = CheckpointManager(str(tmp_path))
    live, dead, old = f".latest.pth.{sleeper.pid}.a1.tmp", f".latest.pth.{dead_pid()}.b2.tmp", ".best.pth.x9.tmp"
    for name in (live, dead, old):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / f".latest.dcp.{dead_pid()}.3.tmp").mkdir()  # a sharded save's directory
    manager.save({"w": torch.ones(1)}, steps=1, keep=0)
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith(".")) == [live]
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait(timeout=30)
    assert manager.remove_temporaries() == [live]


def test_a_run_killed_during_its_first_save_is_cleaned_up_by_the_next_launch(tmp_path):
    root = tmp_path / "experiments"
    first = start("first-save", str(root))
    try:
        wait_for(first, "writing")
        (launch,) = [path for path in root.glob("first-save-*/*") if path.is_dir()]
        leftovers = [name for name in os.listdir(launch / "checkpoints") if name.endswith(".tmp")]
        assert leftovers
        assert all(f".{first.pid}." in name for name in leftovers)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    # The next launch of the run gets a directory of its own, but cleans the one the kill left.
    runner = LockRunner(first_save_config(str(root)))
    assert runner.dir != str(launch)
    assert not [name for name in os.listdir(launch / "checkpoints") if name.endswith(".tmp")]
    assert not held_by_another(str(launch))


def test_the_next_launch_leaves_a_live_launch_of_the_same_run_alone(tmp_path):
    root = tmp_path / "experiments"
    first = start("first-save", str(root))
    try:
        wait_for(first, "writing")
        (launch,) = [path for path in root.glob("first-save-*/*") if path.is_dir()]
        before = sorted(os.listdir(launch / "checkpoints"))
        LockRunner(first_save_config(str(root)))
        assert sorted(os.listdir(launch / "checkpoints")) == before  # its save is in flight
    finally:
        stop(first)
