"""Heartbeats that name the rank a hung job waits for.

Every rank keeps a [`Heartbeat`][danling.runner.distributed.heartbeat.Heartbeat]: the phase the loop is in (a string
the runner sets where a phase begins, never per batch) and, read by a background thread, the optimizer step and the
batch of the epoch (host integers the loop keeps anyway). The thread publishes them to the job's TCP store every few
seconds; the training loop pays nothing (no collective, no device sync, no Python call per batch).

When a collective runs past `dist_timeout`, the rank it failed on marks itself as arrived, asks every rank to write
its Python stack to `stacks/rank{r}.txt`, waits a few seconds for the other ranks that were waiting too, and raises
[`RankHungError`][danling.runner.distributed.hangs.RankHungError] naming the ranks that never arrived, with the step
and phase of their last heartbeat. A hung rank's thread answers the request: it writes its stack, then ends its
process (exit status 1) once the error was reported, as `faulthandler.dump_traceback_later(exit=True)` would.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from torch import distributed as dist

from danling.utils.distributed import is_distributed

from .consensus import RankFailedError
from .hangs import RankHungError, describe_hang, is_timeout, stack_path, write_stack

__all__ = ["Heartbeat", "HeartbeatBoard", "Watchdog", "RankHungError", "loop_progress"]

MODE_PHASES = {"train": "train_step", "evaluate": "evaluate", "infer": "infer"}
PREFIX = "danling/heartbeat"
EXIT_GRACE = 5.0  # seconds a hung rank waits, once the hang was reported, before it ends its process
_SESSIONS = itertools.count()  # every rank watches its `train()` calls in the same order: same keys everywhere


def loop_progress(config: Mapping, telemetry: Any) -> Callable[[], tuple[int, int | None]]:
    r"""
    `(step, batch)` of a runner's loop, read from its config's `steps` and its telemetry's batches of the epoch (host
    integers the loop keeps anyway), for the watchdog thread.

    Examples:
        >>> class Telemetry:
        ...     batches = 4
        >>> loop_progress({"steps": 3}, Telemetry())()
        (3, 4)
    """
    return lambda: (config.get("steps"), getattr(telemetry, "batches", None))


def beat_interval(timeout: float | None) -> float:
    r"""
    Seconds between two heartbeats: a tenth of `dist_timeout`, between 0.5 and 5 s.

    Examples:
        >>> beat_interval(20), beat_interval(None), beat_interval(1)
        (2.0, 5.0, 0.5)
    """
    if timeout is None:
        return 5.0
    return min(max(timeout / 10, 0.5), 5.0)


def arrival_window(timeout: float | None) -> float:
    r"""
    Seconds a rank whose collective timed out waits for the other ranks' collectives to time out too (they entered
    it at about the same moment): a quarter of `dist_timeout`, between 1 and 10 s.

    Examples:
        >>> arrival_window(20), arrival_window(None)
        (5.0, 10.0)
    """
    if timeout is None:
        return 10.0
    return min(max(timeout / 4, 1.0), 10.0)


class HeartbeatBoard:
    r"""
    The job's TCP store seen through one session's keys: every rank's heartbeat, the dump request, and which ranks
    arrived (their collective timed out), wrote their stack, and whether the hang was reported. Thread-safe.

    Args:
        store: A `torch.distributed.Store` every rank reaches.
        session: The keys' namespace, the same on every rank.
    """

    def __init__(self, store: Any, session: str) -> None:
        self.store = dist.PrefixStore(f"{PREFIX}/{session}/", store)
        self.lock = threading.Lock()

    @classmethod
    def connect(cls, session: str, timeout: float = 10.0) -> HeartbeatBoard | None:
        r"""
        A client of the store at `MASTER_ADDR:MASTER_PORT` (the one `torchrun` and `init_process_group` use), or
        `None` when there is none to reach.
        """
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if host is None or port is None:
            return None
        try:
            store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError):
            return None
        return cls(store, session)

    def _get(self, key: str) -> bytes | None:
        with self.lock:
            return self.store.get(key) if self.store.check([key]) else None

    def _set(self, key: str, value: str) -> None:
        with self.lock:
            self.store.set(key, value)

    def publish(self, rank: int, beat: dict[str, Any]) -> None:
        r"""Publish `rank`'s heartbeat."""
        self._set(f"beat/{rank}", json.dumps(beat))

    def beats(self, world_size: int) -> dict[int, dict | None]:
        r"""Every rank's last heartbeat (`None` for a rank that never published one)."""
        found = {}
        for rank in range(world_size):
            value = self._get(f"beat/{rank}")
            found[rank] = None if value is None else json.loads(value)
        return found

    def request_dump(self, rank: int) -> None:
        r"""Ask every rank to write its stack: `rank`'s collective timed out."""
        self._set("dump", str(rank))

    def dump_requested(self) -> int | None:
        r"""The rank that asked for stacks, or `None`."""
        value = self._get("dump")
        return None if value is None else int(value)

    def mark(self, kind: str, rank: int) -> None:
        r"""Record that `rank` did `kind` (`arrived`, `dumped`)."""
        self._set(f"{kind}/{rank}", "1")

    def marked(self, kind: str, world_size: int) -> set[int]:
        r"""The ranks that did `kind`."""
        with self.lock:
            return {rank for rank in range(world_size) if self.store.check([f"{kind}/{rank}"])}


