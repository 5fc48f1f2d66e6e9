"""
`async_save`: the loop stalls only for a host copy, the file holds the state of its step, failures surface at the
next step boundary naming the file, `train()` returns after the commit, and a SIGKILL mid-save tears nothing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing import (
    AsyncCheckpointWriter,
    AsyncSaveError,
    CheckpointManager,
    TorchFileFormat,
    read_manifest,
    snapshot,
    verify_checkpoint,
)
from danling.runner.distributed.preemption import Preempted

WORKERS = Path(__file__).parents[1] / "workers"
SLOW_WRITE = 0.25  # seconds a slowed write takes


class AsyncRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, 4, generator=generator), torch.randn(48, 1, generator=generator)
        self.datasets.train = torch.utils.data.TensorDataset(x, y)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.busy_steps = 0

    def train_step(self, data: Any) -> Any:
        if self.async_saver is not None and self.async_saver.busy:
            self.busy_steps += 1  # a step that ran while a save was being written
        return super().train_step(data)


def make_runner(tmp_path: Path, name: str, **config: Any) -> AsyncRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / name), "log": False, "seed": 0, "epoch_end": 2, "device": "cpu"}
    settings["score_split"] = "train"
    settings.update(dataloader={"batch_size": 4}, save_steps=3, keep_checkpoints=100)
    settings.update(config)
    return AsyncRunner(settings)


@pytest.fixture
def slow_write(monkeypatch: pytest.MonkeyPatch) -> None:
    write = TorchFileFormat.write

    def slowed(self: TorchFileFormat, state: Any, path: str) -> None:
        time.sleep(SLOW_WRITE)
        write(self, state, path)

    monkeypatch.setattr(TorchFileFormat, "write", slowed)


def stamped_states(runner: dl.TorchRunner) -> dict[int, dict]:
    directory = Path(runner.checkpoint_dir)
    states = {}
    for path in directory.glob("step-*.pth"):
        verify_checkpoint(path)
        states[int(path.stem.split("-")[1])] = torch.load(path, weights_only=True)
    return states


def assert_identical(got: Any, expected: Any, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype, f"{where} differs in dtype"
        assert torch.equal(got, expected), f"{where} differs"
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_identical(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for index, (item, reference) in enumerate(zip(got, expected)):
            assert_identical(item, reference, f"{where}[{index}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


# The writer


def test_snapshot_copies_tensors_once_and_keeps_types():
    weight = torch.ones(3)
    state = {"model": torch.nn.Linear(2, 2).state_dict(), "tied": [weight, weight], "pair": (weight, 1)}
    copied = snapshot(state)
    weight.mul_(5)
    assert torch.equal(copied["tied"][0], torch.ones(3))
    assert copied["tied"][0] is copied["tied"][1]
    assert copied["tied"][0] is copied["pair"][0]
    assert type(copied["model"]) is type(state["model"])
    assert copied["model"]._metadata == state["model"]._metadata
    assert copied["model"]["weight"].data_ptr() != state["model"]["weight"].data_ptr()


def test_one_save_in_flight_and_failure_named(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    writer = AsyncCheckpointWriter()
    started, release = threading.Event(), threading.Event()

    def blocked(state):
        started.set()
        release.wait(10)
        return manager.save(state, steps=1)

    writer.submit({"w": torch.zeros(1)}, manager.path("latest"), blocked)
    started.wait(10)
    assert writer.busy
    threading.Timer(0.2, release.set).start()
    begin = time.monotonic()
    writer.submit({"w": torch.ones(1)}, manager.path("latest"), lambda state: manager.save(state, steps=2))
    assert time.monotonic() - begin >= 0.15  # the second save waited for the first
    writer.wait()
    assert read_manifest(manager.path("latest"))["steps"] == 2

    def failing(state):
        raise OSError(errno.EIO, "injected")

    writer.submit({"w": torch.ones(1)}, str(tmp_path / "x.pth"), failing)
    writer._thread.join()
    with pytest.raises(AsyncSaveError, match="x.pth"):
        writer.check()
    writer.check()  # raised once


# The runner


def test_slow_write_does_not_stall_the_loop(tmp_path, slow_write):
    runner = make_runner(tmp_path, "async", async_save=True)
    begin = time.monotonic()
    runner.save_checkpoint()
    stall = time.monotonic() - begin
    assert runner.async_saver.busy, "the save finished before save_checkpoint returned"
    assert stall < SLOW_WRITE / 2, f"save_checkpoint stalled {stall:.3f} s with a {SLOW_WRITE} s write"
    runner.async_saver.wait()
    runner.train()
    assert runner.busy_steps > 0, "no training step ran while a save was being written"


def test_async_files_equal_synchronous_ones_bitwise(tmp_path, slow_write):
    asynchronous = make_runner(tmp_path, "async", async_save=True)
    asynchronous.train()
    synchronous = make_runner(tmp_path, "sync")
    synchronous.train()
    assert asynchronous.busy_steps > 0
    got, expected = stamped_states(asynchronous), stamped_states(synchronous)
    assert sorted(got) == sorted(expected)
    assert len(got) >= 4
    for steps, state in expected.items():
        assert got[steps]["runner"]["steps"] == steps
        for part in ("model", "optimizer", "rng", "position"):
            assert_identical(got[steps][part], state[part], f"step-{steps}.{part}")


def test_background_failure_surfaces_at_next_step_and_keeps_previous(tmp_path, monkeypatch):
    write, calls = TorchFileFormat.write, []

    def failing_second(self: TorchFileFormat, state: Any, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        write(self, state, path)

    monkeypatch.setattr(TorchFileFormat, "write", failing_second)
    runner = make_runner(tmp_path, "fail", async_save=True, epoch_end=4)
    latest = os.path.join(runner.checkpoint_dir, "latest.pth")
    with pytest.raises(AsyncSaveError, match=r"latest\.pth") as raised:
        runner.train()
    assert "disk is full" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    assert 6 <= runner.steps <= 9, f"raised at step {runner.steps}, the failed save was at step 6"
    verify_checkpoint(latest)
    assert read_manifest(latest)["steps"] == 3
    assert torch.load(latest, weights_only=True)["runner"]["steps"] == 3


def test_train_returns_after_commit_and_results_follow_checkpoint(tmp_path, slow_write):
    runner = make_runner(tmp_path, "done", async_save=True, save_steps=None, epoch_end=1)
    runner.train()
    assert not runner.async_saver.busy
    latest = Path(runner.checkpoint_dir) / "latest.pth"
    verify_checkpoint(latest)
    assert read_manifest(str(latest))["steps"] == runner.steps
    results = Path(runner.dir) / "results.json"
    assert results.stat().st_mtime_ns >= latest.stat().st_mtime_ns  # commit order: checkpoint, then JSON
    assert json.loads(results.read_text())["results"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the saver forks and is killed with SIGKILL")
def test_sigkill_during_async_save_leaves_verifiable_latest(tmp_path, killed_saves):
    # Kill at random instants until at least one kill lands in a background write (a temporary file is left):
    # on a loaded machine a few kills may all fall between writes. Every killed directory must verify.
    interrupted = killed = 0
    for checkpoint_dir in killed_saves(tmp_path, 12, 7, 0.4, "async"):
        killed += 1
        interrupted += any(name.startswith(".") for name in os.listdir(checkpoint_dir))
        latest = checkpoint_dir / "latest.pth"
        verify_checkpoint(latest)
        state = torch.load(latest, weights_only=True)
        counter = state["runner"]["steps"]
        # The snapshot is the state of its step, though the weights changed while it was written.
        assert all(torch.all(value == counter) for value in state["model"].values())
        if interrupted and killed >= 3:
            break
    assert interrupted > 0, f"none of {killed} kills landed during a background write"


def test_preemption_waits_for_the_save_in_flight(tmp_path, slow_write):
    runner = make_runner(tmp_path, "preempted", async_save=True, save_steps=None, epoch_end=3)
    step = runner.train_step

    def signalled(data: Any) -> Any:
        if runner.steps == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(data)

    runner.train_step = signalled
    with pytest.raises(Preempted):
        runner.train()
    assert not runner.async_saver.busy  # the save of the preemption step committed before train() raised
    latest = Path(runner.checkpoint_dir) / "latest.pth"
    verify_checkpoint(latest)
    assert read_manifest(str(latest))["steps"] == runner.steps == 8


def test_interpreter_exit_waits_for_a_save_in_flight(tmp_path, subprocess_run):
    script = tmp_path / "save_and_exit.py"
    script.write_text(
        "import sys, time, torch\n"
        "import danling as dl\n"
        "from danling.runner.checkpointing import TorchFileFormat\n"
        "write = TorchFileFormat.write\n"
        "TorchFileFormat.write = lambda self, state, path: (time.sleep(1.0), write(self, state, path))[1]\n"
        "runner = dl.TorchRunner({'dir': sys.argv[1], 'log': False, 'async_save': True})\n"
        "runner.model = torch.nn.Linear(64, 64)\n"
        "runner.save_checkpoint()\n"
        "print('returned', runner.async_saver.busy, flush=True)\n"
    )
    result = subprocess_run([sys.executable, str(script), str(tmp_path / "run")], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "returned True" in result.stdout  # save_checkpoint returned while the write was in flight
    verify_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")
