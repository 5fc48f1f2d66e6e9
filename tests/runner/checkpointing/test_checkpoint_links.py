"""
Checkpoints that cost what a checkpoint costs: a save writes its bytes once (the other names are hard links, or
pointer files where the file system refuses links), hashes them while writing, and a load verifies them while
reading, in one pass. Digests and sizes are checked against `hashlib`, `os.stat` and `torch.save` to a buffer;
bytes read against the kernel's count (`/proc/self/io`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from danling.runner.checkpointing import (
    CheckpointError,
    CheckpointManager,
    ShardedCheckpointManager,
    find_resumable,
    is_sharded_checkpoint,
    manifest_path,
    read_manifest,
    read_verified,
    streams,
    verify_checkpoint,
)
from danling.runner.checkpointing.formats import TorchFileFormat

NAMES = ["best.pth", "epoch-3.pth", "latest.pth", "step-4.pth", "step-5.pth"]


def state(value: float, size: int = 4096) -> dict:
    return {"model": {"weight": torch.full((size,), float(value))}, "runner": {"steps": int(value)}}


def buffer_size(value: float, size: int = 4096) -> int:
    buffer = io.BytesIO()
    torch.save(state(value, size), buffer)
    return buffer.tell()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fp:
        fp.seek(offset)
        byte = fp.read(1)
        fp.seek(offset)
        fp.write(bytes([byte[0] ^ 0x01]))


def save_five(manager: CheckpointManager) -> None:
    # Steps 1..5, keeping 2 step-stamped copies; step 2 is the best, step 3 ends an epoch with a copy.
    for steps in range(1, 6):
        manager.save(state(steps), steps=steps, epochs=steps, keep=2, best=steps == 2, epoch_copy=steps == 3)


def pth_names(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".pth"))


def rchar() -> int:
    with open("/proc/self/io", encoding="ascii") as fp:
        return next(int(line.split()[1]) for line in fp if line.startswith("rchar:"))


def no_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)


# One write, several names


def test_every_name_of_a_save_is_one_file_written_once(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(7), steps=7, epochs=3, keep=2, best=True, epoch_copy=True)
    names = ["latest.pth", "step-7.pth", "epoch-3.pth", "best.pth"]
    assert pth_names(tmp_path) == sorted(names)
    inodes = {os.stat(tmp_path / name).st_ino for name in names}
    assert len(inodes) == 1
    assert os.stat(tmp_path / "latest.pth").st_nlink == 4
    assert os.path.getsize(tmp_path / "latest.pth") == buffer_size(7)  # the bytes of one torch.save
    for name in names:  # the digest computed while writing is the file's
        manifest = json.loads(Path(manifest_path(str(tmp_path / name))).read_text())
        assert manifest["sha256"] == sha256(tmp_path / name)
        assert manifest["size"] == os.path.getsize(tmp_path / name)
        assert torch.equal(read_verified(str(tmp_path / name))["model"]["weight"], state(7)["model"]["weight"])


def test_best_keeps_its_bytes_when_latest_is_replaced(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(1), steps=1, keep=0, best=True)
    best = tmp_path / "best.pth"
    inode, digest = os.stat(best).st_ino, sha256(best)
    assert os.path.samefile(best, tmp_path / "latest.pth")
    manager.save(state(2), steps=2, keep=0)
    assert os.stat(best).st_ino == inode  # untouched by the rename over latest
    assert sha256(best) == digest
    assert not os.path.samefile(best, tmp_path / "latest.pth")
    assert read_verified(str(best))["runner"]["steps"] == 1
    assert read_verified(str(tmp_path / "latest.pth"))["runner"]["steps"] == 2


def test_retention_with_links_deletes_names_and_frees_only_unnamed_bytes(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    save_five(manager)
    assert pth_names(tmp_path) == NAMES
    inodes = {name: os.stat(tmp_path / name) for name in NAMES}
    assert inodes["latest.pth"].st_ino == inodes["step-5.pth"].st_ino
    assert inodes["latest.pth"].st_nlink == 2
    for name in ("best.pth", "epoch-3.pth", "step-4.pth"):  # their other names (step-2, step-3) were pruned
        assert inodes[name].st_nlink == 1
    steps = {name: read_verified(str(tmp_path / name))["runner"]["steps"] for name in NAMES}
    assert steps == {"best.pth": 2, "epoch-3.pth": 3, "latest.pth": 5, "step-4.pth": 4, "step-5.pth": 5}
    on_disk = sum({stat.st_ino: stat.st_size for stat in inodes.values()}.values())
    assert on_disk == sum(buffer_size(steps) for steps in (2, 3, 4, 5))


# Where the file system refuses links: pointers


def test_without_links_names_are_pointers_to_data_files_that_are_collected(tmp_path: Path, monkeypatch) -> None:
    no_links(monkeypatch)
    manager = CheckpointManager(str(tmp_path))
    save_five(manager)
    assert pth_names(tmp_path) == NAMES
    data = sorted(name for name in os.listdir(tmp_path) if name.endswith(".pth.data"))
    assert len(data) == 4  # steps 2 (best), 3 (epoch), 4, 5 (latest, step-5); 1 and the pruned names' are gone
    for name in NAMES:
        pointer = json.loads((tmp_path / name).read_text())
        assert set(pointer) == {"danling_checkpoint_pointer", "target", "sha256", "size"}
        assert pointer["target"] in data
        assert pointer["sha256"] == sha256(tmp_path / pointer["target"])
        assert pointer["target"] == f"data-{pointer['sha256']}.pth.data"
        assert read_manifest(str(tmp_path / name))["sha256"] == pointer["sha256"]
        verify_checkpoint(tmp_path / name)
    steps = {name: read_verified(str(tmp_path / name))["runner"]["steps"] for name in NAMES}
    assert steps == {"best.pth": 2, "epoch-3.pth": 3, "latest.pth": 5, "step-4.pth": 4, "step-5.pth": 5}
    assert find_resumable([str(tmp_path)]) == str(tmp_path / "latest.pth")
    target = json.loads((tmp_path / "best.pth").read_text())["target"]
    flip_byte(tmp_path / target, os.path.getsize(tmp_path / target) // 2)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_verified(str(tmp_path / "best.pth"))


def test_without_links_sharded_names_are_pointers_to_one_directory(tmp_path: Path, monkeypatch) -> None:
    no_links(monkeypatch)
    manager = ShardedCheckpointManager(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for steps in (1, 2, 3):
            manager.save({"model": {"w": torch.full((3,), float(steps))}}, steps=steps, keep=1, best=steps == 2)
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".dcp")) == [
        "best.dcp",
        "latest.dcp",
        "step-3.dcp",
    ]
    data = sorted(name for name in os.listdir(tmp_path) if name.endswith(".dcp.data"))
    assert len(data) == 2  # steps 2 (best) and 3 (latest, step-3); step 1's is collected
    assert all((tmp_path / name / ".metadata").is_file() for name in data)
    assert (tmp_path / "latest.dcp").is_file()  # a pointer file
    assert is_sharded_checkpoint(tmp_path / "latest.dcp")
    assert torch.equal(manager.load(manager.path("best"))["model"]["w"], torch.full((3,), 2.0))
    assert torch.equal(manager.load(manager.path("latest"))["model"]["w"], torch.full((3,), 3.0))
    assert find_resumable([str(tmp_path)]) == str(tmp_path / "latest.dcp")


def test_sharded_names_are_directories_of_hard_links_hashed_once(tmp_path: Path) -> None:
    manager = ShardedCheckpointManager(str(tmp_path))
    weights = {"model": {"w": torch.randn(1 << 18)}}  # 1 MiB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.save(weights, steps=1, keep=1, best=True)  # warm up DCP's imports
        before = rchar()
        manager.save(weights, steps=2, keep=1, best=True)
        read = rchar() - before
    size = sum(os.path.getsize(tmp_path / "latest.dcp" / name) for name in os.listdir(tmp_path / "latest.dcp"))
    assert read < 1.5 * size  # the files are hashed once, not once per name
    for name in os.listdir(tmp_path / "latest.dcp"):
        for other in ("step-2.dcp", "best.dcp"):
            assert os.path.samefile(tmp_path / "latest.dcp" / name, tmp_path / other / name)
    assert torch.equal(manager.load(manager.path("best"))["model"]["w"], weights["model"]["w"])


# Verified while read, in one pass


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counting bytes read needs /proc/self/io")
def test_a_verified_load_reads_the_file_once(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    path = manager.save(state(1, size=1 << 22), steps=1, keep=0)  # 16 MiB
    size = os.path.getsize(path)
    read_verified(path)  # warm up imports
    before = rchar()
    loaded = read_verified(path)
    once = rchar() - before
    before = rchar()
    verify_checkpoint(path)
    torch.load(path, weights_only=True)
    twice = rchar() - before  # how loads read it before: the counter sees the second pass
    assert torch.equal(loaded["model"]["weight"], state(1, size=1 << 22)["model"]["weight"])
    assert size <= once < 1.05 * size
    assert twice > 1.9 * size


def test_a_flipped_bit_that_torch_would_load_is_caught_in_the_same_pass(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path))
    path = Path(manager.save(state(1, size=1 << 16), steps=1, keep=0))
    flip_byte(path, os.path.getsize(path) // 2)  # inside the tensor's bytes
    assert torch.load(path, weights_only=True)["runner"]["steps"] == 1  # torch sees nothing wrong
    with pytest.raises(CheckpointError, match="SHA-256") as raised:
        read_verified(str(path))
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("where", ["zip directory", "pickle"])
def test_a_flipped_bit_that_breaks_torch_is_reported_as_corruption(tmp_path: Path, where: str) -> None:
    manager = CheckpointManager(str(tmp_path))
    path = Path(manager.save(state(1), steps=1, keep=0))
    flip_byte(path, os.path.getsize(path) - 30 if where == "zip directory" else 70)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_verified(str(path))


@pytest.mark.parametrize("keep_bytes", [0, 100, 9000])
def test_a_truncated_file_is_caught_by_size_and_without_a_size_by_digest(tmp_path: Path, keep_bytes: int) -> None:
    manager = CheckpointManager(str(tmp_path))
    path = Path(manager.save(state(1), steps=1, keep=0))
    os.truncate(path, keep_bytes)
    with pytest.raises(CheckpointError, match="truncated"):
        read_verified(str(path))
    manifest = json.loads(Path(manifest_path(str(path))).read_text())
    del manifest["size"]  # a manifest that does not say: the digest catches it, whatever torch made of the rest
    Path(manifest_path(str(path))).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_verified(str(path))


def test_checkpoints_of_earlier_releases_load_and_verify(tmp_path: Path) -> None:
    # As the previous release wrote them: `torch.save` to the path, then a manifest of its SHA-256 and size, one
    # with a save in flight (`pending`) too.
    for name, pending in (("latest.pth", False), ("step-3.pth", True)):
        path = tmp_path / name
        torch.save(state(3), path)
        entry = {"sha256": sha256(path), "size": os.path.getsize(path)}
        manifest = {"file": name, "steps": 3, "epochs": 0, "format": "torch", "written": time.time()}
        if pending:
            manifest.update(sha256="0" * 64, size=1, pending=entry)
        else:
            manifest.update(entry)
        Path(manifest_path(str(path))).write_text(json.dumps(manifest, indent=2))
        assert read_verified(str(path))["runner"]["steps"] == 3
        assert read_verified(str(path), mmap=True)["runner"]["steps"] == 3
        flip_byte(path, os.path.getsize(path) // 2)
        with pytest.raises(CheckpointError, match="SHA-256"):
            read_verified(str(path))
    manager = CheckpointManager(str(tmp_path))
    manager.save(state(4), steps=4, keep=2)  # and the next save goes on from them
    assert read_verified(str(tmp_path / "latest.pth"))["runner"]["steps"] == 4


@pytest.mark.parametrize("kwargs", [{"mmap": True}, {"weights_only": False}, {"weights_only": True}])
def test_every_way_of_loading_verifies(tmp_path: Path, kwargs: dict) -> None:
    manager = CheckpointManager(str(tmp_path))
    path = Path(manager.save(state(5), steps=5, keep=0))
    assert read_verified(str(path), **kwargs)["runner"]["steps"] == 5
    flip_byte(path, os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_verified(str(path), **kwargs)


@pytest.mark.parametrize("parallel", [True, False], ids=["two-cpus", "one-cpu"])
def test_digests_of_large_blocks_hashed_in_parts_are_exact(tmp_path: Path, monkeypatch, parallel: bool) -> None:
    monkeypatch.setattr(streams, "PART", 4096)  # every tensor is moved in many parts
    monkeypatch.setattr(streams, "SMALL_WRITE", 1024)
    monkeypatch.setattr(streams, "parallel_hashing", lambda: parallel)  # whatever this machine has
    path = tmp_path / "x.pth"
    weights = {"a": torch.randn(10_000), "b": torch.arange(7), "c": torch.randn(3, 5000)}
    digest = TorchFileFormat().write(weights, str(path))
    assert digest == sha256(path)
    with open(path, "rb", buffering=0) as raw:
        assert streams.sha256_stream(raw) == sha256(path)
    loaded = TorchFileFormat().read_checked(str(path), {digest})
    assert all(torch.equal(loaded[key], value) for key, value in weights.items())


def test_a_write_error_keeps_its_errno(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with pytest.raises(OSError) as raised:
        TorchFileFormat().write({"w": torch.ones(1 << 16)}, "/dev/full")
    assert raised.value.errno == errno.ENOSPC