class Watchdog(threading.Thread):
    r"""
    The background thread of one rank: publishes its heartbeat every `interval` seconds, writes its stack when any
    rank asks (or when its own step, batch and phase have not changed for `timeout` seconds), and ends a hung
    process once the hang was reported. A daemon thread; [`stop`][danling.runner.distributed.heartbeat.Watchdog.stop]
    ends it.

    Args:
        board: The store the ranks share.
        rank: This rank.
        world_size: Number of ranks.
        progress: Returns `(step, batch)`, host integers the loop keeps.
        phase: Returns the phase the loop is in.
        stacks: This rank's stack file.
        timeout: `dist_timeout` (`None`: torch's default; then no dump for a stall alone).
        logger: Where to log, besides stderr (the main process's log).
    """

    def __init__(
        self,
        board: HeartbeatBoard,
        rank: int,
        world_size: int,
        progress: Callable[[], tuple[int, int | None]],
        phase: Callable[[], str],
        stacks: str,
        timeout: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(name=f"danling-heartbeat-rank{rank}", daemon=True)
        self.board, self.rank, self.world_size = board, rank, world_size
        self.progress, self.phase, self.stacks = progress, phase, stacks
        self.timeout, self.interval, self.logger = timeout, beat_interval(timeout), logger
        self.stopped = threading.Event()
        self.failing = False  # the main thread is handling its own timeout: it writes its stack itself
        self.answered = self.stalled = False
        self.state: tuple = ()
        self.changed = time.monotonic()
        self.host = socket.gethostname()

    def run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # the store went away (the job is ending): keep quiet, keep trying
                pass
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        r"""End the thread (and wait for it, unless called from it)."""
        self.stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)

    def beat(self) -> dict[str, Any]:
        r"""This rank's heartbeat now: step, batch, phase, for how long they have not changed, time, host, pid."""
        step, batch = self.progress()
        state, now = (step, batch, self.phase()), time.monotonic()
        if state != self.state:
            self.state, self.changed, self.stalled = state, now, False
        beat = {"step": step, "batch": batch, "phase": state[2], "unchanged_for": round(now - self.changed, 3)}
        beat.update(time=time.time(), host=self.host, pid=os.getpid())
        return beat

    def tick(self) -> None:
        r"""One round: publish, then answer a dump request or dump a stall."""
        beat = self.beat()
        self.board.publish(self.rank, beat)
        requester = None if self.answered else self.board.dump_requested()
        if requester is not None:
            self.answer(requester, beat)
        elif self.stalled_for(beat["unchanged_for"]):
            self.stalled = True
            where = f"step {beat['step']} in {beat['phase']}"
            stalled = f"rank {self.rank} made no progress for {beat['unchanged_for']:.0f} s at {where}"
            write_stack(self.stacks, f"{stalled} (dist_timeout {self.timeout:g} s)")
            self.say(f"{stalled}; stack in {self.stacks}")

    def stalled_for(self, unchanged: float) -> bool:
        r"""
        Whether to dump this rank's stack for a stall alone: its step, batch and phase have not changed for longer
        than `dist_timeout` plus the time a timed-out collective takes to ask for stacks (when no rank could ask:
        the ranks that waited were ended by their backend, or no rank is in a collective).
        """
        if self.timeout is None or self.stalled or self.failing or self.answered:
            return False
        return unchanged >= self.timeout + arrival_window(self.timeout) + 2 * self.interval

    def answer(self, requester: int, beat: dict[str, Any]) -> None:
        r"""Write this rank's stack for `requester`; then, unless the main thread is failing itself, end the process."""
        self.answered = True
        if self.failing:
            return
        where = f"step {beat['step']} in {beat['phase']}"
        header = f"rank {self.rank} at {where}; rank {requester}'s collective timed out waiting"
        with suppress(OSError):
            write_stack(self.stacks, header)
            self.board.mark("dumped", self.rank)
        deadline = time.monotonic() + arrival_window(self.timeout) + 3 * self.interval + 5
        while not self.board.marked("reported", self.world_size) and time.monotonic() < deadline:
            if self.stopped.wait(min(self.interval, 0.5)):
                return
        # The ranks that reported end first (the launcher then stops the others), then this one.
        if self.stopped.wait(EXIT_GRACE) or self.failing:
            return
        self.say(
            f"rank {self.rank} is hung at {where}: rank {requester}'s collective timed out waiting for it; "
            f"stack in {self.stacks}; ending this process (exit status 1)",
            logging.ERROR,
        )
        os._exit(1)

    def say(self, message: str, level: int = logging.WARNING) -> None:
        r"""Write `message` to stderr and to the log."""
        print(f"danling: {message}", file=sys.stderr, flush=True)
        if self.logger is not None:
            self.logger.log(level, message)
            for handler in self.logger.handlers:
                handler.flush()


