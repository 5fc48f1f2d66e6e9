"""One writer per run directory: the lock file `run.lock` that the main process of a run holds while it writes.

Two processes writing into one run directory (the same run launched twice with the same `dir`, or a requeued
`auto_resume` launch while the first is still alive) would overwrite each other's checkpoints and delete each other's
temporary files. [`RunLock`][danling.runner.rundir.lock.RunLock] prevents it: the first process takes an exclusive
POSIX lock (`fcntl.lockf`) on `run.lock` and writes its host, PID and process start time into it; the kernel lock
ends with the process however it ends, and the content names the holder in the error a second process gets
([`RunDirectoryLocked`][danling.runner.rundir.lock.RunDirectoryLocked]). A lock file left by a process that is gone is
taken over with a warning; one written on another host is refused, since its holder's liveness cannot be checked.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import socket
import threading
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # Windows: the content of the lock file alone decides
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "run.lock"
# Reading the content of a lock its holder has just taken: attempts, and seconds between them.
CONTENT_ATTEMPTS, CONTENT_DELAY = 20, 0.05


class RunDirectoryLocked(RuntimeError):
    r"""
    Another process writes into this run directory; the message names it (host and PID) and the lock file.

    Attributes:
        lock_file: Path of the lock file.
        host: Host name of the holder (`None` when it did not record it).
        pid: PID of the holder (`None` when it did not record it).
    """

    def __init__(self, message: str, lock_file: str | None = None, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.lock_file = lock_file
        self.host = None if holder is None else holder.host
        self.pid = None if holder is None else holder.pid


@dataclass(frozen=True)
class LockHolder:
    r"""
    Who holds a run directory's lock, as its lock file records it.

    Args:
        host: Host name.
        pid: Process id on that host.
        start_ticks: Start time of the process (clock ticks since boot, `/proc/<pid>/stat`), to tell a PID reused
            by another process; `None` where unknown.
        boot_id: `/proc/sys/kernel/random/boot_id` when the lock was taken: a lock of an earlier boot is stale.
        since: When the lock was taken (local time, for people).

    Examples:
        >>> holder = LockHolder.parse('{"host": "node1", "pid": 42, "since": "2024-06-01 12:00:00"}')
        >>> holder.describe()
        "pid 42 on host 'node1' (since 2024-06-01 12:00:00)"
        >>> LockHolder.parse(holder.to_json()) == holder
        True
    """

    host: str
    pid: int
    start_ticks: int | None = None
    boot_id: str | None = None
    since: str | None = None

    @classmethod
    def current(cls) -> LockHolder:
        r"""This process."""
        pid = os.getpid()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        return cls(socket.gethostname(), pid, process_start_ticks(pid), boot_id(), since)

    def to_json(self) -> str:
        r"""The content of a lock file."""
        fields = {"host": self.host, "pid": self.pid, "start_ticks": self.start_ticks, "boot_id": self.boot_id}
        return json.dumps({**fields, "since": self.since}, indent=2) + "\n"

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        r"""
        The holder a lock file names: JSON as [`to_json`][danling.runner.rundir.lock.LockHolder.to_json] writes it,
        else lines like `host: node1` / `pid=42` (a bare number is a PID on this host); `None` without a PID.

        Examples:
            >>> LockHolder.parse("pid: 7\nhost: node2").describe(), LockHolder.parse("")
            ("pid 7 on host 'node2'", None)
        """
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            pid_match = re.search(r"pid\W*(\d+)", text, re.IGNORECASE) or re.search(r"\b(\d+)\b", text)
            host_match = re.search(r"host(?:name)?\W*([\w.\-]+)", text, re.IGNORECASE)
            data = {"pid": pid_match and pid_match.group(1), "host": host_match and host_match.group(1)}
        try:
            pid = int(data.get("pid"))  # type: ignore[arg-type]
            ticks = data.get("start_ticks")
            ticks = None if ticks is None else int(ticks)
        except (TypeError, ValueError):
            return None
        host = str(data.get("host") or data.get("hostname") or socket.gethostname())
        boot = data.get("boot_id")
        since = data.get("since")
        return cls(host, pid, ticks, None if boot is None else str(boot), None if since is None else str(since))

    def describe(self) -> str:
        r"""`pid 42 on host 'node1' (since ...)`."""
        since = f" (since {self.since})" if self.since else ""
        return f"pid {self.pid} on host {self.host!r}{since}"

    def on_this_host(self) -> bool:
        r"""Whether it was taken on this host."""
        return self.host == socket.gethostname()

    def is_this_process(self) -> bool:
        r"""Whether it is this process."""
        return self.on_this_host() and self.pid == os.getpid()

    def alive(self) -> bool:
        r"""Whether the process runs on this host: see [`process_alive`][danling.runner.rundir.lock.process_alive]."""
        return process_alive(self.pid, self.start_ticks, self.boot_id)


def process_alive(pid: int, start_ticks: int | None = None, boot: str | None = None) -> bool:
    r"""
    Whether process `pid` of this host runs: it exists (`os.kill(pid, 0)`), is no zombie, and, when `start_ticks`
    or `boot` are given, started at that time in that boot (else the PID now belongs to another process).

    Examples:
        >>> process_alive(os.getpid()), process_alive(os.getpid(), start_ticks=-1)
        (True, False)
    """
    if pid <= 0:
        return False
    current_boot = boot_id()
    if boot is not None and current_boot is not None and boot != current_boot:
        return False
    if os.name == "nt":  # os.kill would terminate it: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    if state in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return start_ticks is None or ticks == start_ticks


def process_start_ticks(pid: int) -> int | None:
    r"""Start time of process `pid` in clock ticks since boot (`/proc/<pid>/stat`), `None` where unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    # State and start time: fields 3 and 22 of /proc/<pid>/stat, counted after the command name in parentheses.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fp:
            fields = fp.read().rpartition(")")[2].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def boot_id() -> str | None:
    r"""This boot's id (`/proc/sys/kernel/random/boot_id`), `None` where the platform has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fp:
            return fp.read().strip() or None
    except OSError:
        return None


@dataclass
class _Held:
    fd: int
    path: str
    owner: int  # the PID that took it: a forked child does not hold its parent's lock
    count: int = 1


# Locks this process holds, by real path: several runners of one process may share a run directory.
_HELD: dict[str, _Held] = {}
_REGISTRY = threading.Lock()


class RunLock:
    r"""
    The lock of one run directory (`{directory}/run.lock`), held by the main process of the run that writes into it.

    [`acquire`][danling.runner.rundir.lock.RunLock.acquire] takes it or raises
    [`RunDirectoryLocked`][danling.runner.rundir.lock.RunDirectoryLocked];
    [`release`][danling.runner.rundir.lock.RunLock.release] (also run at interpreter exit) deletes the file. Runners of
    one process that share a directory share its lock.

    Args:
        directory: The run directory (created by `acquire` when missing).
        name: File name of the lock.

    Examples:
        >>> import tempfile
        >>> lock = RunLock(tempfile.mkdtemp())
        >>> lock.acquire() is None, lock.held, LockHolder.parse(open(lock.path).read()).is_this_process()
        (True, True, True)
        >>> lock.release()
        >>> os.path.exists(lock.path)
        False
    """

    def __init__(self, directory: str, name: str = LOCK_FILE) -> None:
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, name)
        self.held = False

    def acquire(self) -> str | None:
        r"""
        Take the lock.

        Returns:
            `None`, or the note that it took over a lock left by a process that is gone (also warned as a
            `RuntimeWarning`), for the run's log.

        Raises:
            RunDirectoryLocked: If a live process holds it, or a process of another host (whose liveness cannot be
                checked from here); the message names the holder and the lock file.
        """
        if self.held:
            return None
        os.makedirs(self.directory, exist_ok=True)
        key = os.path.realpath(self.path)
        with _REGISTRY:
            entry = _HELD.get(key)
            if entry is not None and entry.owner == os.getpid():
                entry.count += 1
                self.held = True
                return None
            fd, note = self._take()
            if fd < 0:
                return None
            _HELD[key] = _Held(fd, self.path, os.getpid())
        self.held = True
        if note is not None:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        return note

    def _take(self) -> tuple[int, str | None]:
        for _ in range(CONTENT_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return -1, None  # no process can write into this directory: nothing to guard
                raise
            try:
                locked = _try_lock(fd)
                holder = _read_holder(fd)
                if locked is False:
                    raise self._refusal(holder if holder is not None else _await_holder(fd), busy=True)
                if not _same_file(fd, self.path):  # its holder released it meanwhile: open the new file
                    os.close(fd)
                    continue
                note = self._judge(holder)
                _write_holder(fd, LockHolder.current())
            except BaseException:
                os.close(fd)
                raise
            return fd, note
        raise RunDirectoryLocked(f"could not take the lock {self.path!r}: it keeps being replaced", self.path)

    def _judge(self, holder: LockHolder | None) -> str | None:
        # The kernel lock is free: the content tells whether a holder without it (another host, a process that
        # does not take kernel locks) still writes, or whether the file was left by a process that is gone.
        if holder is None or holder.is_this_process():
            return None
        if not holder.on_this_host() or holder.alive():
            raise self._refusal(holder, busy=False)
        return (
            f"run directory {self.directory!r}: taking over its lock {self.path!r}, left by {holder.describe()}, "
            "which is no longer running"
        )

    def _refusal(self, holder: LockHolder | None, busy: bool) -> RunDirectoryLocked:
        where = f"run directory {self.directory!r}"
        advice = "wait for that run to end or stop it, or give this run another `dir`"
        if holder is None:
            message = f"{where} is in use: another process holds its lock {self.path!r}; {advice}"
        elif not holder.on_this_host():
            message = (
                f"{where} is locked by {holder.describe()}, another host (lock file {self.path!r}): whether that "
                f"process still runs cannot be checked from {socket.gethostname()!r}. If it is gone, delete "
                f"{self.path!r} and launch again; otherwise {advice}"
            )
        elif busy and not holder.alive():
            message = (
                f"{where} is in use: its lock {self.path!r} names {holder.describe()}, which is gone, but a process "
                "it started still holds the lock; wait for it to exit"
            )
        else:
            message = (
                f"{where} is in use by {holder.describe()} (lock file {self.path!r}); two processes writing into "
                f"one run directory overwrite each other's checkpoints: {advice}"
            )
        return RunDirectoryLocked(message, self.path, holder)

    def release(self) -> None:
        r"""Give the lock back (when the last runner of this process that shares it releases it, delete the file)."""
        if not self.held:
            return
        self.held = False
        with _REGISTRY:
            key = os.path.realpath(self.path)
            entry = _HELD.get(key)
            if entry is None or entry.owner != os.getpid():
                return
            entry.count -= 1
            if entry.count > 0:
                return
            del _HELD[key]
        _drop(entry)


def _try_lock(fd: int) -> bool | None:
    # True: locked; False: another process holds it; None: this file system has no locks (the content decides).
    if fcntl is None:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return False if error.errno in (errno.EAGAIN, errno.EACCES) else None
    return True


def _read_holder(fd: int) -> LockHolder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return LockHolder.parse(os.read(fd, 1 << 16).decode("utf-8", errors="replace"))
    except OSError:
        return None


def _await_holder(fd: int) -> LockHolder | None:
    # A holder writes its name just after it takes the lock: read again for a moment.
    for _ in range(CONTENT_ATTEMPTS):
        time.sleep(CONTENT_DELAY)
        holder = _read_holder(fd)
        if holder is not None:
            return holder
    return None


def _write_holder(fd: int, holder: LockHolder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, holder.to_json().encode())
    with suppress(OSError):
        os.fsync(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _drop(entry: _Held) -> None:
    # Delete the file while still holding it, then close: a process that opened the old file retries on the new one.
    with suppress(OSError):
        if _same_file(entry.fd, entry.path):
            os.remove(entry.path)
    with suppress(OSError):
        os.close(entry.fd)


def held_by_another(directory: str, name: str = LOCK_FILE) -> bool:
    r"""
    Whether another live process, or a process of another host, holds the lock of the run directory `directory`
    (judged by the lock file's content, so that looking never disturbs a holder).

    Examples:
        >>> import tempfile
        >>> held_by_another(tempfile.mkdtemp())
        False
    """
    path = os.path.join(directory, name)
    with _REGISTRY:
        entry = _HELD.get(os.path.realpath(path))
        if entry is not None and entry.owner == os.getpid():
            return False
    try:
        with open(path, encoding="utf-8", errors="replace") as fp:
            holder = LockHolder.parse(fp.read())
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if holder is None or holder.is_this_process():
        return False
    return not holder.on_this_host() or holder.alive()


@atexit.register
def _release_all() -> None:
    with _REGISTRY:
        entries = [entry for entry in _HELD.values() if entry.owner == os.getpid()]
        _HELD.clear()
    for entry in entries:
        _drop(entry)
