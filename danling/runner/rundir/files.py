"""Files of a runner: its directories, saving and loading objects, and config round trips (JSON/YAML)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Callable
from warnings import warn

from typing_extensions import Self

from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, catch
from danling.utils.io import PathStr, load, save

from ..config import Config
from .lock import LOCK_FILE, RunLock

CHECK_DIR_ACTIONS = ("warn", "raise", "ignore")


class SerializationMixin:
    r"""
    Experiment directories, `save`/`load` and config (de)serialisation of [`BaseRunner`][danling.runner.BaseRunner].
    """

    config: Any
    # The lock of the run directory, taken by the main process when it first uses the directory.
    _run_lock: RunLock | None = None
    _run_lock_note: str | None = None

    @catch(OSError)
    def save(self, obj: Any, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> PathStr:
        r"""
        [`save`][danling.utils.io.save] on the main process only (unless `main_process_only=False`).

        Errors of the file system are logged, not raised (use [`save`][danling.utils.io.save] to raise).
        """
        if main_process_only and not self.is_main_process:
            return file
        return save(obj, file, *args, **kwargs)

    @staticmethod
    def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
        r"""Same as [`load`][danling.utils.io.load]."""
        return load(file, *args, **kwargs)

    def dict(self, cls: Callable = dict) -> Mapping:
        r"""The config as a `cls` mapping."""
        return cls(self.config.dict())

    def json(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        r"""Write the config to a JSON file (main process only unless told otherwise)."""
        if not main_process_only or self.is_main_process:
            self.config.json(file, *args, **kwargs)

    def jsons(self, *args: Any, **kwargs: Any) -> str:
        r"""The config as a JSON string."""
        return self.config.jsons(*args, **kwargs)

    def yaml(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        r"""Write the config to a YAML file (main process only unless told otherwise)."""
        if not main_process_only or self.is_main_process:
            self.config.yaml(file, *args, **kwargs)

    def yamls(self, *args: Any, **kwargs: Any) -> str:
        r"""The config as a YAML string."""
        return self.config.yamls(*args, **kwargs)

    @classmethod
    def from_json(cls, file: PathStr, *args: Any, **kwargs: Any) -> Self:
        r"""Build a runner from a JSON config file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_jsons(fp.read(), *args, **kwargs)

    @classmethod
    def from_jsons(cls, string: str, *args: Any, **kwargs: Any) -> Self:
        r"""Build a runner from a JSON config string."""
        return cls(Config.from_jsons(string, *args, **kwargs))

    @classmethod
    def from_yaml(cls, file: PathStr, *args: Any, **kwargs: Any) -> Self:
        r"""Build a runner from a YAML config file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_yamls(fp.read(), *args, **kwargs)

    @classmethod
    def from_yamls(cls, string: str, *args: Any, **kwargs: Any) -> Self:
        r"""Build a runner from a YAML config string."""
        return cls(Config.from_yamls(string, *args, **kwargs))

    def check_dir(self, action: str = "warn") -> bool:
        r"""
        Whether [`dir`][danling.runner.BaseRunner.dir] is empty (its lock file `run.lock` aside); when not, warn,
        raise or ignore per `action`.

        Args:
            action: One of `"warn"`, `"raise"`, `"ignore"`.

        Returns:
            `True` if the directory is empty.

        Raises:
            ValueError: If `action` is not one of the accepted values.
            RuntimeError: If the directory is not empty and `action` is `"raise"`.
        """
        if action not in CHECK_DIR_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(CHECK_DIR_ACTIONS)}, but got {action!r}")
        if not [name for name in os.listdir(self.dir) if name != LOCK_FILE]:
            return True
        if action == "warn":
            warn(f"directory {self.dir!r} is not empty", RuntimeWarning, stacklevel=2)
        elif action == "raise":
            raise RuntimeError(f"directory {self.dir!r} is not empty")
        return False

    @cached_ensure_dir
    def dir(self) -> str:
        r"""
        Directory of the run: `config.dir`, else `project_root/{name}-{id}/{timestamp}`. Created on access.

        The main process that first reads it takes the directory's lock (`run.lock`, see
        [`RunLock`][danling.runner.rundir.lock.RunLock]): a second process writing into the same directory stops with
        [`RunDirectoryLocked`][danling.runner.rundir.lock.RunDirectoryLocked] naming the first.
        """
        if self.config.get("dir") is not None:
            path = self.config["dir"]
        else:
            path = os.path.join(
                self.config.get("project_root", "experiments"), f"{self.name}-{self.id}", self.timestamp
            )
        self._claim_run_dir(path)
        return path

    def _claim_run_dir(self, path: str) -> None:
        # Main process only: the other ranks of the same job write into the directory the main process holds.
        if self._run_lock is not None or not self.is_main_process:
            return
        lock = RunLock(path)
        note = lock.acquire()  # raises RunDirectoryLocked; warns when it takes over a stale lock
        self._run_lock = lock  # held until `close`, or the end of the process
        if note is not None:
            self._run_lock_note = note
            self._log_run_dir_lock()

    def _log_run_dir_lock(self) -> None:
        # Log a takeover of a stale lock once the run's logger exists (the lock is often taken while it is created).
        if self._run_lock_note is not None and self.logger is not None:
            self.log(self._run_lock_note, logging.WARNING)
            self._run_lock_note = None

    def _release_run_dir(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    @cached_ensure_parent_dir
    def log_file(self) -> str:
        r"""Log file: `config.log_file`, else `dir/run.log`."""
        if self.config.get("log_file") is not None:
            return self.config["log_file"]
        return os.path.join(self.dir, "run.log")

    @cached_ensure_dir
    def checkpoint_dir(self) -> str:
        r"""Checkpoint directory: `config.checkpoint_dir`, else `dir/{checkpoint_dir_name}`. Created on access."""
        if self.config.get("checkpoint_dir") is not None:
            return self.config["checkpoint_dir"]
        return os.path.join(self.dir, self.config.get("checkpoint_dir_name", "checkpoints"))
