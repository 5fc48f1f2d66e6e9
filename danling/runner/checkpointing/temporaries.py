"""Temporary files of checkpoint writes: named after the process that writes them, committed atomically, swept when
their writer is gone.

A write goes to `.{name}.{pid}.{token}.tmp` next to its target, then is renamed over it. A kill at any instant leaves
the target complete (old or new) and, at worst, such a hidden file; the sweep removes it once no live process of
this host has its PID. Temporaries of older releases (`.{name}.{token}.tmp`, without a PID) are always removed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress

from danling.utils.io import write_atomic

from ..rundir.lock import held_by_another, process_alive

# Hidden temporary files and directories of interrupted writes (`.latest.pth.4242.9f3a1c2e.tmp`, older names too).
TEMPORARY_PATTERN = re.compile(r"\..+\.tmp")
# Those that name their writer: `.{name}.{pid}.{token}.tmp`.
OWNED_PATTERN = re.compile(r"\..+\.(?P<pid>\d+)\.[^.]+\.tmp")


def temporary_path(path: str, token: str | None = None, pid: int | None = None) -> str:
    r"""
    Where a write of `path` goes first: `.{name}.{pid}.{token}.tmp` in the same directory.

    Args:
        path: The target.
        token: What tells this write from others of the same process (random by default).
        pid: The writer's PID (default: this process's).

    Examples:
        >>> name = os.path.basename(temporary_path("checkpoints/latest.pth", token="5"))
        >>> name == f".latest.pth.{os.getpid()}.5.tmp", temporary_owner(name) == os.getpid()
        (True, True)
    """
    directory, name = os.path.split(path)
    token = secrets.token_hex(4) if token is None else token
    return os.path.join(directory, f".{name}.{os.getpid() if pid is None else pid}.{token}.tmp")


def temporary_owner(name: str) -> int | None:
    r"""
    The PID of the process that writes the temporary file `name`, or `None` when its name does not say.

    Examples:
        >>> temporary_owner(".latest.pth.4242.9f3a1c2e.tmp"), temporary_owner(".latest.pth.abc123.tmp")
        (4242, None)
    """
    match = OWNED_PATTERN.fullmatch(name)
    return None if match is None else int(match.group("pid"))


def write_atomically(path: str, writer: Callable[[str], None]) -> None:
    r"""
    Write `path` through a temporary file of this process (see
    [`temporary_path`][danling.runner.checkpointing.temporaries.temporary_path]): `writer(temporary)`, fsync, rename
    over `path`, fsync the directory. A failure removes the temporary file and leaves `path` as it was.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> write_atomically(path, lambda tmp: open(tmp, "w").write("done"))
        >>> open(path).read(), os.listdir(os.path.dirname(path))
        ('done', ['x.txt'])
    """
    write_atomic(path, writer, temporary_path(path))


def remove_stale_temporaries(directory: str) -> list[str]:
    r"""
    Remove the hidden temporary files and directories in `directory` whose writer is gone; returns their names.

    One that names a process alive on this host is kept (a save in flight); one of a dead process, or of an older
    release (no PID in its name), is removed.

    Examples:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> for name in (f".latest.pth.{os.getpid()}.a.tmp", ".latest.pth.0.b.tmp", ".best.pth.old.tmp"):
        ...     open(os.path.join(directory, name), "w").close()
        >>> sorted(remove_stale_temporaries(directory)), os.listdir(directory) == [f".latest.pth.{os.getpid()}.a.tmp"]
        (['.best.pth.old.tmp', '.latest.pth.0.b.tmp'], True)
    """
    try:
        names = [name for name in os.listdir(directory) if TEMPORARY_PATTERN.fullmatch(name)]
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        owner = temporary_owner(name)
        if owner is not None and process_alive(owner):
            continue
        remove_path(os.path.join(directory, name))
        removed.append(name)
    return removed


def remove_path(path: str) -> None:
    r"""Remove a file or a directory tree; a path that is already gone is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.remove(path)


def remove_file_freeing_later(path: str) -> threading.Thread | None:
    r"""
    Remove the name `path` now, and when it was the file's last name, free its blocks in a background thread.

    Freeing a large file's blocks takes a while on some file systems (about 80 ms for 576 MiB on ext4 mounted with
    `discard` here); the name is gone when this returns, and the blocks are freed once the thread closes the last
    descriptor (or when the process exits). Where an open file cannot be removed, it is closed and removed here.

    Returns:
        The thread freeing the blocks (join it before counting on the space), or `None` when nothing is left to free.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> _ = open(path, "wb").write(b"x" * 10)
        >>> freeing = remove_file_freeing_later(path)
        >>> os.path.exists(path), freeing is None or freeing.join() is None
        (False, True)
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # gone already (FileNotFoundError propagates from the removal), or not readable: remove it
        os.remove(path)
        return None
    try:
        os.remove(path)
    except OSError:
        os.close(descriptor)
        os.remove(path)  # a platform that refuses to remove an open file; still raises if the name cannot go
        return None
    if os.fstat(descriptor).st_nlink > 0:  # other names keep the file: nothing to free
        os.close(descriptor)
        return None
    freeing = threading.Thread(target=os.close, args=(descriptor,), name="danling-free", daemon=True)
    freeing.start()
    return freeing


def sweep_run_directories(directories: Iterable[tuple[str, str]]) -> list[str]:
    r"""
    At a run's start: remove stale temporaries from each `(run directory, checkpoint directory)` pair whose run
    directory no other live process holds (see [`held_by_another`][danling.runner.rundir.lock.held_by_another]).

    Returns:
        The paths removed.
    """
    removed: list[str] = []
    seen = set()
    for run_dir, checkpoint_dir in directories:
        key = os.path.realpath(checkpoint_dir)
        if key in seen or not os.path.isdir(checkpoint_dir) or held_by_another(run_dir):
            continue
        seen.add(key)
        removed += [os.path.join(checkpoint_dir, name) for name in remove_stale_temporaries(checkpoint_dir)]
    return removed


def run_directories(config: Mapping, run_dir_name: str, timestamp: str) -> list[tuple[str, str]]:
    r"""
    `(run directory, checkpoint directory)` of this launch of a run, then, without an explicit `dir` or
    `checkpoint_dir`, those of the run's other launches (`project_root/{name}-{id}/*`): a launch killed during its
    first save is never resumed into, so only a later launch can clean up after it.

    Examples:
        >>> run_directories({"dir": "runs/a"}, "Run-1234", "t")
        [('runs/a', 'runs/a/checkpoints')]
    """
    name = config.get("checkpoint_dir_name") or "checkpoints"
    launches = os.path.join(config.get("project_root") or "experiments", run_dir_name)
    run_dir = config.get("dir")
    run_dir = os.path.join(launches, timestamp) if run_dir is None else run_dir
    checkpoint_dir = config.get("checkpoint_dir")
    own = [(run_dir, os.path.join(run_dir, name) if checkpoint_dir is None else checkpoint_dir)]
    if config.get("dir") is not None or checkpoint_dir is not None:
        return own
    try:
        others = sorted(os.listdir(launches))
    except OSError:
        others = []
    return own + [(os.path.join(launches, other), os.path.join(launches, other, name)) for other in others]
