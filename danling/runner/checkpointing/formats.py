"""How a checkpoint's state becomes bytes on disk: a small writer/reader interface and the `torch.save` format."""

from __future__ import annotations

import errno
import os
import re
import shutil
import traceback
import zipfile
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import torch

from .streams import HashingReader, HashingWriter, sha256_stream

# How `torch.save` reports a write that failed (it keeps no errno): "[enforce fail at inline_container.cc:...] .
# unexpected pos 768 vs 696", "PytorchStreamWriter failed writing file data/0: file write failed".
TORCH_WRITE_FAILURE = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed|file write failed")
# A write that failed with less free space than this (or than it still had to write) ran out of space.
LOW_SPACE = 1 << 20


class CheckpointFormat(Protocol):
    r"""
    What the [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] needs from a checkpoint format.

    A format serialises a state to a path and back, and computes the digest that verifies it. The manager owns
    names, atomic commits, manifests and retention; a format owns only bytes. A sharded format (a directory per
    checkpoint) implements the same four methods. A format that can also verify while it reads has `read_checked`
    (see [`read_checked`][danling.runner.checkpointing.formats.TorchFileFormat.read_checked]).
    """

    name: str
    suffix: str

    def write(self, state: Mapping, path: str) -> str | None:
        r"""
        Serialise `state` to `path` (a temporary path the manager later renames); return the hex SHA-256 of the bytes
        written when it hashed them as they were written, else `None` (the manager then calls `digest`).
        """

    def read(self, path: str, **kwargs: Any) -> Any:
        r"""Deserialise the checkpoint at `path`."""

    def digest(self, path: str) -> str:
        r"""Hex SHA-256 of the checkpoint at `path`."""

    def copy(self, source: str, destination: str) -> None:
        r"""Copy the checkpoint at `source` to the (temporary) `destination`."""


def sha256_file(path: str) -> str:
    r"""
    Hex SHA-256 of a file's bytes, read once (see [`sha256_stream`][danling.runner.checkpointing.streams]).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x")
        >>> with open(path, "wb") as fp:
        ...     _ = fp.write(b"abc")
        >>> sha256_file(path)[:16]
        'ba7816bf8f01cfea'
    """
    with open(path, "rb", buffering=0) as fp:
        return sha256_stream(fp)


def zip_problem(path: str) -> str | None:
    r"""
    What is wrong with a `torch.save` zip archive, checked against the CRCs of its entries; `None` if intact.

    Used for checkpoints without a manifest (written by hand or by another tool).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> torch.save({"w": torch.ones(3)}, path)
        >>> zip_problem(path) is None
        True
    """
    if not zipfile.is_zipfile(path):
        return "it is not a torch.save archive (no zip directory: truncated, or not a checkpoint)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as error:
        return f"its zip archive is damaged ({error})"
    if bad is not None:
        return f"the CRC of its entry {bad!r} does not match its bytes (corrupt)"
    return None


def free_space(directory: str) -> int | None:
    r"""
    Bytes free for this user in the file system of `directory` (`shutil.disk_usage`), `None` when unknown.

    Examples:
        >>> free_space(".") > 0, free_space("/no/such/directory")
        (True, None)
    """
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def state_bytes(state: object) -> int:
    r"""
    Bytes of the tensors in a (nested) state, each storage counted once: about what a save of it writes.

    Examples:
        >>> weight = torch.zeros(4)
        >>> state_bytes({"model": {"w": weight, "tied": weight}, "optimizer": [torch.zeros(2, dtype=torch.int64)]})
        32
    """
    seen: dict[int, int] = {}
    stack = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return sum(seen.values())