class Heartbeat:
    r"""
    One rank's heartbeat: the phase the loop is in, set by the runner where a phase begins; while
    [`watch`][danling.runner.distributed.heartbeat.Heartbeat.watch] runs (distributed only), a
    [`Watchdog`][danling.runner.distributed.heartbeat.Watchdog] thread publishes it with the step and batch.

    Examples:
        >>> heartbeat = Heartbeat()
        >>> heartbeat.enter("train")
        >>> with heartbeat.during("save_checkpoint"):
        ...     heartbeat.phase
        'save_checkpoint'
        >>> heartbeat.phase
        'train_step'
        >>> with heartbeat.watch("run", None, lambda: (0, None)):  # one process: nothing to watch
        ...     heartbeat.watchdog is None
        True
    """

    def __init__(self) -> None:
        self.phase = "start"
        self.watchdog: Watchdog | None = None

    def enter(self, mode: Any) -> None:
        r"""Enter the phase of a loop mode: `train` is `train_step`, `evaluate` and `infer` keep their names."""
        mode = str(getattr(mode, "value", mode))
        self.phase = MODE_PHASES.get(mode, mode)

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        r"""Be in `phase` for the block, then back in the phase before it."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    @contextmanager
    def watch(
        self,
        run_dir: str,
        timeout: float | None,
        progress: Callable[[], tuple[int, int | None]],
        logger: logging.Logger | None = None,
    ) -> Iterator[None]:
        r"""
        Publish this rank's heartbeat for the block, and turn a collective that timed out inside it into a
        [`RankHungError`][danling.runner.distributed.hangs.RankHungError] naming the ranks that did not arrive.
        Nothing in a single process, or when no store is reachable (`MASTER_ADDR`/`MASTER_PORT` unset).

        Args:
            run_dir: The run directory; stacks go to its `stacks/`.
            timeout: `dist_timeout` in seconds (`None`: torch's default).
            progress: Returns `(step, batch)`: the optimizer steps and the batches of the epoch so far.
            logger: The run's logger (the main process's), for the watchdog's messages.
        """
        # Keys of this watch only: a restarted job (torchrun --max-restarts) keeps the agent's store.
        session = f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_SESSIONS)}"
        board = HeartbeatBoard.connect(session) if is_distributed() else None
        if board is None:
            yield
            return
        rank, world_size = dist.get_rank(), dist.get_world_size()
        path = stack_path(run_dir, rank)
        self.watchdog = watchdog = Watchdog(board, rank, world_size, progress, self._phase, path, timeout, logger)
        watchdog.start()
        try:
            yield
        except RuntimeError as error:
            hung = self._diagnose(error, watchdog, os.path.dirname(path))
            if hung is None:
                raise
            raise hung from error
        finally:
            self.stop()

    def _phase(self) -> str:
        return self.phase

    def stop(self) -> None:
        r"""Stop the watchdog thread, if one runs (idempotent)."""
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.stop()

    def _diagnose(self, error: RuntimeError, watchdog: Watchdog, stacks: str) -> RankHungError | None:
        # Only a timeout, or any failure once the job is known to hang (a peer that gave up closed the connection).
        board, rank, world_size = watchdog.board, watchdog.rank, watchdog.world_size
        if isinstance(error, (RankHungError, RankFailedError)):
            return None
        try:
            if not is_timeout(error) and board.dump_requested() is None:
                return None
            watchdog.failing = True
            beats = board.beats(world_size)  # where every rank was when this rank gave up
            beats[rank] = watchdog.beat()
            board.mark("arrived", rank)
            board.request_dump(rank)
        except Exception:  # no store: the original error is all there is to say
            return None
        with suppress(OSError):  # an unwritable run directory must not hide the hang
            write_stack(watchdog.stacks, f"rank {rank}: a collective timed out", error)
        arrived = self._wait_for_arrivals(board, world_size, arrival_window(watchdog.timeout))
        missing = [r for r in range(world_size) if r not in arrived]
        try:
            dumped = board.marked("dumped", world_size) | arrived
            board.mark("reported", rank)
        except Exception:
            dumped = arrived
        stale_after = max(3 * watchdog.interval, 10.0)
        message = describe_hang(rank, world_size, watchdog.timeout, beats, missing, stale_after, stacks, dumped)
        return RankHungError(message, rank, {r: beats.get(r) for r in missing}, stacks)

    @staticmethod
    def _wait_for_arrivals(board: HeartbeatBoard, world_size: int, window: float) -> set[int]:
        # The ranks whose collective timed out too within `window` seconds: they were waiting, not hung.
        deadline, arrived = time.monotonic() + window, set()
        while True:
            try:
                arrived = board.marked("arrived", world_size)
            except Exception:
                return arrived
            if len(arrived) == world_size or time.monotonic() >= deadline:
                return arrived
            time.sleep(0.25)
