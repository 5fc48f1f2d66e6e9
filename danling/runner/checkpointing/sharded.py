"""Sharded checkpoints with `torch.distributed.checkpoint`: a directory per checkpoint, each rank writing its shards.

[`ShardedFormat`][danling.runner.checkpointing.ShardedFormat] owns the bytes (DCP's files in a directory `*.dcp`),
[`ShardedCheckpointManager`][danling.runner.checkpointing.ShardedCheckpointManager] the same commit rules as
single-file checkpoints (temporary directory, SHA-256 manifest of every file, atomic swap by rank 0 after a
barrier, step-stamped copies and retention), and [`sharded_state`][danling.runner.checkpointing.sharded_state] /
[`load_sharded`][danling.runner.checkpointing.load_sharded] go through `torch.distributed.checkpoint.state_dict`,
so a checkpoint saved on N ranks (FSDP2, DDP or one process) loads on any other number.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from danling.utils.io import fsync_path

from ..distributed.consensus import FailureConsensus
from .formats import release_frames, sha256_file, write_failure
from .links import (
    collect_data,
    fsync_tree,
    link_or_copy_tree,
    read_pointer,
    resolve,
    store_data,
    swap_into_place,
    write_pointer,
)
from .manager import LATEST, CheckpointManager, _explain_write_error, _size, copy_names
from .manifest import CheckpointError, checkpoint_problem, describe_problem, read_manifest
from .temporaries import remove_path, temporary_path

MODEL, OPTIMIZER = "model", "optimizer"


def _dcp() -> Any:
    # `torch.distributed.checkpoint` takes over a second to import (it pulls in sympy): load it on first use, so
    # that `import danling` stays cheap for the runs that never write a sharded checkpoint.
    for submodule in ("state_dict", "metadata"):
        importlib.import_module(f"torch.distributed.checkpoint.{submodule}")
    return importlib.import_module("torch.distributed.checkpoint")


class ShardedFormat:
    r"""
    A `torch.distributed.checkpoint` directory per checkpoint (`name.dcp/`: `.metadata` and one file per rank).

    `write` is collective when a process group is initialised (every rank writes its shards; files are fsynced).
    `read(path)` loads everything as full tensors in this process; `read(path, state)` loads in place into
    `state`, resharding to the current world size. The digest is the SHA-256 of the sorted list of the files'
    names and SHA-256s, see [`file_digests`][danling.runner.checkpointing.sharded.file_digests].

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.dcp")
        >>> ShardedFormat().write({"model": {"w": torch.ones(2)}, "runner": {"steps": 3}}, path)
        >>> ShardedFormat().read(path)
        {'model': {'w': tensor([1., 1.])}, 'runner': {'steps': 3}}
    """

    name = "dcp"
    suffix = ".dcp"

    def write(self, state: Mapping, path: str) -> None:
        with _single_process_quiet():
            try:
                _dcp().save(dict(state), storage_writer=_dcp().FileSystemWriter(path, sync_files=True))
            except BaseException as error:  # DCP's CheckpointException is a BaseException
                failure = None if isinstance(error, (KeyboardInterrupt, SystemExit)) else dcp_write_failure(error, path)
                if failure is None:
                    raise
                release_frames(error)  # files still referenced from its frames hold their space
                raise failure from error

    def read(self, path: str, state: dict | None = None, **kwargs: Any) -> Any:
        path = resolve(path)  # a pointer file names the data directory
        with _single_process_quiet():
            if state is None:
                return read_whole(path, kwargs.get("keys"))
            _dcp().load(state, checkpoint_id=path)
        return state

    def digest(self, path: str) -> str:
        return combined_digest(file_digests(resolve(path)))

    def copy(self, source: str, destination: str) -> None:
        r"""A full copy of the directory (the manager links names instead; this is its fallback)."""
        shutil.copytree(resolve(source), destination)
        fsync_tree(destination)


def read_whole(path: str, keys: Any = None) -> dict[str, Any]:
    r"""
    A `torch.distributed.checkpoint` directory read whole into this process: full tensors and objects, nested as
    they were saved (collective when a process group is initialised).

    Built from DCP's public reader: the checkpoint's metadata gives every entry's full size and dtype, so an empty
    tensor of that size (or a placeholder for an object) stands for each, and `load` fills them in place.

    Args:
        path: The checkpoint directory.
        keys: A top-level key or set of them to read (the rest is left out), or `None` for everything.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.dcp")
        >>> ShardedFormat().write({"model": {"w": torch.ones(2)}, "runner": {"steps": 3}}, path)
        >>> read_whole(path, keys="runner")
        {'runner': {'steps': 3}}
    """
    dcp = _dcp()
    metadata = dcp.FileSystemReader(path).read_metadata()
    wanted = {keys} if isinstance(keys, str) else keys
    flat: dict[str, Any] = {}
    for name, entry in metadata.state_dict_metadata.items():
        if wanted is None or metadata.planner_data[name][0] in wanted:
            tensor = isinstance(entry, dcp.metadata.TensorStorageMetadata)
            flat[name] = torch.empty(entry.size, dtype=entry.properties.dtype) if tensor else None
    with _single_process_quiet():
        dcp.load(flat, checkpoint_id=path, no_dist=not _distributed())
    state: dict[str, Any] = {}
    for name, value in flat.items():
        _place(state, metadata.planner_data[name], value)
    return state


def _place(state: dict, location: Any, value: Any) -> None:
    # Put `value` at `location` (keys, and indices into lists) in the nested `state`, making what is missing.
    *parents, last = location
    node: Any = state
    for key, after in zip(parents, [*parents[1:], last]):
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
        if (node[key] if isinstance(node, list) else node.get(key)) is None:
            node[key] = [] if isinstance(after, int) else {}
        node = node[key]
    if isinstance(node, list):
        node.extend([None] * (last + 1 - len(node)))
    node[last] = value


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    # DCP warns that it "assumes the intent" to work in one process: that is the intent here.
    with warnings.catch_warnings():
        if not _distributed():
            warnings.filterwarnings("ignore", message="torch.distributed is", category=UserWarning)
        yield


def dcp_write_failure(error: BaseException, path: str) -> OSError | None:
    r"""
    The `OSError` a failed `torch.distributed.checkpoint` write stands for (see
    [`write_failure`][danling.runner.checkpointing.formats.write_failure]; a full disk is `errno.ENOSPC`), or `None`.

    DCP gathers the errors of every rank into one `CheckpointException`; a full disk on any rank wins.
    """
    failures = getattr(error, "failures", None)
    causes = [error]
    if isinstance(failures, Mapping):  # rank -> (exception, traceback)
        causes = [cause[0] if isinstance(cause, tuple) else cause for cause in failures.values()]
    found = [failure for cause in causes if (failure := write_failure(cause, path)) is not None]
    found.sort(key=lambda failure: failure.errno != errno.ENOSPC)
    return found[0] if found else None


def file_digests(path: str) -> dict[str, str]:
    r"""SHA-256 of every file under the directory `path`, by relative name."""
    digests = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            digests[os.path.relpath(full, path)] = sha256_file(full)
    return dict(sorted(digests.items()))


def combined_digest(digests: Mapping[str, str]) -> str:
    r"""
    One SHA-256 for a directory: of the lines `name sha256`, sorted by name.

    Examples:
        >>> combined_digest({"b": "2", "a": "1"}) == combined_digest({"a": "1", "b": "2"})
        True
    """
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


class ShardedCheckpointManager(CheckpointManager):
    r"""
    A [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] of `*.dcp` directories.

    `save` is collective when a process group is initialised: every rank writes its shards into a hidden
    temporary directory `.{name}.dcp.{pid}.{steps}.tmp` (rank 0's PID); after a barrier, rank 0 hashes every file,
    records the digests in the manifest (as `pending` first), swaps the directory into place, makes the
    step-stamped, `epoch-N` and `best` copies and prunes old ones, exactly as for single files; a final agreement
    makes the checkpoint visible to every rank before `save` returns. A failure leaves no temporary directory; a
    full disk is an `OSError` with `errno.ENOSPC` naming the checkpoint and the free space. When rank 0's part fails
    (preparing the directory, or the commit), every rank raises
    [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] naming it, instead of waiting for rank 0
    until
    `dist_timeout`.

    Examples:
        >>> import tempfile
        >>> manager = ShardedCheckpointManager(tempfile.mkdtemp())
        >>> for steps in (1, 2, 3):
        ...     _ = manager.save({"model": {"w": torch.ones(1) * steps}}, steps=steps, keep=1)
        >>> sorted(name for name in os.listdir(manager.directory) if name.endswith(".dcp"))
        ['latest.dcp', 'step-3.dcp']
        >>> manager.load(manager.path("latest"))["model"]["w"]
        tensor([3.])
    """

    collective = True  # every rank calls `save`

    def __init__(self, directory: str, fmt: ShardedFormat | None = None) -> None:
        super().__init__(directory, ShardedFormat() if fmt is None else fmt)
        self._writer_pid: int | None = None

    def writer_pid(self) -> int:
        r"""Rank 0's PID, which names the temporary directories (asked once, collectively, when distributed)."""
        if self._writer_pid is None:
            pid = [os.getpid()]
            if _distributed():
                dist.broadcast_object_list(pid, src=0)
            self._writer_pid = int(pid[0])
        return self._writer_pid

    def save(
        self,
        state: Mapping,
        name: str = LATEST,
        *,
        steps: int = 0,
        epochs: int | None = None,
        best: bool = False,
        keep: int = 2,
        epoch_copy: bool = False,
    ) -> str:
        primary = self.path(name)
        temporary = temporary_path(primary, token=str(int(steps)), pid=self.writer_pid())
        failures = FailureConsensus()  # rank 0's own steps: every rank learns of their failure, none waits
        if _is_main():
            with failures.contain():
                os.makedirs(self.directory, exist_ok=True)
                self.remove_temporaries()
        failures.agree()  # also the barrier before the shards are written
        self._write_shards(state, temporary, primary)
        _barrier()
        if _is_main():
            info = {"steps": int(steps), "epochs": epochs, "format": self.format.name}
            with failures.contain():
                self._commit_all(temporary, name, info, best=best, keep=keep, epoch_copy=epoch_copy)
        failures.agree()  # also the barrier that makes the checkpoint visible to every rank
        return primary

    def _write_shards(self, state: Mapping, temporary: str, primary: str) -> None:
        # Collective: every rank its shards (DCP raises on every rank). A failure leaves no temporary directory.
        try:
            self.format.write(state, temporary)
        except BaseException as error:
            if _is_main():
                remove_path(temporary)
            if isinstance(error, OSError):
                raise _explain_write_error(error, primary) from error
            raise

    def copy_to(self, source: str, name: str) -> str:
        r"""
        Commit the sharded checkpoint `source` (of this directory) also as `name`, on this process: a directory of
        hard links to its files, a pointer to its data directory, or, where neither can be made, a copy.
        """
        manifest = read_manifest(source) or {}
        info = {key: manifest.get(key) for key in ("steps", "epochs", "format")}
        files = file_digests(resolve(source))
        entry = {"sha256": combined_digest(files), "size": _size(resolve(source)), "files": files}
        self._commit_names(source, [self.path(name)], info, entry)
        collect_data(self.directory)
        return self.path(name)

    def _commit_all(self, temporary: str, name: str, info: dict[str, Any], **policy: Any) -> None:
        # Rank 0, after every rank wrote its shards: hash the files once, commit the checkpoint and its other
        # names (hard links, or pointers to one data directory where there are none), retention.
        primary = self.path(name)
        steps, epochs = info["steps"], info["epochs"]
        others = copy_names(name, steps, epochs, policy["best"], policy["keep"], policy["epoch_copy"])
        fsync_tree(temporary)
        files = file_digests(temporary)
        entry = {"sha256": combined_digest(files), "size": _size(temporary), "files": files}
        if not others or self.links_supported():
            self._commit_staged(temporary, primary, info, entry)
            self._commit_names(primary, [self.path(other) for other in others], info, entry)
        else:
            try:
                data = store_data(temporary, entry["sha256"], self.format.suffix)
            except OSError as error:
                remove_path(temporary)
                raise _explain_write_error(error, primary) from error
            self._commit_names(data, [primary] + [self.path(other) for other in others], info, entry)
        if name == LATEST:
            self.prune(policy["keep"])
        collect_data(self.directory)

    def _commit_names(self, source: str, paths: list[str], info: dict[str, Any], entry: dict[str, Any]) -> None:
        # Give the checkpoint `source` (a committed directory, a pointer file or a data directory) the names
        # `paths`: pointers when it is data, else hard links (a copy where a link is refused).
        pointer = read_pointer(source)
        target = pointer["target"] if pointer is not None else None
        if target is None and os.path.basename(source).endswith(".data"):
            target = os.path.basename(source)
        for path in paths:
            staging = temporary_path(path, token=str(int(info["steps"] or 0)), pid=self.writer_pid())
            if target is not None:
                make = partial(write_pointer, staging, target, entry)
            else:
                make = partial(link_or_copy_tree, source, staging)
            self._commit_staged(staging, path, info, entry, make)

    def _commit_staged(
        self, staging: str, path: str, info: dict[str, Any], entry: dict[str, Any], make: Callable | None = None
    ) -> None:
        # Build `staging` with `make` when given, then commit it as `path`; a failure removes `staging`.
        try:
            if make is not None:
                make()
            self._commit_directory(staging, path, info, entry)
        except BaseException as error:
            remove_path(staging)
            if isinstance(error, OSError):
                raise _explain_write_error(error, path) from error
            raise

    def _commit_directory(self, temporary: str, path: str, info: dict[str, Any], entry: dict[str, Any]) -> None:
        # As `_commit` for files: the new digest as `pending`, swap, then the only digest (and each file's).
        if os.path.isfile(temporary):
            fsync_path(temporary)
        current = self._current_entry(path)
        name = os.path.basename(path)
        new = {"sha256": entry["sha256"], "size": entry["size"]}
        self._write_manifest(path, {"file": name, **info, **current, "pending": new})
        swap_into_place(temporary, path)
        self._write_manifest(path, {"file": name, **info, **new, "files": entry["files"]})


def is_sharded_checkpoint(checkpoint: Any) -> bool:
    r"""
    Whether `checkpoint` is the path of a `torch.distributed.checkpoint` directory (it holds `.metadata`).

    Examples:
        >>> is_sharded_checkpoint("no/such/latest.dcp"), is_sharded_checkpoint({"model": {}})
        (False, False)
    """
    if not isinstance(checkpoint, (str, bytes, os.PathLike)):
        return False
    return os.path.isfile(os.path.join(resolve(checkpoint), ".metadata"))


def sharded_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    **extra: Any,
) -> dict:
    r"""
    A checkpoint for [`ShardedCheckpointManager.save`][danling.runner.checkpointing.ShardedCheckpointManager]:
    the model's and optimizer's state dicts by `torch.distributed.checkpoint.state_dict.get_state_dict` (sharded
    DTensors under FSDP2, clean names under DDP and `torch.compile`), those of other `modules` (an EMA) by key,
    and `extra` entries (the runner's config, results, random states: give them on rank 0, where they are
    complete). Collective under FSDP2.
    """
    if optimizer is None:
        state = {MODEL: _dcp().state_dict.get_model_state_dict(model)}
    else:
        model_state, optimizer_state = _dcp().state_dict.get_state_dict(model, optimizer)
        state = {MODEL: model_state, OPTIMIZER: optimizer_state}
    for key, module in (modules or {}).items():
        state[key] = _dcp().state_dict.get_model_state_dict(module)
    state.update(extra)
    return state


