"""Finding the checkpoint a requeued run continues from (`auto_resume`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextlib import suppress
from typing import Callable

from .links import resolve
from .manager import CORRUPT_SUFFIX, CheckpointManager
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


def find_resumable(
    directories: list[str],
    warn: Callable[[str], None] | None = None,
    quarantine: bool = True,
    problems: list[str] | None = None,
) -> str | None:
    r"""
    The newest checkpoint in `directories` that verifies; bad ones are reported and moved aside.

    Candidates are the checkpoints with a manifest (single files and sharded `*.dcp` directories), ordered by
    their steps (then `latest` first, then the newest file). A candidate that fails verification is renamed
    `{file}.corrupt` (kept for inspection) and the search goes on.

    Args:
        directories: Checkpoint directories (see [`run_checkpoint_dirs`][danling.runner.checkpointing.discovery]).
        warn: Called with a message for each bad checkpoint skipped.
        quarantine: Rename a bad checkpoint `{file}.corrupt`; `False` only skips it (a directory the user named).
        problems: Gets `"{path}: {problem}"` for each checkpoint that fails verification.

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
        for path in unverifiable(manager):
            if warn is not None:
                warn(f"auto_resume skips checkpoint {path!r}: it has no manifest to verify it against")
    for *_, path, manager in sorted(found, key=lambda item: item[:3], reverse=True):
        problem = checkpoint_problem(path, manager.format)
        if problem is None:
            return path
        if problems is not None:
            problems.append(f"{path}: {problem}")
        if quarantine:
            problem += f"; moved it to {manager.quarantine(path)!r}"
        if warn is not None:
            warn(f"auto_resume skips checkpoint {path!r}: {problem}")
    return None


def unverifiable(manager: CheckpointManager) -> list[str]:
    r"""The checkpoints of `manager`'s format in its directory that have no manifest (never resumed from)."""
    try:
        names = sorted(os.listdir(manager.directory))
    except OSError:
        return []
    paths = [os.path.join(manager.directory, name) for name in names if not name.startswith(".")]
    return [path for path in paths if path.endswith(manager.format.suffix) and read_manifest(path) is None]


def quarantined(directories: list[str]) -> list[str]:
    r"""Checkpoints moved aside as corrupt (`*.corrupt`) in `directories`."""
    found = []
    for directory in directories:
        with suppress(OSError):
            names = sorted(os.listdir(directory))
            found += [os.path.join(directory, name) for name in names if name.endswith(CORRUPT_SUFFIX)]
    return found


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


def same_run_dirs(project_root: str, name: str, checkpoint_dir_name: str = "checkpoints") -> list[str]:
    r"""
    Checkpoint directories of every launch of every run named `name` under `project_root`, whatever its id: the
    id hashes the git revision and the config, so a hotfix or a new config key between a preemption and its requeue
    gives the same run another id.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> runs = ("DanLing-Run-aaaaaaaabbbbbbbb", "DanLing-Run-ccccccccdddddddd", "DanLing-Run2-ccccccccdddddddd")
        >>> for run in runs:
        ...     os.makedirs(os.path.join(root, run, "000", "checkpoints"))
        >>> [os.path.relpath(path, root) for path in same_run_dirs(root, "DanLing-Run")]
        ['DanLing-Run-aaaaaaaabbbbbbbb/000/checkpoints', 'DanLing-Run-ccccccccdddddddd/000/checkpoints']
    """
    pattern = re.compile(re.escape(name) + r"-[^-]{16}")
    try:
        runs = sorted(entry for entry in os.listdir(project_root) if pattern.fullmatch(entry))
    except OSError:
        return []
    return [path for run in runs for path in run_checkpoint_dirs(project_root, run, checkpoint_dir_name)]


