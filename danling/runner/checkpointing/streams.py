"""File objects that hash a checkpoint's bytes as they pass: the digest of a save is computed while `torch.save`
writes, and a load verifies while `torch.load` reads, in one pass over the file.

A large block (a tensor's storage) is moved in parts of `PART` bytes, and each part is hashed in a worker thread
while the next one is written or read (`hashlib` and file I/O both release the GIL), so hashing costs about the
time of the slower of the two, not their sum. The worker never outlives the call that handed it memory.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

# Bytes moved and hashed at a time when a block is large enough to overlap the two.
PART = 2 << 20
# The first and the last part of a large block: short waits at its two ends (see `part_bounds`).
EDGE = 1 << 18
# Writes smaller than this (zip headers, the pickle) are gathered into one buffer before they reach the file.
SMALL_WRITE = 1 << 16
# A read that starts at most this far past the bytes hashed so far reads and hashes the bytes in between first
# (zip headers and alignment between two records); a read further ahead (the zip directory at the end, read first)
# is served as it is, and its bytes are hashed in order later.
GAP_LIMIT = 1 << 20


def parallel_hashing() -> bool:
    r"""
    Whether this process may run on two CPUs or more: hashing beside the I/O needs a second one; on one, handing
    the parts to a thread only adds its overhead.

    Examples:
        >>> isinstance(parallel_hashing(), bool)
        True
    """
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:  # no affinity on this platform
        return (os.cpu_count() or 1) > 1


def part_bounds(length: int) -> list[tuple[int, int]]:
    r"""
    Where a block of `length` bytes is cut for hashing beside the I/O: parts of `PART` bytes, but the first and the
    last of `EDGE` bytes. The worker idles while the first part moves and the caller waits while the last part is
    hashed; small parts at both ends keep those waits short for every large block (a tensor's storage).

    Examples:
        >>> sizes = [end - start for start, end in part_bounds(5 * PART)]
        >>> sizes[0] == sizes[-1] == EDGE, max(sizes) == PART, sum(sizes) == 5 * PART
        (True, True, True)
        >>> sum(end - start for start, end in part_bounds(5 * PART + 7)) == 5 * PART + 7
        True
    """
    bounds, start = [(0, min(EDGE, length))], min(EDGE, length)
    while length - start > PART + EDGE:
        bounds.append((start, start + PART))
        start += PART
    if length - start > EDGE:
        bounds.append((start, length - EDGE))
        start = length - EDGE
    if start < length:
        bounds.append((start, length))
    return bounds


def read_sequentially(raw: BinaryIO) -> None:
    r"""
    Tell the kernel that `raw` is read from start to end (`POSIX_FADV_SEQUENTIAL`: a larger read-ahead), where the
    platform has `posix_fadvise`: a checkpoint that is not in the page cache is read from disk about 1.4x faster
    through a [`HashingReader`][danling.runner.checkpointing.streams.HashingReader] (576 MiB, 0.72 s instead of
    1.02 s here; `torch.load` of the path: 0.54 s).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as raw:
        ...     read_sequentially(raw)
    """
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(raw.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:  # a file system that takes no advice
            pass


class Digest:
    r"""
    A SHA-256 fed in file order, that hashes a large block in parts, each while the next part moves.

    Examples:
        >>> digest = Digest()
        >>> data = bytearray(b"abc" * 5)
        >>> moved = digest.transfer(memoryview(data), lambda part: len(part))
        >>> moved, digest.hexdigest() == hashlib.sha256(data).hexdigest()
        (15, True)
    """

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self._worker: ThreadPoolExecutor | None = None

    def update(self, data: Any) -> None:
        r"""Hash `data` now (bytes that follow everything hashed so far)."""
        self.sha256.update(data)

    def transfer(self, view: memoryview, move: Callable[[memoryview], int]) -> int:
        r"""
        Move `view` with `move` (write it, or read into it) part by part, hashing each part moved.

        Args:
            view: The bytes, in file order after everything hashed so far.
            move: Moves one part and returns how many bytes it moved; fewer than the part ends the transfer
                (end of file), and only the bytes moved are hashed.

        Returns:
            The bytes moved.
        """
        if len(view) < 2 * PART or not parallel_hashing():
            moved = move(view)
            self.sha256.update(view[:moved])
            return moved
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="danling-digest")
        pending: Future | None = None
        total = 0
        try:
            for start, end in part_bounds(len(view)):
                part = view[start:end]
                moved = move(part)
                if pending is not None:
                    pending.result()
                pending = self._worker.submit(self.sha256.update, part[:moved])
                total += moved
                if moved < len(part):
                    break
        finally:
            if pending is not None:  # the memory of `view` is the caller's: never hash it after returning
                pending.result()
        return total

    def hexdigest(self) -> str:
        r"""The hex SHA-256 of everything hashed so far."""
        return self.sha256.hexdigest()

    def close(self) -> None:
        r"""Stop the worker thread, if one was started."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


class HashingWriter(io.RawIOBase):
    r"""
    A write-only file object over `raw` that hashes every byte written (pass it to `torch.save`).

    Small writes are gathered in a buffer (and hashed at once); a large one is written and hashed in overlapping
    parts. `flush` empties the buffer into `raw`
    (`torch.save` calls it when it is done); `close` does not. `error` keeps the first `OSError` a write of `raw`
    raised: `torch.save` turns it into a `RuntimeError` that names no cause.

    Examples:
        >>> import tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> with open(path, "wb", buffering=0) as raw, HashingWriter(raw) as writer:
        ...     torch.save({"w": torch.ones(3)}, writer)
        >>> with open(path, "rb") as fp:
        ...     writer.hexdigest() == hashlib.sha256(fp.read()).hexdigest(), writer.size == os.path.getsize(path)
        (True, True)
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.size = 0
        self.error: OSError | None = None  # what a write of `raw` raised (torch.save reports only a bad position)
        self._digest = Digest()
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        length = len(view)
        if length < SMALL_WRITE:
            self._digest.update(view)
            self._buffer += view
            if len(self._buffer) >= PART:
                self._drain()
        else:
            self._drain()
            self._digest.transfer(view, self._write_all)
        self.size += length
        return length

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self.closed:
            self._drain()
            self.raw.flush()

    def close(self) -> None:
        # No flush: `torch.save` flushes when it is done, and a failed save must not write any more.
        if not self.closed:
            self._digest.close()
            self._buffer = bytearray()
            super().close()

    def hexdigest(self) -> str:
        r"""The hex SHA-256 of the bytes written."""
        return self._digest.hexdigest()

    def _drain(self) -> None:
        if self._buffer:
            self._write_all(memoryview(self._buffer))
            self._buffer = bytearray()

    def _write_all(self, view: memoryview) -> int:
        length = len(view)
        try:
            while view:
                written = self.raw.write(view)
                if written is None:  # a non-blocking file; checkpoints never are
                    raise OSError(f"could not write to {self.raw!r}: it would block")
                view = view[written:]
        except OSError as error:
            self.error = error if self.error is None else self.error
            raise
        return length


class HashingReader(io.RawIOBase):
    r"""
    A read-only, seekable file object over `raw` (`size` bytes) that hashes the file in order as it is read (pass
    it to `torch.load`), so verifying a checkpoint costs no second read.

    Bytes are hashed when a read reaches the end of the bytes hashed so far; reads a little ahead of it hash the
    gap first; reads behind it or far ahead (the zip directory at the end, which `torch.load` reads first) are
    served unhashed, and [`hexdigest`][danling.runner.checkpointing.streams.HashingReader.hexdigest] hashes what
    is left when the load is done. `bytes_read` counts every byte read from `raw`.

    Examples:
        >>> import tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> torch.save({"w": torch.arange(3)}, path)
        >>> with open(path, "rb", buffering=0) as raw, HashingReader(raw, os.path.getsize(path)) as reader:
        ...     loaded = torch.load(reader, weights_only=True)
        ...     digest = reader.hexdigest()
        >>> with open(path, "rb") as fp:
        ...     loaded["w"], digest == hashlib.sha256(fp.read()).hexdigest()
        (tensor([0, 1, 2]), True)
    """

    def __init__(self, raw: BinaryIO, size: int) -> None:
        super().__init__()
        read_sequentially(raw)
        self.raw = raw
        self.length = size
        self.position = 0
        self.hashed = 0  # bytes [0, hashed) are in the digest
        self.bytes_read = 0
        self._digest = Digest()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view = view[: max(0, min(len(view), self.length - self.position))]
        gap = self.position - self.hashed
        if 0 < gap <= GAP_LIMIT:
            self._hash_to(self.position)
        self.raw.seek(self.position)
        if self.position == self.hashed:
            moved = self._digest.transfer(view, self._read_all)
            self.hashed += moved
        else:
            moved = self._read_all(view)
        self.position += moved
        return moved

    def hexdigest(self) -> str:
        r"""Hash the bytes not hashed yet (reading them), then return the hex SHA-256 of the whole file."""
        self._hash_to(self.length)
        return self._digest.hexdigest()

    def close(self) -> None:
        if not self.closed:
            self._digest.close()
            super().close()

    def _hash_to(self, end: int) -> None:
        # Read and hash [hashed, end) through a scratch buffer.
        self.raw.seek(self.hashed)
        scratch = bytearray(min(PART, max(end - self.hashed, 0)))
        while self.hashed < end:
            view = memoryview(scratch)[: min(len(scratch), end - self.hashed)]
            moved = self._read_all(view)
            self._digest.update(view[:moved])
            self.hashed += moved
            if moved < len(view):
                break

    def _read_all(self, view: memoryview) -> int:
        total = 0
        while total < len(view):
            moved = self.raw.readinto(view[total:])
            if not moved:
                break
            total += moved
        self.bytes_read += total
        return total


def sha256_stream(raw: BinaryIO) -> str:
    r"""
    Hex SHA-256 of the rest of the file `raw`, read once: into one of two buffers while the other is hashed.

    Examples:
        >>> sha256_stream(io.BytesIO(b"abc"))[:16]
        'ba7816bf8f01cfea'
    """
    read_sequentially(raw)
    digest = hashlib.sha256()
    if not parallel_hashing():
        view = memoryview(bytearray(PART))
        while moved := _read_full(raw, view):
            digest.update(view[:moved])
        return digest.hexdigest()
    buffers = (memoryview(bytearray(PART)), memoryview(bytearray(PART)))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="danling-digest") as worker:
        pending: Future | None = None
        for index in itertools.count():
            view = buffers[index % 2]
            moved = _read_full(raw, view)  # while the other buffer is hashed
            if pending is not None:
                pending.result()
            if not moved:
                break
            pending = worker.submit(digest.update, view[:moved])
        # leaving the block waits for the worker, also when a read failed: it never hashes freed memory
    return digest.hexdigest()


def _read_full(raw: BinaryIO, view: memoryview) -> int:
    total = 0
    while total < len(view):
        moved = raw.readinto(view[total:])
        if not moved:
            break
        total += moved
    return total
