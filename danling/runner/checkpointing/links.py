"""One checkpoint, several names, its bytes on disk once: hard links, or pointer files where there are none.

A save writes its bytes once. The other names it commits (`step-N`, `epoch-N`, `best`) are hard links to the same
file (for a sharded `*.dcp` directory: a directory of hard links to its files), each made under a temporary name
and renamed over its target. Every commit renames a new file over a name and never writes into an existing one,
so a name keeps the bytes it was given: `best.pth` stays the best checkpoint when `latest.pth` moves on.

Where the file system refuses hard links (`os.link` raises `OSError`), a save writes its bytes to a data file
named after their SHA-256, `data-{sha256}.pth.data` (a directory `data-{sha256}.dcp.data` for sharded
checkpoints), which is never rewritten, and every name is a pointer file, a one-line JSON object:

    {"danling_checkpoint_pointer": 1, "target": "data-{sha256}.pth.data", "sha256": "{sha256}", "size": 1234}

`target` is a file name in the pointer's own directory. Readers follow it (see
[`resolve`][danling.runner.checkpointing.links.resolve]); a data file that no pointer of its directory names
any more is deleted after each save (see [`collect_data`][danling.runner.checkpointing.links.collect_data]).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from danling.utils.io import fsync_path

from .temporaries import remove_path, temporary_path

RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux >= 3.15)
AT_FDCWD = -100

POINTER_KEY = "danling_checkpoint_pointer"
POINTER_VERSION = 1
# A pointer file is never larger than this: anything larger is a checkpoint.
POINTER_LIMIT = 4096
DATA_PATTERN = re.compile(r"data-[0-9a-f]{64}\.[A-Za-z0-9]+\.data")


def data_name(digest: str, suffix: str) -> str:
    r"""
    Name of the data file that holds the bytes of digest `digest` when names are pointers.

    Examples:
        >>> data_name("ab" * 32, ".pth")[:12], data_name("ab" * 32, ".pth")[-9:]
        ('data-abababa', '.pth.data')
    """
    return f"data-{digest}{suffix}.data"


def read_pointer(path: str) -> dict[str, Any] | None:
    r"""
    The pointer in the file at `path`, or `None` when it is no pointer file (a checkpoint, a directory, nothing).

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "best.pth")
        >>> write_pointer(path, data_name("0" * 64, ".pth"), {"sha256": "0" * 64, "size": 3})
        >>> read_pointer(path)["size"], read_pointer(os.path.dirname(path))
        (3, None)
    """
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > POINTER_LIMIT:
            return None
        with open(path, "rb") as fp:
            raw = fp.read(POINTER_LIMIT + 1)
    except OSError:
        return None
    if not raw.startswith(b"{"):
        return None
    try:
        pointer = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(pointer, dict) or pointer.get(POINTER_KEY) != POINTER_VERSION:
        return None
    if not isinstance(pointer.get("target"), str) or DATA_PATTERN.fullmatch(pointer["target"]) is None:
        return None  # a pointer only ever names a data file next to it
    return pointer


def resolve(path: str | os.PathLike) -> str:
    r"""
    Where the bytes of the checkpoint `path` are: the data file its pointer names, or `path` itself.

    Examples:
        >>> resolve("no/such/latest.pth")
        'no/such/latest.pth'
    """
    path = os.fsdecode(path)
    pointer = read_pointer(path)
    if pointer is None:
        return path
    return os.path.join(os.path.dirname(path), pointer["target"])


def write_pointer(path: str, target: str, entry: Mapping[str, Any]) -> None:
    r"""Write a pointer file at `path` naming the data file `target` (a name in the same directory) of `entry`
    (its `sha256` and `size`)."""
    pointer = {POINTER_KEY: POINTER_VERSION, "target": target, "sha256": entry["sha256"], "size": entry["size"]}
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(json.dumps(pointer) + "\n")


def links_supported(directory: str) -> bool:
    r"""
    Whether the file system of `directory` (which must exist) makes hard links: one is made and removed.

    Examples:
        >>> import tempfile
        >>> links_supported(tempfile.mkdtemp())
        True
    """
    source = temporary_path(os.path.join(directory, "link-probe"))
    target = temporary_path(os.path.join(directory, "link-probe"))
    try:
        with open(source, "wb"):
            pass
        os.link(source, target)
    except OSError:
        return False
    finally:
        for path in (source, target):
            with suppress(OSError):
                os.remove(path)
    return True


def link_file(source: str, temporary: str) -> None:
    r"""
    Make `temporary` a hard link to `source`, or a copy of it where the link is refused. `temporary` may exist as
    an empty placeholder (as [`write_atomic`][danling.utils.io.write_atomic] creates it): it is replaced.
    """
    with suppress(FileNotFoundError):
        os.remove(temporary)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)


def link_tree(source: str, destination: str) -> None:
    r"""
    Make `destination` a new directory tree whose files are hard links to those of the directory `source`, and
    make its directories durable (the files' bytes already are).

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(root, "a", "sub"))
        >>> with open(os.path.join(root, "a", "sub", "x"), "w") as fp:
        ...     _ = fp.write("x")
        >>> link_tree(os.path.join(root, "a"), os.path.join(root, "b"))
        >>> os.path.samefile(os.path.join(root, "a", "sub", "x"), os.path.join(root, "b", "sub", "x"))
        True
    """
    directories = []
    for root, subdirectories, names in os.walk(source):
        target = os.path.join(destination, os.path.relpath(root, source))
        os.mkdir(destination if root == source else target)
        directories.append(target)
        for name in names:
            os.link(os.path.join(root, name), os.path.join(target, name))
        subdirectories.sort()
    for directory in reversed(directories):
        fsync_directory(directory)


def store_data(staged: str, digest: str, suffix: str) -> str:
    r"""
    Commit the written and fsynced file or directory `staged` as the data file of `digest` in its directory, and
    return its path; when that data file exists already (the same bytes saved before), `staged` is removed.
    """
    directory = os.path.dirname(os.path.abspath(staged))
    path = os.path.join(directory, data_name(digest, suffix))
    if os.path.exists(path):
        remove_path(staged)
        return path
    os.rename(staged, path)
    fsync_directory(directory)
    return path


def referenced_data(directory: str) -> set[str]:
    r"""The data files of `directory` that a pointer file in it names."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    targets = set()
    for name in names:
        if name.startswith(".") or DATA_PATTERN.fullmatch(name):
            continue
        pointer = read_pointer(os.path.join(directory, name))
        if pointer is not None:
            targets.add(pointer["target"])
    return targets