def find_run_checkpoint(
    config: Mapping, name: str, warn: Callable[[str], None] | None = None, problems: list[str] | None = None
) -> str | None:
    r"""
    The checkpoint `auto_resume` continues from: the newest valid one of the runs called `name`
    (`"{experiment_name}-{run_name}"`, any id) under `config.project_root`.

    With `config.checkpoint_dir` or `config.dir` set, only that directory is searched.

    Args:
        config: The run's config.
        name: The run's name, without its id.
        warn: Called with a message for each checkpoint skipped (bad ones are moved aside).
        problems: Gets `"{path}: {problem}"` for each checkpoint that fails verification, and the checkpoints
            moved aside earlier.

    Returns:
        Its path, or `None` when the run has no valid checkpoint.
    """
    checkpoint_dir_name = config.get("checkpoint_dir_name") or "checkpoints"
    explicit = config.get("checkpoint_dir")
    if explicit is None and config.get("dir") is not None:
        explicit = os.path.join(config["dir"], checkpoint_dir_name)
    if explicit is not None:
        directories = [explicit] if os.path.isdir(explicit) else []
    else:
        directories = same_run_dirs(config.get("project_root") or "experiments", name, checkpoint_dir_name)
    earlier = quarantined(directories)
    path = find_resumable(directories, warn=warn, problems=problems)
    if path is None and problems is not None:
        problems += [f"{aside}: moved aside as corrupt by an earlier auto_resume" for aside in earlier]
    return path


def sharded(directory: str) -> CheckpointManager:
    # Imported here: the sharded format imports `torch.distributed.checkpoint`, needed only when it is used.
    from .sharded import ShardedCheckpointManager

    return ShardedCheckpointManager(directory)


def resolve_checkpoint(
    path: str | os.PathLike, checkpoint_dir_name: str = "checkpoints", warn: Callable[[str], None] | None = None
) -> str:
    r"""
    The checkpoint a user's `--checkpoint` points at: a checkpoint file, a sharded `*.dcp` directory, a directory of
    checkpoints, a run directory (its `checkpoint_dir_name` folder) or the folder of a run's launches.

    For a directory that is not itself a sharded checkpoint, the newest checkpoint in it that verifies is chosen,
    as `auto_resume` chooses (bad ones are skipped and reported through `warn`, never moved).

    Args:
        path: Where the user pointed.
        checkpoint_dir_name: `config.checkpoint_dir_name`: the checkpoint folder of a run directory.
        warn: Called with a message for each bad checkpoint skipped.

    Returns:
        The path of a checkpoint file or of a sharded checkpoint directory.

    Raises:
        FileNotFoundError: If `path` does not exist, or names a directory without a valid checkpoint (the message
            says where it looked; it never suggests a path that does not exist).

    Examples:
        >>> import tempfile, torch
        >>> from danling.runner.checkpointing import CheckpointManager
        >>> run = tempfile.mkdtemp()
        >>> _ = CheckpointManager(os.path.join(run, "checkpoints")).save({"w": torch.ones(1)}, steps=4, keep=1)
        >>> os.path.relpath(resolve_checkpoint(run), run)
        'checkpoints/latest.pth'
    """
    path = os.fsdecode(path)
    if os.path.isfile(path) or is_sharded_dir(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint is set to {path!r}, but no such file or directory exists")
    directories = checkpoint_dirs_under(path, checkpoint_dir_name)
    found = find_resumable(directories, warn=warn, quarantine=False)
    if found is None:
        looked = ", ".join(repr(directory) for directory in directories) or repr(path)
        raise FileNotFoundError(
            f"checkpoint is set to the directory {path!r}, but no checkpoint that verifies was found in {looked}; "
            "point it at a checkpoint file (*.pth), a sharded checkpoint directory (*.dcp), a checkpoint directory "
            "or a run directory"
        )
    return found


def checkpoint_dirs_under(path: str, checkpoint_dir_name: str = "checkpoints") -> list[str]:
    r"""
    The checkpoint directories a directory stands for: itself, its `checkpoint_dir_name` folder (a run
    directory), or those of its sub-directories (the folder `{name}-{id}/` of a run's launches).

    Examples:
        >>> checkpoint_dirs_under("/nonexistent")
        ['/nonexistent']
    """
    own = os.path.join(path, checkpoint_dir_name)
    if os.path.isdir(own):
        return [own]
    try:
        children = sorted(os.listdir(path))
    except OSError:
        return [path]
    launches = [os.path.join(path, child, checkpoint_dir_name) for child in children]
    launches = [launch for launch in launches if os.path.isdir(launch)]
    return launches or [path]


def is_sharded_dir(path: str) -> bool:
    r"""Whether `path` is a `torch.distributed.checkpoint` directory (it holds `.metadata`), or a pointer to one."""
    return os.path.isfile(os.path.join(resolve(path), ".metadata"))
