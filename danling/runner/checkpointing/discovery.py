"""Finding the checkpoint a requeued run continues from (`auto_resume`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Callable

from .manager import CheckpointManager
from .manifest import checkpoint_problem, read_manifest


def run_checkpoint_dirs(
    project_root: str, run_dir_name: str, checkpoint_dir_name: str = "checkpoints", directory: str | None = None
) -> list[str]:
    r"""
    Checkpoint directories of every launch of one run.

    A run launched again without `config.dir` gets a new timestamped directory under
    `project_root/{name}-{id}/`; all of them belong to the same run.

    Args:
        project_root: `config.project_root`.
        run_dir_name: `"{name}-{id}"` of the run.
        checkpoint_dir_name: `config.checkpoint_dir_name`.
        directory: An explicit checkpoint directory (`config.checkpoint_dir`, or `config.dir/checkpoints`):
            then only it is searched.

    Returns:
        Existing directories.

    Examples:
        >>> run_checkpoint_dirs("/nonexistent", "DanLing-Run-0")
        []
    """
    if directory is not None:
        return [directory] if os.path.isdir(directory) else []
    root = os.path.join(project_root, run_dir_name)
    try:
        launches = sorted(os.listdir(root))
    except OSError:
        return []
    candidates = [os.path.join(root, launch, checkpoint_dir_name) for launch in launches]
    return [path for path in candidates if os.path.isdir(path)]


def find_resumable(directories: list[str], warn: Callable[[str], None] | None = None) -> str | None:
    r"""
    The newest checkpoint in `directories` that verifies; bad ones are reported and moved aside.

    Candidates are the checkpoints with a manifest (single files and sharded `*.dcp` directories), ordered by
    their steps (then `latest` first, then the newest file). A candidate that fails verification is renamed
    `{file}.corrupt` (kept for inspection) and the search goes on.

    Args:
        directories: Checkpoint directories (see [`run_checkpoint_dirs`][danling.runner.checkpointing.discovery]).
        warn: Called with a message for each bad checkpoint skipped.

    Returns:
        The path of the checkpoint to resume from, or `None` when there is none.
    """
    found = []
    managers = [manager for directory in directories for manager in (CheckpointManager(directory), sharded(directory))]
    for manager in managers:
        for path in manager.candidates():
            manifest = read_manifest(path) or {}
            priority = manager.priority(os.path.basename(path))
            found.append((int(manifest.get("steps") or 0), priority, os.path.getmtime(path), path, manager))
    for *_, path, manager in sorted(found, key=lambda item: item[:3], reverse=True):
        problem = checkpoint_problem(path, manager.format)
        if problem is None:
            return path
        aside = manager.quarantine(path)
        if warn is not None:
            warn(f"auto_resume skips checkpoint {path!r}: {problem}; moved it to {aside!r}")
    return None


def checkpoint_dir_of(config: Mapping, run_dir_name: str, timestamp: str) -> str:
    r"""
    Where a runner's `checkpoint_dir` points, computed from its config without creating anything.

    Examples:
        >>> checkpoint_dir_of({"dir": "runs/a"}, "DanLing-Run-0", "000")
        'runs/a/checkpoints'
        >>> checkpoint_dir_of({}, "DanLing-Run-0", "000")
        'experiments/DanLing-Run-0/000/checkpoints'
    """
    if config.get("checkpoint_dir") is not None:
        return config["checkpoint_dir"]
    name = config.get("checkpoint_dir_name") or "checkpoints"
    if config.get("dir") is not None:
        return os.path.join(config["dir"], name)
    return os.path.join(config.get("project_root") or "experiments", run_dir_name, timestamp, name)


def find_run_checkpoint(config: Mapping, run_dir_name: str, warn: Callable[[str], None] | None = None) -> str | None:
    r"""
    The checkpoint `auto_resume` continues from: the newest valid one of the run `run_dir_name` (`"{name}-{id}"`).

    With `config.checkpoint_dir` or `config.dir` set, only that directory is searched; otherwise every launch
    directory of the run under `config.project_root`.

    Args:
        config: The run's config.
        run_dir_name: `"{name}-{id}"` of the run.
        warn: Called with a message for each bad checkpoint skipped (and moved aside).

    Returns:
        Its path, or `None` when the run has no valid checkpoint.
    """
    name = config.get("checkpoint_dir_name") or "checkpoints"
    explicit = config.get("checkpoint_dir")
    if explicit is None and config.get("dir") is not None:
        explicit = os.path.join(config["dir"], name)
    directories = run_checkpoint_dirs(config.get("project_root") or "experiments", run_dir_name, name, explicit)
    return find_resumable(directories, warn=warn)


def sharded(directory: str) -> CheckpointManager:
    # Imported here: the sharded format imports `torch.distributed.checkpoint`, needed only when it is used.
    from .sharded import ShardedCheckpointManager

    return ShardedCheckpointManager(directory)