def collect_data(directory: str) -> list[str]:
    r"""
    Delete the data files of `directory` that no pointer file in it names; returns their names.

    Examples:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> for digest in ("1" * 64, "2" * 64):
        ...     open(os.path.join(directory, data_name(digest, ".pth")), "w").close()
        >>> write_pointer(os.path.join(directory, "best.pth"), data_name("1" * 64, ".pth"), {"sha256": "1", "size": 0})
        >>> [name[:7] for name in collect_data(directory)], sorted(name[:7] for name in os.listdir(directory))
        (['data-22'], ['best.pt', 'data-11'])
    """
    try:
        data = [name for name in os.listdir(directory) if DATA_PATTERN.fullmatch(name)]
    except OSError:
        return []
    if not data:
        return []
    referenced = referenced_data(directory)
    removed = []
    for name in sorted(data):
        if name not in referenced:
            remove_path(os.path.join(directory, name))
            removed.append(name)
    return removed


def fsync_directory(directory: str) -> None:
    r"""Make the entries of `directory` durable, where the platform can open a directory."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def link_or_copy_tree(source: str, destination: str) -> None:
    r"""[`link_tree`][danling.runner.checkpointing.links.link_tree], or a full copy where a link is refused."""
    try:
        link_tree(source, destination)
    except OSError:
        remove_path(destination)
        shutil.copytree(source, destination)
        fsync_tree(destination)


def fsync_tree(path: str) -> None:
    r"""Make every file and directory under `path` durable (files first, then their directories)."""
    for root, _, names in os.walk(path, topdown=False):
        for name in [*names, None]:
            fsync_path(root if name is None else os.path.join(root, name))


def swap_into_place(temporary: str, target: str) -> None:
    r"""
    Make the directory (or pointer file) `temporary` the directory (or pointer file) `target`, atomically where the
    platform allows.

    A new `target` is a rename, as is a pointer file over a pointer file. An existing directory is exchanged with
    `temporary` by `renameat2(RENAME_EXCHANGE)` (one atomic step on Linux), then the old one is deleted; elsewhere
    it is moved aside first (a crash in between leaves no `target`, but its step-stamped copy).
    """
    if not os.path.exists(target):
        os.rename(temporary, target)
    elif os.path.isfile(temporary) and os.path.isfile(target):  # a pointer file over a pointer file
        os.replace(temporary, target)
    elif _exchange(temporary, target):
        remove_path(temporary)
    else:
        aside = temporary[: -len(".tmp")] + "-old.tmp"  # still a temporary of the same writer
        os.rename(target, aside)
        os.rename(temporary, target)
        remove_path(aside)
    fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(first: str, second: str) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    code = renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    return code == 0
