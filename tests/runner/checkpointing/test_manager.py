"""CheckpointManager: naming, retention, manifests, verification against real corruption, hygiene, disk full."""

from __future__ import annotations

import errno
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from danling.runner.checkpointing import (
    CheckpointError,
    CheckpointManager,
    checkpoint_problem,
    manifest_path,
    read_verified,
    verify_checkpoint,
)


def state(value: float, size: int = 64) -> dict:
    return {"model": {"weight": torch.full((size,), value)}, "runner": {"steps": int(value)}}


def pth_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".pth"))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fp:
        fp.seek(offset)
        byte = fp.read(1)
        fp.seek(offset)
        fp.write(bytes([byte[0] ^ 0x01]))


def test_retention_keeps_the_newest_step_copies_and_never_latest_or_best(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    for steps in range(1, 6):
        manager.save(state(steps), steps=steps, keep=2, best=steps == 2, epochs=steps, epoch_copy=steps == 3)
    assert pth_files(tmp_path) == ["best.pth", "epoch-3.pth", "latest.pth", "step-4.pth", "step-5.pth"]
    # Every file has a manifest that holds its steps, and retention removed the manifests it orphaned.
    manifests = sorted(name for name in os.listdir(tmp_path) if name.endswith(".manifest.json"))
    assert manifests == [name + ".manifest.json" for name in pth_files(tmp_path)]
    assert json.loads(Path(manifest_path(str(tmp_path / "best.pth"))).read_text())["steps"] == 2
    assert torch.equal(read_verified(str(tmp_path / "best.pth"))["model"]["weight"], torch.full((64,), 2.0))
    assert manager.candidates()[0] == str(tmp_path / "latest.pth")
    manager.save(state(6), steps=6, keep=0)
    assert pth_files(tmp_path) == ["best.pth", "epoch-3.pth", "latest.pth"]


def test_each_save_is_a_separate_file_and_a_flip_leaves_the_previous_one_valid(tmp_path: Path) -> None:
    # The names of one save share its bytes (see test_checkpoint_links.py); the previous save is its own file.
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=2)
    manager.save(state(2), steps=2, keep=2)
    assert os.stat(tmp_path / "latest.pth").st_ino != os.stat(tmp_path / "step-1.pth").st_ino
    flip_byte(tmp_path / "latest.pth", 200)
    assert checkpoint_problem(str(tmp_path / "latest.pth")) is not None
    assert checkpoint_problem(str(tmp_path / "step-2.pth")) is not None  # the same bytes
    assert checkpoint_problem(str(tmp_path / "step-1.pth")) is None


def test_bit_flip_is_an_error_naming_the_file_and_the_valid_fallbacks(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=2)
    manager.save(state(2), steps=2, keep=2)
    latest = tmp_path / "latest.pth"
    flip_byte(latest, os.path.getsize(latest) // 2)  # in the middle of the tensor data: torch would load it
    with pytest.raises(CheckpointError) as raised:
        manager.load(str(latest), weights_only=True)
    message = str(raised.value)
    assert str(latest) in message
    assert "SHA-256" in message
    assert "step-2.pth" not in message  # another name of the same bytes: no fallback
    assert "step-1.pth" in message
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("keep_bytes", [0, 10, 1000])
def test_truncated_checkpoint_is_an_error(tmp_path: Path, keep_bytes: int) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1, size=1000), steps=1, keep=2)
    manager.save(state(2, size=1000), steps=2, keep=2)
    latest = tmp_path / "latest.pth"
    os.truncate(latest, keep_bytes)  # and step-2.pth, another name of the same file
    with pytest.raises(CheckpointError, match=r"truncated") as raised:
        verify_checkpoint(latest)
    assert str(latest) in str(raised.value)
    assert "step-1.pth" in str(raised.value)


def test_checkpoints_without_manifest_are_checked_against_their_zip_crcs(tmp_path: Path) -> None:
    path = tmp_path / "handmade.pth"
    torch.save(state(3, size=4096), path)
    assert torch.equal(read_verified(str(path))["model"]["weight"], torch.full((4096,), 3.0))
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.file_size >= 4096 * 4)
    flip_byte(path, info.header_offset + 30 + len(info.filename) + info.extra.__len__() + 100)
    with pytest.raises(CheckpointError, match="CRC") as raised:
        read_verified(str(path))
    assert str(path) in str(raised.value)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch.save archive"):
        read_verified(str(not_a_checkpoint))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_verified(str(tmp_path / "missing.pth"))


def test_a_kill_between_rename_and_manifest_leaves_a_valid_file(tmp_path: Path, monkeypatch) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=0)
    written = []
    original = manager._write_manifest

    def die_after_the_rename(path: str, manifest: dict) -> None:
        if "pending" not in manifest:  # the final manifest: the file is already renamed
            written.append(path)
            raise KeyboardInterrupt
        original(path, manifest)

    monkeypatch.setattr(manager, "_write_manifest", die_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        manager.save(state(2), steps=2, keep=0)
    assert written == [str(tmp_path / "latest.pth")]
    assert read_verified(str(tmp_path / "latest.pth"))["runner"]["steps"] == 2
    monkeypatch.undo()
    manager.save(state(3), steps=3, keep=0)  # and the next save starts from that state
    assert read_verified(str(tmp_path / "latest.pth"))["runner"]["steps"] == 3


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    stale = [".latest.pth.abc123.tmp", ".step-7.pth.manifest.json.x1.tmp", ".best.pth.zz.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"x" * 1000)
    manager.save(state(1), steps=1, keep=1)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_disk_full_names_the_path_and_free_space_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=1)

    def full(obj, file, *args, **kwargs):
        file.write(b"partial")  # the file object danling streams the checkpoint into
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as raised:
        manager.save(state(2), steps=2, keep=1)
    monkeypatch.undo()
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert str(tmp_path / "latest.pth") in message
    assert "MiB free" in message
    assert "disk is full" in message
    assert read_verified(str(tmp_path / "latest.pth"))["runner"]["steps"] == 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_quarantine_moves_a_bad_checkpoint_aside(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=1)
    aside = manager.quarantine(str(tmp_path / "latest.pth"))
    assert aside == str(tmp_path / "latest.pth.corrupt")
    assert os.path.exists(aside)
    assert os.path.exists(manifest_path(aside))
    assert not os.path.exists(tmp_path / "latest.pth")