def release_frames(error: BaseException | None) -> None:
    r"""
    Clear the local variables of the frames of `error` and the errors it chains.

    After a failed `torch.save`, its writer, referenced from those frames, keeps the file open: until it is closed,
    deleting the file frees no space, and not even the error fits into the run's log.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def write_failure(error: BaseException, path: str, needed: int = 0) -> OSError | None:
    r"""
    The `OSError` a failed write of `path` stands for, or `None` when `error` is no write failure.

    An `OSError` is itself. A `RuntimeError` of `torch.save` that says its write failed (it keeps no errno) is
    `errno.ENOSPC` when the file system of `path` has less free space than `LOW_SPACE` (1 MiB) or than the `needed`
    bytes not yet written, else `errno.EIO` with torch's message. Other errors (a state that cannot be pickled...)
    are not write failures.

    Args:
        error: What the write raised.
        path: The file written.
        needed: Bytes the write had to write in all (see
            [`state_bytes`][danling.runner.checkpointing.formats.state_bytes]).

    Examples:
        >>> write_failure(RuntimeError("Can't pickle local object"), "x.pth") is None
        True
        >>> write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 696"),
        ...               "x.pth", needed=1 << 60).errno == errno.ENOSPC
        True
    """
    if isinstance(error, OSError):
        return error
    if not isinstance(error, RuntimeError) or TORCH_WRITE_FAILURE.search(str(error)) is None:
        return None
    free = free_space(os.path.dirname(os.path.abspath(path)))
    try:
        written = os.path.getsize(path)
    except OSError:
        written = 0
    if free is not None and free < max(LOW_SPACE, needed - written):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)}: torch.save could not write the file ({error})")


class DigestMismatch(Exception):
    r"""The bytes read match none of the digests they were checked against; `actual` is their hex SHA-256."""

    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


class TorchFileFormat:
    r"""
    One `torch.save` file per checkpoint (`.pth`), loadable with `torch.load(..., weights_only=True)`.

    `write` hashes the bytes as `torch.save` streams them, and `read_checked` hashes them as `torch.load` reads
    them: a save and a verified load each pass over the file once.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> digest = TorchFileFormat().write({"w": torch.ones(2)}, path)
        >>> digest == sha256_file(path)
        True
        >>> TorchFileFormat().read_checked(path, {digest}, weights_only=True)["w"]
        tensor([1., 1.])
    """

    name = "torch"
    suffix = ".pth"

    def write(self, state: Mapping, path: str) -> str:
        with open(path, "wb", buffering=0) as raw, HashingWriter(raw) as writer:
            try:
                torch.save(state, writer)
                writer.flush()
            except RuntimeError as error:
                failure = writer.error or write_failure(error, path, state_bytes(state))
                if failure is None:
                    raise
                release_frames(error)
                raise failure from error
        return writer.hexdigest()

    def read(self, path: str, **kwargs: Any) -> Any:
        return torch.load(path, **kwargs)

    def read_checked(self, path: str, digests: Collection[str], **kwargs: Any) -> Any:
        r"""
        Load the checkpoint at `path` and check, in the same pass over the file, that its SHA-256 is in `digests`.

        `torch.load` reads through a [`HashingReader`][danling.runner.checkpointing.streams.HashingReader]; what
        it returns is handed out only once the digest of every byte matched. With `weights_only=False` (which
        unpickles, so may run code of the file) or `mmap=True` (whose tensors map the file), the file is hashed
        first and loaded only when it matches: the first reads it twice, the second once.

        Raises:
            DigestMismatch: If the SHA-256 of the file is not in `digests` (also when `torch.load` failed on it).
        """
        if kwargs.get("weights_only") is False or kwargs.get("mmap"):
            return self._check_then_read(path, digests, **kwargs)
        kwargs.setdefault("weights_only", True)  # nothing unpickled from bytes not yet verified can run code
        with open(path, "rb", buffering=0) as raw, HashingReader(raw, os.fstat(raw.fileno()).st_size) as reader:
            try:
                loaded = torch.load(reader, **kwargs)
            except Exception as error:  # what torch made of the bytes is moot when they are not the bytes saved
                actual = reader.hexdigest()
                if actual not in digests:
                    raise DigestMismatch(actual) from error
                raise
            actual = reader.hexdigest()
        if actual not in digests:
            raise DigestMismatch(actual)
        return loaded

    def _check_then_read(self, path: str, digests: Collection[str], **kwargs: Any) -> Any:
        with open(path, "rb", buffering=0) as raw:
            actual = sha256_stream(raw)
            if actual not in digests:
                raise DigestMismatch(actual)
            checked = os.fstat(raw.fileno())
            loaded = torch.load(path, **kwargs)
            now = os.stat(path)
        if (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):  # replaced while it was read
            raise FileNotFoundError(f"{path!r} was replaced while it was read")
        return loaded

    def digest(self, path: str) -> str:
        return sha256_file(path)

    def copy(self, source: str, destination: str) -> None:
        r"""A full copy of the file (the manager links names instead; this is its fallback)."""
        shutil.copyfile(source, destination)