def load_sharded(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    modules: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    r"""
    Verify the sharded checkpoint at `path` and load it into `model` (and `optimizer`, and `modules` by key) on
    any world size and wrapping (FSDP2, DDP, one process); returns the other entries (config, results...), read
    in full. Collective when a process group is initialised.

    Raises:
        FileNotFoundError: If `path` is not a directory.
        CheckpointError: If it fails verification (the message names the directory).
    """
    fmt = ShardedFormat()
    if not os.path.isdir(resolve(path)):
        raise FileNotFoundError(f"sharded checkpoint is set to {path!r}, but no such directory exists")
    problem = [checkpoint_problem(path, fmt) if _is_main() else None]
    if _distributed():
        dist.broadcast_object_list(problem, src=0)  # every rank stops, not only rank 0
    if problem[0] is not None:
        raise CheckpointError(describe_problem(path, problem[0], fmt))
    saved = stored_keys(path)
    modules = {key: module for key, module in (modules or {}).items() if key in saved}
    target = sharded_state(model, optimizer, modules)
    fmt.read(path, target)
    if optimizer is None:
        _dcp().state_dict.set_state_dict(model, [], model_state_dict=target[MODEL], optim_state_dict={})
    else:
        state_dict = _dcp().state_dict
        state_dict.set_state_dict(model, optimizer, model_state_dict=target[MODEL], optim_state_dict=target[OPTIMIZER])
    for key, module in modules.items():
        _dcp().state_dict.set_model_state_dict(module, target[key])
    extra = saved - {MODEL, OPTIMIZER, *modules}
    return fmt.read(path, keys=extra) if extra else {}


def stored_keys(path: str) -> set[str]:
    r"""The top-level entries (`model`, `optimizer`, `runner`...) a sharded checkpoint holds, from its metadata."""
    reader = _dcp().FileSystemReader(resolve(path))
    return {key.split(".", 1)[0] for key in reader.read_metadata().state_dict_metadata}


def read_sharded_entries(path: str, keys: set[str]) -> dict[str, Any]:
    r"""
    Verify the sharded checkpoint at `path` and read those of its top-level entries `keys` that it holds, in full,
    in this process (the runner's config before the model exists). Not collective.

    Raises:
        CheckpointError: If it fails verification (the message names the directory).

    Examples:
        >>> import tempfile
        >>> manager = ShardedCheckpointManager(tempfile.mkdtemp())
        >>> path = manager.save({"model": {"w": torch.ones(1)}, "runner": {"steps": 3}}, steps=3, keep=0)
        >>> read_sharded_entries(path, {"runner", "results"})
        {'runner': {'steps': 3}}
    """
    fmt = ShardedFormat()
    problem = checkpoint_problem(path, fmt)
    if problem is not None:
        raise CheckpointError(describe_problem(path, problem, fmt))
    wanted = set(keys) & stored_keys(path)
    return fmt.read(path, keys=wanted) if wanted else {}


def read_sharded_model(path: str) -> dict[str, Any]:
    r"""
    Verify the sharded checkpoint at `path` and read its model's state dict in full in this process (weights for
    `pretrained`, inference or conversion). Collective when a process group is initialised.
    """
    fmt = ShardedFormat()
    problem = checkpoint_problem(path, fmt) if os.path.isdir(resolve(path)) else "it is not a directory"
    if problem is not None:
        raise CheckpointError(describe_problem(path, problem, fmt))
    return fmt.read(path, keys={MODEL})[MODEL]


def export_model(model: nn.Module, path: str) -> str | None:
    r"""
    Write the model's full state dict to `path` (`model.pth`: a `torch.save` file with a manifest) on rank 0,
    for inference without `torch.distributed`. Collective under FSDP2 (the shards are gathered to rank 0).

    Returns:
        `path` on rank 0, `None` on other ranks.
    """
    options = _dcp().state_dict.StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = _dcp().state_dict.get_model_state_dict(model, options=options)
    if not _is_main():
        return None
    directory, name = os.path.split(os.path.abspath(path))
    manager = CheckpointManager(directory)
    stem = name[: -len(manager.format.suffix)] if name.endswith(manager.format.suffix) else name
    return manager.save(state, stem, keep=0)
