"""Start-up of a run on disk: `config.yaml`, and no trace of a start that failed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from danling.utils.io import save, to_plain

# Progress keys left out of `config.yaml`: rerunning it starts a run afresh.
PROGRESS_KEYS = frozenset({"steps", "epochs", "step_begin", "epoch_begin", "results"})


def write_config_file(config: Mapping, directory: str, name: str = "config.yaml") -> str:
    r"""
    Write a config as safe-loadable YAML, atomically, without its progress counters.

    Args:
        config: The config (chanfig configs and plain mappings alike).
        directory: Where to write.
        name: File name.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, yaml
        >>> path = write_config_file({"optim": {"lr": 0.1}, "steps": 7}, tempfile.mkdtemp())
        >>> with open(path) as fp:
        ...     yaml.safe_load(fp)
        {'optim': {'lr': 0.1}}
    """
    plain = to_plain(config.dict() if hasattr(config, "dict") else dict(config))
    content = {key: value for key, value in plain.items() if key not in PROGRESS_KEYS}
    return save(content, os.path.join(directory, name), sort_keys=False)


class RunDirGuard:
    r"""
    Remembers whether a run directory existed before a start, and removes it when the start fails.

    Args:
        path: The run directory the start will use.
        owns_parent: Whether the parent folder (`{name}-{id}`) was made for this run and may go when empty.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> guard = RunDirGuard(os.path.join(root, "name-id", "stamp"), owns_parent=True)
        >>> os.makedirs(os.path.join(root, "name-id", "stamp"))
        >>> guard.discard()
        >>> os.listdir(root)
        []
    """

    def __init__(self, path: str, owns_parent: bool) -> None:
        self.path = path
        self.owns_parent = owns_parent
        self.existed = os.path.exists(path)

    def discard(self) -> None:
        r"""Remove the directory (and its parent when made for it and now empty), unless it existed before."""
        if self.existed or not os.path.isdir(self.path):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        parent = os.path.dirname(os.path.normpath(self.path))
        if self.owns_parent and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
