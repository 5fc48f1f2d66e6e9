"""What a hang looks like once a collective timed out: the error naming the ranks that did not arrive, and the
Python stacks every rank that can still act writes to `stacks/rank{r}.txt` in the run directory.

The heartbeats these read are published by [`Heartbeat`][danling.runner.distributed.heartbeat.Heartbeat]: one small
mapping per rank, `{"step", "batch", "phase", "unchanged_for", "time", "host", "pid"}`.
"""

from __future__ import annotations

import faulthandler
import os
import re
import time
import traceback
from collections.abc import Mapping

__all__ = ["RankHungError", "is_timeout", "stack_path", "write_stack", "describe_beat", "describe_hang"]

# A collective (gloo, nccl) or a store operation that ran past the process group's timeout; a gloo pair closed after
# one is also reported so. The DataLoader's own `timeout` is not a collective.
TIMEOUT_PATTERN = re.compile(r"timed out|timeout", re.IGNORECASE)
NOT_COLLECTIVE = ("DataLoader",)
MAX_NAMED = 16  # ranks named one by one in a message; more are counted


class RankHungError(RuntimeError):
    r"""
    Raised on every rank whose collective ran past `dist_timeout`: names the ranks that did not arrive, with the last
    step and phase their heartbeat reported, and where the stacks were written.

    Attributes:
        rank: The rank that raised it (its own collective timed out).
        missing: The ranks that did not arrive, each with its last heartbeat (`None`: it never published one).
        stacks: The directory of the `rank{r}.txt` stack files.

    Examples:
        >>> error = RankHungError("rank 0 of 2: ...", rank=0, missing={1: None}, stacks="run/stacks")
        >>> error.missing, error.rank
        ({1: None}, 0)
    """

    def __init__(self, message: str, rank: int, missing: Mapping[int, Mapping | None], stacks: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.missing = dict(missing)
        self.stacks = stacks

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.rank, self.missing, self.stacks)


def is_timeout(error: BaseException) -> bool:
    r"""
    Whether `error` is a collective (or store operation) that ran past the process group's timeout.

    Examples:
        >>> is_timeout(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv"))
        True
        >>> is_timeout(RuntimeError("DataLoader timed out after 5 seconds")), is_timeout(ValueError("timed out"))
        (False, False)
    """
    if not isinstance(error, RuntimeError) or isinstance(error, RankHungError):
        return False
    message = str(error)
    return TIMEOUT_PATTERN.search(message) is not None and not any(word in message for word in NOT_COLLECTIVE)


def stack_path(run_dir: str, rank: int) -> str:
    r"""
    Where rank `rank` writes its stacks: `run_dir/stacks/rank{rank}.txt`.

    Examples:
        >>> stack_path("run", 3).replace(os.sep, "/")
        'run/stacks/rank3.txt'
    """
    return os.path.join(run_dir, "stacks", f"rank{rank}.txt")


def write_stack(path: str, header: str, error: BaseException | None = None) -> str:
    r"""
    Append `header`, the traceback of `error` (where this rank waited, when given) and the Python stack of every
    thread of this process (`faulthandler.dump_traceback`) to `path`.

    Args:
        path: The stack file ([`stack_path`][danling.runner.distributed.hangs.stack_path]); its directory is made.
        header: What happened, first line of the section.
        error: The collective's error, whose traceback shows where this rank waited.

    Returns:
        `path`.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {header}\n")
        if error is not None:
            file.write("The collective that timed out was called from:\n")
            file.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        file.write("Every thread, now (most recent call first):\n")
        file.flush()
        faulthandler.dump_traceback(file, all_threads=True)
        file.write("\n")
    return path


def describe_beat(beat: Mapping | None, now: float | None = None) -> str:
    r"""
    Where a heartbeat puts its rank: step, phase, batch of the epoch, and for how long it has not changed.

    Args:
        beat: The heartbeat, or `None` when the rank never published one.
        now: Wall time to measure ages against (default: now).

    Examples:
        >>> beat = {"step": 3, "phase": "train_step", "batch": 4, "unchanged_for": 18.0, "time": 100.0}
        >>> describe_beat(beat, now=102.0)
        'step 3 in train_step (batch 4 of the epoch), unchanged for 20 s'
        >>> describe_beat(None)
        'no heartbeat ever published'
    """
    if beat is None:
        return "no heartbeat ever published"
    now = time.time() if now is None else now
    age = max(now - float(beat.get("time", now)), 0.0)
    where = f"step {beat.get('step')} in {beat.get('phase')}"
    if beat.get("batch") is not None:
        where += f" (batch {beat['batch']} of the epoch)"
    return f"{where}, unchanged for {float(beat.get('unchanged_for', 0.0)) + age:.0f} s"


def describe_hang(
    rank: int,
    world_size: int,
    timeout: float | None,
    beats: Mapping[int, Mapping | None],
    missing: list[int],
    stale_after: float,
    stacks: str,
    dumped: set[int] | None = None,
    now: float | None = None,
) -> str:
    r"""
    The message of a [`RankHungError`][danling.runner.distributed.hangs.RankHungError].

    Args:
        rank: This rank, whose collective timed out.
        world_size: Number of ranks.
        timeout: `dist_timeout` (`None`: torch's default).
        beats: Every rank's heartbeat when the collective timed out (`None` for a rank without one).
        missing: The ranks that did not arrive (their collective did not time out too).
        stale_after: Seconds without a heartbeat after which a rank is taken as dead or frozen.
        stacks: Directory of the stack files.
        dumped: The ranks that wrote their stack (`None`: not known).
        now: Wall time the heartbeats are measured against (default: now).

    Examples:
        >>> beats = {0: {"step": 3, "phase": "train_step", "time": 100.0, "unchanged_for": 20.0},
        ...          1: {"step": 3, "phase": "train_step", "time": 99.0, "unchanged_for": 20.0, "host": "n1"}}
        >>> print(describe_hang(0, 2, 20, beats, [1], 10.0, "run/stacks", {1}, 100.0))  # doctest: +NORMALIZE_WHITESPACE
        rank 0 of 2: a collective timed out after 20 s (dist_timeout) at step 3 in train_step;
        rank 1 did not arrive: step 3 in train_step, unchanged for 21 s (host n1); stacks in run/stacks
    """
    now = time.time() if now is None else now
    own = beats.get(rank)
    where = "" if own is None else f" at step {own.get('step')} in {own.get('phase')}"
    after = "torch's default timeout" if timeout is None else f"{timeout:g} s (dist_timeout)"
    head = f"rank {rank} of {world_size}: a collective timed out after {after}{where}"
    if not missing:
        parts = [f"rank {r}: {describe_beat(beats.get(r), now)}" for r in sorted(beats)[:MAX_NAMED]]
        return f"{head}; every rank was waiting in a collective (not the same one?): {'; '.join(parts)}"
    lines = []
    for r in missing[:MAX_NAMED]:
        beat = beats.get(r)
        line = f"rank {r} did not arrive: {describe_beat(beat, now)}"
        if beat is not None and beat.get("host") is not None:
            line += f" (host {beat['host']})"
        if beat is not None and now - float(beat.get("time", now)) > stale_after:
            line += ": no heartbeat since, the process is dead or frozen holding the interpreter lock"
        elif dumped is not None and r not in dumped:
            line += ": it wrote no stack"
        lines.append(line)
    if len(missing) > MAX_NAMED:
        lines.append(f"and {len(missing) - MAX_NAMED} more ranks")
    return f"{head}; {'; '.join(lines)}; stacks in {stacks}"
