"""Retention removes names at once; the blocks of a file whose last name went are freed in the background."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

from danling.runner.checkpointing.temporaries import remove_file_freeing_later


def open_deleted(path) -> list[str]:
    # Descriptors of this process still open on `path` after its removal (Linux shows them as "(deleted)").
    found = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == f"{path} (deleted)":
                found.append(entry)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_removing_a_last_name_frees_the_file_in_the_background(tmp_path):
    path = tmp_path / "step-1.pth"
    path.write_bytes(os.urandom(1 << 20))
    freeing = remove_file_freeing_later(str(path))
    assert not path.exists()
    assert isinstance(freeing, threading.Thread)
    freeing.join(timeout=10)
    assert not freeing.is_alive()
    assert open_deleted(str(path)) == []


def test_removing_a_name_the_file_has_others_of_keeps_the_file(tmp_path):
    data = os.urandom(4096)
    (tmp_path / "latest.pth").write_bytes(data)
    os.link(tmp_path / "latest.pth", tmp_path / "step-1.pth")
    assert remove_file_freeing_later(str(tmp_path / "step-1.pth")) is None
    assert not (tmp_path / "step-1.pth").exists()
    assert (tmp_path / "latest.pth").read_bytes() == data


def test_a_missing_name_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        remove_file_freeing_later(str(tmp_path / "gone.pth"))
