"""
A full disk says so: `OSError` with `errno.ENOSPC`, the file, "No space left on device" and the free space, in the
exception and in `run.log`; the checkpoints saved before stay intact and no temporary file is left.

The disk really fills up on a small tmpfs (mounted when the tests run as root); the same failures are also injected
as `torch.save` reports them, so that they are checked everywhere.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing import (
    AsyncSaveError,
    ShardedCheckpointManager,
    formats,
    read_verified,
    verify_checkpoint,
)
from danling.runner.checkpointing.formats import write_failure

# What torch raises when its zip writer cannot write (it keeps no errno).
TORCH_WRITE_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 696"
DISK_SIZE = 4 << 20  # the tmpfs: room for a few checkpoints of the model below
LEFT_FREE = 96 << 10  # what the ballast leaves: less than one checkpoint


class DiskRunner(dl.TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = nn.Linear(256, 256)  # 257 KiB of weights
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def make_runner(run_dir: Path, **config) -> DiskRunner:
    return DiskRunner({"dir": str(run_dir), "device": "cpu", "log": True, "keep_checkpoints": 1, **config})


def temporaries(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def error_lines(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "run.log").read_text().splitlines() if "[ERROR]" in line]


def check_intact(run_dir: Path, weight: torch.Tensor) -> None:
    latest = run_dir / "checkpoints" / "latest.pth"
    verify_checkpoint(latest)
    assert torch.equal(read_verified(str(latest), weights_only=True)["model"]["weight"], weight)
    assert temporaries(run_dir / "checkpoints") == []


def check_full_disk_error(error: OSError, path: Path) -> None:
    assert error.errno == errno.ENOSPC
    message = str(error)
    for part in (str(path), "No space left on device", "MiB free"):
        assert part in message


@pytest.fixture
def small_disk(tmp_path: Path):
    # A real file system that fills up: a tmpfs of DISK_SIZE bytes (mounting needs root).
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(disk)], check=False)
    if mounted.returncode != 0:
        pytest.skip("could not mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = LEFT_FREE) -> None:
    size = shutil.disk_usage(disk).free - leave
    with open(disk / f"ballast-{uuid.uuid4().hex}", "wb") as fp:
        fp.write(b"\0" * max(size, 0))
    assert shutil.disk_usage(disk).free <= leave


# A real full disk


def test_a_full_disk_is_enospc_naming_the_file_and_logged_and_the_last_checkpoint_survives(small_disk):
    run_dir = small_disk / "run"
    runner = make_runner(run_dir)
    runner.save_checkpoint()
    saved = runner.model.weight.detach().clone()
    fill(small_disk)
    with torch.no_grad():
        runner.model.weight.add_(1)
    runner.steps = 1
    with pytest.raises(OSError) as raised:
        runner.save_checkpoint()
    check_full_disk_error(raised.value, run_dir / "checkpoints" / "latest.pth")
    assert isinstance(raised.value.__cause__, (OSError, RuntimeError))
    check_intact(run_dir, saved)
    (line,) = error_lines(run_dir)
    assert "No space left on device" in line
    assert "latest.pth" in line
    runner.close()


def test_a_full_disk_under_a_background_save_is_enospc_and_logged_from_its_thread(small_disk):
    run_dir = small_disk / "run"
    runner = make_runner(run_dir, async_save=True)
    runner.save_checkpoint()
    runner.async_saver.wait()
    saved = runner.model.weight.detach().clone()
    fill(small_disk)
    runner.steps = 1
    runner.save_checkpoint()
    with pytest.raises(AsyncSaveError) as raised:
        runner.async_saver.wait()
    check_full_disk_error(raised.value, run_dir / "checkpoints" / "latest.pth")
    check_intact(run_dir, saved)
    assert len(error_lines(run_dir)) == 1
    runner.close()


def test_a_full_disk_during_a_sharded_save_is_enospc_and_leaves_no_temporary_directory(small_disk):
    directory = small_disk / "checkpoints"
    manager = ShardedCheckpointManager(str(directory))
    manager.save({"model": {"w": torch.ones(1 << 16)}}, steps=1, keep=0)
    fill(small_disk)
    with pytest.raises(OSError) as raised:
        manager.save({"model": {"w": torch.zeros(1 << 16)}}, steps=2, keep=0)
    check_full_disk_error(raised.value, directory / "latest.dcp")
    assert temporaries(directory) == []
    assert torch.equal(manager.load(manager.path("latest"))["model"]["w"], torch.ones(1 << 16))


def test_the_other_names_of_a_save_take_no_space(small_disk):
    # latest.pth, step-N.pth and best.pth of one save are one file: room for one checkpoint is room for all three.
    run_dir = small_disk / "run"
    checkpoints = run_dir / "checkpoints"
    runner = make_runner(run_dir)
    runner.save_checkpoint()
    size = os.path.getsize(checkpoints / "latest.pth")
    fill(small_disk, leave=size + (64 << 10))  # one more checkpoint and its manifests, far from two copies of it
    runner.steps = 1
    runner.save_checkpoint()
    for name in ("latest.pth", "step-1.pth", "best.pth"):
        verify_checkpoint(checkpoints / name)
        assert os.path.samefile(checkpoints / name, checkpoints / "latest.pth")
    assert temporaries(checkpoints) == []
    runner.close()


# The same failures, injected as torch reports them


@pytest.fixture
def torch_runs_out_of_space(monkeypatch):
    # torch.save writes part of the file, then fails as its zip writer does; the file system has no space left.
    def partial_save(obj, path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)):
            Path(path).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError(TORCH_WRITE_ERROR)

    def no_space(directory: str) -> int:
        return 0

    monkeypatch.setattr(torch, "save", partial_save)
    monkeypatch.setattr(formats, "free_space", no_space)


def test_torchs_write_error_on_a_full_disk_is_enospc_and_logged(tmp_path, monkeypatch, torch_runs_out_of_space):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as undo:
        undo.setattr(torch, "save", torch.serialization.save)
        runner = make_runner(run_dir)
        runner.save_checkpoint()
    saved = runner.model.weight.detach().clone()
    runner.steps = 1
    with pytest.raises(OSError) as raised:
        runner.save_checkpoint()
    check_full_disk_error(raised.value, run_dir / "checkpoints" / "latest.pth")
    assert isinstance(raised.value.__cause__, OSError)
    assert TORCH_WRITE_ERROR in str(raised.value.__cause__.__cause__)  # torch's own error stays chained
    monkeypatch.undo()
    check_intact(run_dir, saved)
    (line,) = error_lines(run_dir)
    assert "No space left on device" in line
    runner.close()


def test_torchs_write_error_in_a_sharded_save_is_enospc(tmp_path, torch_runs_out_of_space):
    manager = ShardedCheckpointManager(str(tmp_path))
    with pytest.raises(OSError) as raised:
        manager.save({"model": {"w": torch.ones(4)}}, steps=1, keep=0)
    check_full_disk_error(raised.value, tmp_path / "latest.dcp")
    assert temporaries(tmp_path) == []


def test_a_write_error_with_space_left_is_no_full_disk_and_other_errors_stay_as_they_are(tmp_path):
    path = str(tmp_path / "x.pth")
    failure = write_failure(RuntimeError(TORCH_WRITE_ERROR), path)  # plenty of space here: a quota, an I/O error
    assert failure.errno == errno.EIO
    assert TORCH_WRITE_ERROR in str(failure)
    assert write_failure(RuntimeError("Can't pickle <function <lambda>>"), path) is None
    assert write_failure(ValueError("bad"), path) is None
    with pytest.raises((AttributeError, pickle.PicklingError)):  # an unpicklable state is no write failure
        formats.TorchFileFormat().write({"f": lambda: 0}, path)
