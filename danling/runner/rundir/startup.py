"""Start-up of a run on disk: `config.yaml`, and no trace of a start that failed."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from danling.utils.io import save, to_serializable

from .lock import held_by_another

logger = logging.getLogger(__name__)

# Progress keys left out of `config.yaml`: rerunning it starts a run afresh.
PROGRESS_KEYS = frozenset({"steps", "epochs", "step_begin", "epoch_begin", "results"})


def write_config_file(
    config: Mapping, directory: str, name: str = "config.yaml", log: logging.Logger | None = None
) -> str:
    r"""
    Write a config as safe-loadable YAML, atomically, without its progress counters.

    A value YAML cannot represent (a transform object, a lambda) is written as its `repr` string rather than
    stopping the run (see [`to_serializable`][danling.utils.io.to_serializable]); one WARNING line names those keys.

    Args:
        config: The config (chanfig configs and plain mappings alike).
        directory: Where to write.
        name: File name.
        log: Logger of that warning (default: this module's).

    Returns:
        The path written.

    Examples:
        >>> import tempfile, yaml
        >>> path = write_config_file({"optim": {"lr": 0.1}, "steps": 7}, tempfile.mkdtemp())
        >>> with open(path) as fp:
        ...     yaml.safe_load(fp)
        {'optim': {'lr': 0.1}}
    """
    mapping = config.dict() if hasattr(config, "dict") else dict(config)
    content, written_as_repr = to_serializable({key: v for key, v in mapping.items() if key not in PROGRESS_KEYS})
    path = save(content, os.path.join(directory, name), sort_keys=False)
    if written_as_repr:
        (logger if log is None else log).warning(
            "%s: YAML cannot represent the values of %s; they were written as their repr strings",
            path,
            ", ".join(repr(key) for key in written_as_repr),
        )
    return path


def run_dir_of(config: Mapping, name_id: str, timestamp: str) -> str:
    r"""
    The run directory a config asks for: `config.dir`, else `project_root/{name_id}/{timestamp}` (not created).

    Examples:
        >>> run_dir_of({"dir": "out"}, "Run-1234", "t"), run_dir_of({}, "Run-1234", "t") == os.path.join(
        ...     "experiments", "Run-1234", "t"
        ... )
        ('out', True)
    """
    explicit = config.get("dir")
    root = config.get("project_root", "experiments")
    return explicit if explicit is not None else os.path.join(root, name_id, timestamp)


class RunDirGuard:
    r"""
    Remembers which folders of a run directory's path exist before a start, and removes the ones the start made
    when it fails (the run directory with its content, the folders above it only when left empty). A run directory
    another live process holds (see [`RunLock`][danling.runner.rundir.lock.RunLock]) is never removed: two launches
    racing to create it both found it missing, and the one refused must not delete the other's.

    Args:
        path: The run directory the start will use.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> guard = RunDirGuard(os.path.join(root, "experiments", "name-id", "stamp"))
        >>> os.makedirs(os.path.join(root, "experiments", "name-id", "stamp"))
        >>> guard.discard()
        >>> os.listdir(root)
        []
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        missing = []
        folder = self.path
        while not os.path.exists(folder):
            missing.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        self.missing = missing  # the run directory first, then the folders above it

    def discard(self) -> None:
        r"""Remove what the start created: the run directory, then each folder above it that is left empty."""
        if not self.missing or not os.path.isdir(self.path) or held_by_another(self.path):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for folder in self.missing[1:]:
            if not os.path.isdir(folder) or os.listdir(folder):
                return
            os.rmdir(folder)

    @contextmanager
    def cleanup_on_failure(self, close: Callable[[], None], discard: bool = True) -> Iterator[None]:
        r"""
        A start that leaves nothing behind when it fails: when the block raises (anything, `KeyboardInterrupt`
        included), call `close` and, when `discard` (the main process),
        [`discard`][danling.runner.rundir.startup.RunDirGuard.discard] what the start created; then re-raise.

        Examples:
            >>> import tempfile
            >>> root = tempfile.mkdtemp()
            >>> guard = RunDirGuard(os.path.join(root, "run"))
            >>> with guard.cleanup_on_failure(lambda: print("closed")):
            ...     os.makedirs(os.path.join(root, "run"))
            ...     raise RuntimeError("failed start")
            Traceback (most recent call last):
            RuntimeError: failed start
            >>> os.listdir(root)
            []
        """
        try:
            yield
        except BaseException:
            close()
            if discard:
                self.discard()
            raise
