"""The run directory: whether it is empty, and the main process's claim on it (its lock file)."""

from __future__ import annotations

import os
from warnings import warn

from .lock import LOCK_FILE, RunLock

CHECK_DIR_ACTIONS = ("warn", "raise", "ignore")


def check_dir_empty(path: str, action: str = "warn") -> bool:
    r"""
    Whether a directory is empty (its lock file `run.lock` aside); when not, warn, raise or ignore per `action`.

    Args:
        path: The directory.
        action: One of `"warn"`, `"raise"`, `"ignore"`.

    Returns:
        `True` if the directory is empty.

    Raises:
        ValueError: If `action` is not one of the accepted values.
        RuntimeError: If the directory is not empty and `action` is `"raise"`.

    Examples:
        >>> import tempfile
        >>> check_dir_empty(tempfile.mkdtemp(), "raise")
        True
    """
    if action not in CHECK_DIR_ACTIONS:
        raise ValueError(f"action must be one of {', '.join(CHECK_DIR_ACTIONS)}, but got {action!r}")
    if not [name for name in os.listdir(path) if name != LOCK_FILE]:
        return True
    if action == "warn":
        warn(f"directory {path!r} is not empty", RuntimeWarning, stacklevel=3)
    elif action == "raise":
        raise RuntimeError(f"directory {path!r} is not empty")
    return False


class RunDirectoryClaim:
    r"""
    The main process's hold on its run directory: the [`RunLock`][danling.runner.rundir.lock.RunLock] taken the
    first time the directory is used, and released at close. Other processes of the job take no lock.

    A stale lock taken over leaves a note (the warning to log), kept until the run's logger can log it.

    Examples:
        >>> import os, tempfile
        >>> claim = RunDirectoryClaim()
        >>> path = tempfile.mkdtemp()
        >>> claim.claim(path, main_process=True)
        >>> os.path.exists(os.path.join(path, "run.lock")), claim.held
        (True, True)
        >>> claim.release()
        >>> os.path.exists(os.path.join(path, "run.lock")), claim.held
        (False, False)
    """

    def __init__(self) -> None:
        self.lock: RunLock | None = None
        self.note: str | None = None

    @property
    def held(self) -> bool:
        r"""Whether this process holds the lock of its run directory."""
        return self.lock is not None

    def claim(self, path: str, main_process: bool) -> None:
        r"""
        Lock `path` unless held already or this is not the job's main process (`main_process`).

        Raises:
            RunDirectoryLocked: If another live process holds it.
        """
        if self.lock is not None or not main_process:
            return
        lock = RunLock(path)
        note = lock.acquire()  # raises RunDirectoryLocked; warns when it takes over a stale lock
        self.lock = lock  # held until `release`, or the end of the process
        if note is not None:
            self.note = note

    def pop_note(self) -> str | None:
        r"""The note of a stale lock taken over (once), else `None`."""
        note, self.note = self.note, None
        return note

    def release(self) -> None:
        r"""Release the lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
