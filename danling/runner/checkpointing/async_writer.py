"""`AsyncCheckpointWriter`: durable checkpoint saves that run in a background thread (`async_save`)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

import torch

from ..distributed.consensus import FailureConsensus


class AsyncSaveError(OSError):
    r"""
    A checkpoint saved in the background failed; the message names the file, the cause is chained, and `errno` is
    the cause's (`errno.ENOSPC` for a full disk).

    Examples:
        >>> error = AsyncSaveError.of(OSError(28, "No space left on device"), "background save of 'x.pth' failed")
        >>> error.errno, str(error)
        (28, "background save of 'x.pth' failed: No space left on device")
    """

    @classmethod
    def of(cls, cause: BaseException, what: str) -> AsyncSaveError:
        r"""The error of `what` (e.g. "background save of checkpoint 'x.pth' failed") caused by `cause`."""
        if isinstance(cause, OSError) and cause.errno is not None:
            error = cls(cause.errno, f"{what}: {cause.strerror or cause}")
        else:
            error = cls(f"{what}: {cause}")
        error.__cause__ = cause
        return error

    def __str__(self) -> str:
        # The message alone, as for an error without errno: "[Errno 28]" would hide the file it names.
        return self.strerror if self.errno is not None and self.strerror else super().__str__()


def snapshot(state: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    r"""
    A copy of `state` in host memory that later training steps cannot change.

    Tensors are copied (into pinned memory from CUDA, with one synchronisation at the end); mappings, lists and
    tuples are rebuilt with their types (an `OrderedDict` keeps its `_metadata`); a tensor referenced twice is
    copied once, so tied weights stay tied; other values are deep-copied.

    Examples:
        >>> weight = torch.zeros(2)
        >>> copied = snapshot({"model": {"w": weight}, "steps": 3})
        >>> _ = weight.add_(1)
        >>> copied
        {'model': {'w': tensor([0., 0.])}, 'steps': 3}
    """
    top = memo is None
    memo = {} if memo is None else memo
    copied = _copy(state, memo)
    if top and torch.cuda.is_available() and any(tensor.is_pinned() for tensor in memo.values()):
        torch.cuda.synchronize()  # the non-blocking device-to-host copies are complete
    return copied


def _copy(value: Any, memo: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = _host_copy(value)
        return memo[id(value)]
    if isinstance(value, Mapping):
        copied = copy.copy(value)  # same type and attributes (an OrderedDict's `_metadata`)
        for key, item in value.items():
            copied[key] = _copy(item, memo)
        return copied
    if isinstance(value, (list, tuple)):
        items = [_copy(item, memo) for item in value]
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    return copy.deepcopy(value)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.clone()
    host = torch.empty_like(tensor, device="cpu", pin_memory=tensor.device.type == "cuda")
    return host.copy_(tensor, non_blocking=True)


class AsyncCheckpointWriter:
    r"""
    Runs checkpoint commits in a background thread, one at a time.

    [`submit`][danling.runner.checkpointing.async_writer.AsyncCheckpointWriter.submit] stalls the caller only for a
    [`snapshot`][danling.runner.checkpointing.async_writer.snapshot] of the state (after waiting for the save
    still in flight, if any); the commit itself (write, fsync, manifest, rename, retention: the
    [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager]'s normal path) and a verification of
    the committed file run in the thread. A failure is kept and raised by the next
    [`check`][danling.runner.checkpointing.async_writer.AsyncCheckpointWriter.check], `submit` or
    [`wait`][danling.runner.checkpointing.async_writer.AsyncCheckpointWriter.wait] as an
    [`AsyncSaveError`][danling.runner.checkpointing.AsyncSaveError] naming the file (and given to `on_error` at
    once, from the thread, e.g. to write it to the run's log). The thread is not a daemon: the interpreter waits
    for a save in flight before it exits.

    Args:
        verify: Returns what is wrong with a committed file (`None`: nothing).
        on_error: Called with each failure, in the background thread, when it happens.

    Examples:
        >>> import os, tempfile
        >>> from danling.runner.checkpointing import CheckpointManager
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> writer = AsyncCheckpointWriter()
        >>> weight = torch.zeros(1)
        >>> writer.submit({"w": weight}, manager.path("latest"), lambda state: manager.save(state, steps=1))
        >>> _ = weight.add_(1)  # training goes on; the save holds the state it was given
        >>> writer.wait()
        >>> manager.load(manager.path("latest"), weights_only=True)["w"]
        tensor([0.])
    """

    def __init__(
        self,
        verify: Callable[[str], str | None] | None = None,
        on_error: Callable[[AsyncSaveError], None] | None = None,
    ) -> None:
        self.verify = verify
        self.on_error = on_error
        self._thread: threading.Thread | None = None
        self._error: AsyncSaveError | None = None
        self._after: list[Callable[[], None]] = []
        self._pending = False  # a save is submitted and its callbacks not yet taken
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        r"""Whether a save is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, state: Mapping, path: str, commit: Callable[[Mapping], Any]) -> None:
        r"""
        Wait for the save in flight, snapshot `state`, then run `commit(snapshot)` in the background.

        Args:
            state: The checkpoint.
            path: The file `commit` writes (named in errors, verified after the commit).
            commit: Writes the snapshot durably (e.g. a bound `CheckpointManager.save`).

        Raises:
            AsyncSaveError: If the previous save failed.
        """
        self.wait()
        copied = snapshot(state)
        self._pending = True
        self._thread = threading.Thread(target=self._run, args=(copied, path, commit), name="danling-async-save")
        self._thread.start()

    def after_commit(self, callback: Callable[[], None]) -> None:
        r"""Run `callback` once the save in flight has committed (at once when none is in flight)."""
        with self._lock:
            if self._pending:
                self._after.append(callback)
                return
        callback()

    def check(self) -> None:
        r"""Raise the failure of a finished background save, if any; never blocks."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        r"""Block until the save in flight (if any) is committed and verified; raise its failure."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()

    @contextmanager
    def draining(self) -> Iterator[None]:
        r"""
        Wait for the save in flight when the block ends; when it ends with an exception, a failure of the save is
        attached to it as a note instead of replacing it.

        When the block ends normally in a process group of several ranks, every rank must drain (a collective):
        they agree on the outcome, so a failure of rank 0's last save raises
        [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] on every rank, not on rank 0 alone.
        """
        try:
            yield
        except BaseException as error:
            try:
                self.wait()
            except AsyncSaveError as failure:
                if hasattr(error, "add_note"):  # Python 3.11+
                    error.add_note(str(failure))
            raise
        failures = FailureConsensus()
        with failures.contain():
            self.wait()
        failures.agree()

    def _run(self, state: Mapping, path: str, commit: Callable[[Mapping], Any]) -> None:
        try:
            commit(state)
            problem = None if self.verify is None else self.verify(path)
            if problem is not None:
                raise OSError(f"the committed file does not verify: {problem}")
        except BaseException as error:
            self._fail(AsyncSaveError.of(error, f"background save of checkpoint {path!r} failed"))
            with self._lock:
                self._after, self._pending = [], False  # nothing describes a checkpoint that was not written
            return
        with self._lock:
            callbacks, self._after, self._pending = self._after, [], False
        for callback in callbacks:
            try:
                callback()
            except BaseException as error:
                self._fail(AsyncSaveError.of(error, f"after saving checkpoint {path!r}"))
                return

    def _fail(self, error: AsyncSaveError) -> None:
        self._error = error
        if self.on_error is not None:
            with suppress(Exception):  # reporting a failure must not hide it
                self.on_error(error)


def drained(saver: AsyncCheckpointWriter | None) -> AbstractContextManager:
    r"""
    A block that returns (or raises, preemption included) only once `saver`'s background save has committed: its
    [`draining`][danling.runner.checkpointing.async_writer.AsyncCheckpointWriter.draining], or nothing without a
    saver.

    Examples:
        >>> with drained(None):
        ...     pass
    """
    return nullcontext() if saver is None else saver.draining()
