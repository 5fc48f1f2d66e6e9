"""Agreeing across ranks that one of them failed, so that every rank stops with the same clear error.

A failure that happens on one rank only (rank 0's checkpoint write, a background save, rank 0's half of a sharded
commit) must not leave the other ranks waiting in their next collective until `dist_timeout` expires.
[`FailureConsensus`][danling.runner.distributed.consensus.FailureConsensus] keeps such a failure instead of raising it
at once;
at the next point where every rank meets anyway, one all-reduce (the one that already carries the preemption flag
every `preemption_check_steps` optimizer steps) tells every rank whether any rank failed, and every rank raises
[`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] naming the failing rank and its error. The
runner
agrees over a CPU side channel ([`cpu_channel`][danling.runner.distributed.consensus.cpu_channel]), so that reading the
result
never waits for an accelerator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist

from danling.utils.distributed import communication_device, is_distributed


class RankFailedError(RuntimeError):
    r"""
    Raised on every rank when one rank failed where all ranks had to agree (a checkpoint save, a background save).

    The message names the failing rank and its error (with the file and the cause, e.g. a full disk); on the
    failing rank the original exception is chained as `__cause__`.

    Attributes:
        rank: The rank that failed (the lowest one, when several did).
        problem: Its error, as `"{type}: {message}"`.

    Examples:
        >>> str(RankFailedError(0, "OSError: disk full", world_size=2))
        'rank 0 of 2 failed: OSError: disk full; every rank stops'
    """

    def __init__(self, rank: int, problem: str, world_size: int) -> None:
        super().__init__(f"rank {rank} of {world_size} failed: {problem}; every rank stops")
        self.rank = rank
        self.problem = problem


def describe(error: BaseException) -> str:
    r"""
    `"{type}: {message}"` of an error, what the other ranks are told about it.

    Examples:
        >>> describe(OSError(28, "No space left on device"))
        'OSError: [Errno 28] No space left on device'
    """
    return f"{type(error).__name__}: {error}"


class FailureConsensus:
    r"""
    Holds this rank's failure until every rank agrees on it, then raises it on all of them.

    Wrap rank-local work whose failure must stop every rank in
    [`contain`][danling.runner.distributed.consensus.FailureConsensus.contain], then call
    [`agree`][danling.runner.distributed.consensus.FailureConsensus.agree] on every rank at the same point. In a single
    process `agree` re-raises the kept error itself, with no collective and no tensor work; distributed, it is one
    all-reduce of two integers (plus, only when a rank failed, one broadcast of its message).

    Examples:
        >>> failures = FailureConsensus()
        >>> with failures.contain():
        ...     raise OSError(28, "No space left on device")
        >>> failures.failed
        True
        >>> failures.agree()
        Traceback (most recent call last):
        OSError: [Errno 28] No space left on device
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        r"""Whether this rank holds a failure not yet agreed on."""
        return self.error is not None

    @contextmanager
    def contain(self) -> Iterator[None]:
        r"""
        Keep an `Exception` raised inside the block (the first one) for the next `agree`, instead of raising it now.

        A [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] passes through: every rank already
        agreed.
        """
        try:
            yield
        except RankFailedError:
            raise
        except Exception as error:  # kept, and raised by `agree` on every rank
            if self.error is None:
                self.error = error

    def agree(self, signum: int = 0, device: torch.device | str | None = None, group: Any = None) -> int:
        r"""
        Agree with every rank on failures (and on a preemption signal). Collective when distributed.

        Args:
            signum: The preemption signal this rank received (0 for none), carried in the same all-reduce.
            device: Device of the flags (default: the one the default process group communicates on); `"cpu"`
                with a `gloo` group such as [`cpu_channel`][danling.runner.distributed.consensus.cpu_channel].
            group: Process group of every rank to agree over (default: the default group).

        Returns:
            The largest signal number any rank received (0 for none).

        Raises:
            RankFailedError: On every rank, when any rank kept a failure (distributed).
            Exception: The kept failure itself, in a single process, or on every rank when every rank failed (an
                error the ranks had already agreed on, such as a non-finite loss).
        """
        if not is_distributed():
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            return signum
        world_size = dist.get_world_size()
        failed = world_size - dist.get_rank() if self.error is not None else 0  # MAX picks the lowest failed rank
        device = communication_device() if device is None else device
        flags = torch.tensor([signum, failed, self.error is None], dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
        agreed, failed, any_healthy = flags.tolist()
        if failed and not any_healthy:  # every rank failed (an error they already agreed on): each raises its own
            error, self.error = self.error, None
            raise error
        if failed:
            self._raise_everywhere(world_size - failed, world_size, group)
        return agreed

    def _raise_everywhere(self, rank: int, world_size: int, group: Any = None) -> None:
        error, self.error = self.error, None
        message = [describe(error) if error is not None and rank == dist.get_rank() else None]
        dist.broadcast_object_list(message, src=rank, group=group)  # every rank is in `group`: global rank
        raise RankFailedError(rank, str(message[0]), world_size) from error


_CHANNEL: list[Any] = [None, None]  # [the default group it was made for, the gloo group]


def cpu_channel(timeout: timedelta | None = None) -> Any:
    r"""
    A process group of every rank that communicates CPU tensors: the default group when its backend is `gloo`
    (or has a `cpu:gloo` part), else a `gloo` group made once per default group. Agreeing over it reads a CPU
    tensor, so it never synchronises the host with an accelerator. Collective the first time (every rank must ask,
    in the same order as their other groups); `None` in a single process.

    Args:
        timeout: Timeout of its collectives when a group is made (`config.dist_timeout`; `None`: torch's default).

    Examples:
        >>> cpu_channel() is None
        True
    """
    if not is_distributed():
        return None
    world = dist.group.WORLD
    if carries_cpu(str(dist.get_backend())):
        return world
    if _CHANNEL[0] is not world:
        group = dist.new_group(backend="gloo") if timeout is None else dist.new_group(backend="gloo", timeout=timeout)
        _CHANNEL[:] = [world, group]
    return _CHANNEL[1]


def carries_cpu(backend: str) -> bool:
    r"""
    Whether a process group of `backend` communicates CPU tensors with `gloo`.

    Examples:
        >>> carries_cpu("gloo"), carries_cpu("cpu:gloo,cuda:nccl"), carries_cpu("nccl")
        (True, True, False)
    """
    return backend == "gloo" or "cpu:gloo" in backend
