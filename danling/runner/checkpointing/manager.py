"""`CheckpointManager`: naming, verified atomic commits, retention and hygiene of a run's checkpoints."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, Callable

from danling.utils.io import fsync_path

from .formats import CheckpointFormat, DigestMismatch, TorchFileFormat, free_space
from .links import collect_data, link_file, links_supported, read_pointer, resolve, store_data, write_pointer
from .manifest import (
    CheckpointError,
    accepted_digests,
    checkpoint_problem,
    describe_problem,
    digest_problem,
    manifest_path,
    read_manifest,
    size_problem,
)
from .temporaries import (
    TEMPORARY_PATTERN,  # noqa: F401 (re-exported)
    remove_file_freeing_later,
    remove_path,
    remove_stale_temporaries,
    temporary_path,
    write_atomically,
)

LATEST = "latest"
BEST = "best"
STEP_PATTERN = re.compile(r"step-(\d+)")
EPOCH_PATTERN = re.compile(r"epoch-(\d+)")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointManager:
    r"""
    Owns the checkpoints of one directory: what they are called, how they are committed, which are kept.

    Every save writes `{name}.pth` atomically, then its manifest (SHA-256, computed while the bytes are written, and
    size); a `latest` save is also named `step-{steps}.pth`, of which the newest `keep` survive, so a fallback
    always exists; `epoch-{epochs}.pth` and `best.pth` names are given on request. A save writes its bytes once: its
    other names are hard links to them, or, where the file system has none, every name is a pointer to one data file
    (see [`links`][danling.runner.checkpointing.links]). Retention never deletes `latest` or `best`.
    Temporary files left by killed saves (`.{name}.{pid}.{token}.tmp`) are removed before each save, unless their
    writer still runs. The bytes are the business of a
    [`CheckpointFormat`][danling.runner.checkpointing.CheckpointFormat] (`torch.save` files by default).

    Args:
        directory: Directory of the checkpoints (created on the first save).
        fmt: The format of the checkpoints.

    Examples:
        >>> import tempfile, torch
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> for steps in (1, 2, 3):
        ...     _ = manager.save({"w": torch.ones(1) * steps}, steps=steps, keep=2, best=steps == 1)
        >>> sorted(name for name in os.listdir(manager.directory) if name.endswith(".pth"))
        ['best.pth', 'latest.pth', 'step-2.pth', 'step-3.pth']
        >>> manager.load(manager.path("latest"), weights_only=True)["w"]
        tensor([3.])
    """

    collective = False  # saves run on the main process only

    def __init__(self, directory: str, fmt: CheckpointFormat | None = None) -> None:
        self.directory = os.fsdecode(directory)
        self.format: CheckpointFormat = TorchFileFormat() if fmt is None else fmt
        self._links: bool | None = None
        self._freeing: list[Any] = []  # threads freeing the blocks of files retention removed

    def links_supported(self) -> bool:
        r"""Whether the directory's file system makes hard links (asked once, on the first save that needs one)."""
        if self._links is None:
            self._links = links_supported(self.directory)
        return self._links

    def path(self, name: str) -> str:
        r"""Path of the checkpoint called `name` (without extension)."""
        return os.path.join(self.directory, name + self.format.suffix)

    # Saving

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
        r"""
        Commit `state` as `{name}.pth` and its other names (the bytes written once); every file is complete or
        absent after a crash.

        Args:
            state: The checkpoint.
            name: File name without extension.
            steps: Optimizer steps of the state (stamped on the `latest` name and recorded in manifests).
            epochs: Epoch of the state.
            best: Also commit it as `best.pth`.
            keep: Step-stamped names of `latest` to keep (0 keeps none).
            epoch_copy: Also commit it as `epoch-{epochs}.pth`.

        Returns:
            The path of `{name}.pth`.

        Raises:
            OSError: If a write fails: the message names the path and the free space, and the files committed
                before are intact, no temporary file is left. A full disk is `errno.ENOSPC` ("No space left on
                device"), also when `torch.save` reports it as a `RuntimeError`.
        """
        os.makedirs(self.directory, exist_ok=True)
        self.wait_freed()
        self.remove_temporaries()
        info = {"steps": int(steps), "epochs": epochs, "format": self.format.name}
        primary = self.path(name)
        names = [primary] + [self.path(copy) for copy in copy_names(name, steps, epochs, best, keep, epoch_copy)]
        self._commit_once(names, lambda tmp: self.format.write(state, tmp), info)
        if name == LATEST:
            self.prune(keep)
        collect_data(self.directory)
        return primary

    def _commit_once(self, paths: list[str], writer: Callable[[str], Any], info: dict[str, Any]) -> None:
        # The bytes are written once, as `paths[0]`; the other names are hard links to it. Where the file system
        # makes no links, the bytes become a data file and every name a pointer to it.
        if len(paths) == 1 or self.links_supported():
            entry = self._commit(paths[0], writer, info)
            for path in paths[1:]:
                self._commit(path, lambda tmp: link_file(paths[0], tmp), info, entry)
            return
        staged = temporary_path(os.path.join(self.directory, "data" + self.format.suffix))
        try:
            written = writer(staged)
            fsync_path(staged)
            digest = written if isinstance(written, str) else self.format.digest(staged)
            entry = {"sha256": digest, "size": _size(staged)}
            data = store_data(staged, entry["sha256"], self.format.suffix)
        except BaseException as error:
            remove_path(staged)
            if isinstance(error, OSError):
                raise _explain_write_error(error, paths[0]) from error
            raise
        for path in paths:
            self._commit(path, lambda tmp: write_pointer(tmp, os.path.basename(data), entry), info, entry)

    def copy_to(self, source: str, name: str) -> str:
        r"""
        Commit the checkpoint `source` (of this directory) also as `name`, atomically, with its manifest's steps,
        epoch and digest: a hard link to its bytes, a pointer to its data file, or, where neither can be made,
        a copy.

        Returns:
            The path of `name`.
        """
        manifest = read_manifest(source) or {}
        info = {key: manifest.get(key) for key in ("steps", "epochs", "format")}
        data = resolve(source)
        entry = {"sha256": manifest.get("sha256") or self.format.digest(data), "size": _size(data)}
        pointer = read_pointer(source)
        path = self.path(name)
        if pointer is not None:
            self._commit(path, lambda tmp: write_pointer(tmp, pointer["target"], entry), info, entry)
        else:
            self._commit(path, lambda tmp: link_file(source, tmp), info, entry)
        collect_data(self.directory)  # the data file `name` pointed to, if nothing else does
        return path

    def _commit(
        self, path: str, writer: Callable[[str], Any], info: dict[str, Any], entry: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # 1. write a temporary file; 2. record its digest as `pending` next to the current one; 3. rename it over
        # `path`; 4. make the new digest the only one. A kill at any instant leaves a file its manifest accepts.
        # `entry` (digest and size) is given for links and pointers; else the writer returns the digest or it is
        # computed from the temporary file.
        current = self._current_entry(path)
        new: dict[str, Any] = {}

        def write_and_announce(temporary: str) -> None:
            written = writer(temporary)
            if entry is not None:
                new.update(sha256=entry["sha256"], size=entry["size"])
            else:
                digest = written if isinstance(written, str) else self.format.digest(temporary)
                new.update(sha256=digest, size=_size(temporary))
            transition = {"file": os.path.basename(path), **info, **current, "pending": dict(new)}
            self._write_manifest(path, transition)

        try:
            write_atomically(path, write_and_announce)  # temporary file, fsync, rename
        except OSError as error:
            raise _explain_write_error(error, path) from error
        self._write_manifest(path, {"file": os.path.basename(path), **info, **new, "written": time.time()})
        return new

    def _current_entry(self, path: str) -> dict[str, Any]:
        # Digest and size of the file `path` holds now, as its manifest records them.
        manifest = read_manifest(path) if os.path.exists(path) else None
        if manifest is None:
            return {}
        if manifest.get("pending"):  # an interrupted save: find out which of the two the file holds
            actual = self.format.digest(resolve(path))
            for entry in (manifest, manifest["pending"]):
                if entry.get("sha256") == actual:
                    return {"sha256": actual, "size": entry.get("size")}
            return {}
        return {"sha256": manifest.get("sha256"), "size": manifest.get("size")}

    def _write_manifest(self, path: str, manifest: dict[str, Any]) -> None:
        def write(temporary: str) -> None:
            with open(temporary, "w", encoding="utf-8") as fp:
                json.dump(manifest, fp, indent=2, allow_nan=False)

        try:
            write_atomically(manifest_path(path), write)
        except OSError as error:
            raise _explain_write_error(error, manifest_path(path)) from error

    # Hygiene

    def remove_temporaries(self) -> list[str]:
        r"""
        Remove hidden temporary files (and directories) left in the directory by killed saves; returns their names.

        A temporary whose name holds the PID of a process alive on this host is kept: its save may be in flight
        (see [`remove_stale_temporaries`][danling.runner.checkpointing.temporaries.remove_stale_temporaries]).
        """
        return remove_stale_temporaries(self.directory)

    def prune(self, keep: int) -> list[str]:
        r"""
        Delete all but the newest `keep` step-stamped checkpoints (never `latest`, `best` or `epoch-N`).

        Returns:
            The names deleted.
        """
        stamped = sorted(self._stamped(STEP_PATTERN), reverse=True)
        removed = []
        for _, name in stamped[max(keep, 0) :]:
            self.remove(name)
            removed.append(name)
        return removed

    def remove(self, name: str) -> None:
        r"""
        Delete the checkpoint `name` (without extension) and its manifest. The names are gone on return; the blocks
        of a file whose last name this was are freed in the background (see
        [`remove_file_freeing_later`][danling.runner.checkpointing.temporaries.remove_file_freeing_later]), done
        before the next save starts.
        """
        for path in (manifest_path(self.path(name)), self.path(name)):
            with suppress(FileNotFoundError):
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif (freeing := remove_file_freeing_later(path)) is not None:
                    self._freeing.append(freeing)

    def wait_freed(self) -> None:
        r"""Wait until the blocks of the checkpoints removed so far are freed (before a save counts on the space)."""
        while self._freeing:
            self._freeing.pop().join()

    def quarantine(self, path: str) -> str:
        r"""
        Move a bad checkpoint (and its manifest) aside as `{file}.corrupt`, for inspection; returns the new path.
        """
        aside = path + CORRUPT_SUFFIX
        os.replace(path, aside)
        with suppress(FileNotFoundError):
            os.replace(manifest_path(path), manifest_path(aside))
        return aside

    def _stamped(self, pattern: re.Pattern) -> list[tuple[int, str]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        stamped = []
        for name in names:
            stem, suffix = os.path.splitext(name)
            if suffix == self.format.suffix and (match := pattern.fullmatch(stem)):
                stamped.append((int(match.group(1)), stem))
        return stamped

    # Loading

    def candidates(self) -> list[str]:
        r"""
        Checkpoints with a manifest, newest first (most steps; `latest` before its step-stamped copy).
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = os.path.join(self.directory, name)
            if name.startswith(".") or not name.endswith(self.format.suffix):
                continue
            manifest = read_manifest(path)
            if manifest is None:
                continue
            found.append((int(manifest.get("steps") or 0), self.priority(name), os.path.getmtime(path), path))
        return [path for *_, path in sorted(found, reverse=True)]

    def priority(self, name: str) -> int:
        r"""
        Order among checkpoints of equal steps: `latest`, then step-stamped, then `epoch-N`, then others (`best`).

        Examples:
            >>> manager = CheckpointManager("checkpoints")
            >>> sorted(["best.pth", "step-3.pth", "latest.pth"], key=manager.priority, reverse=True)
            ['latest.pth', 'step-3.pth', 'best.pth']
        """
        stem = name[: -len(self.format.suffix)] if name.endswith(self.format.suffix) else name
        if stem == LATEST:
            return 3
        if STEP_PATTERN.fullmatch(stem):
            return 2
        return 1 if EPOCH_PATTERN.fullmatch(stem) else 0

    def load(self, path: str, **kwargs: Any) -> Any:
        r"""
        Verify the checkpoint at `path`, then read it.

        Raises:
            FileNotFoundError: If it does not exist.
            CheckpointError: If it fails verification or cannot be read; the message names the file, the problem
                and the intact files next to it.
        """
        return read_verified(path, self.format, **kwargs)


def read_verified(path: str, fmt: CheckpointFormat | None = None, **kwargs: Any) -> Any:
    r"""
    Read the checkpoint at `path` with `fmt`, verified (see
    [`verify_checkpoint`][danling.runner.checkpointing.verify_checkpoint]); every error names the file.

    A checkpoint with a manifest is verified while it is read, in one pass over the file, when the format can
    (see [`TorchFileFormat.read_checked`][danling.runner.checkpointing.formats.TorchFileFormat.read_checked]); other
    checkpoints are verified first, then read. A pointer file is followed.
    """
    fmt = TorchFileFormat() if fmt is None else fmt
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint is set to {path!r}, but no such file exists")
    manifest = read_manifest(path)
    try:
        if manifest is not None and hasattr(fmt, "read_checked"):
            return _read_checked(path, fmt, accepted_digests(manifest), kwargs)
        problem = checkpoint_problem(path, fmt)
        if problem is not None:
            raise CheckpointError(describe_problem(path, problem, fmt))
        return fmt.read(resolve(path), **kwargs)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:  # `weights_only`: it holds objects that only pickle can rebuild
        raise CheckpointError(refuse_pickle(path, error)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as error:
        message = describe_problem(path, f"it cannot be read ({type(error).__name__}: {error})", fmt)
        raise CheckpointError(message) from error


def _read_checked(path: str, fmt: Any, digests: dict[str, int | None], kwargs: dict[str, Any]) -> Any:
    # One pass: the size from the file's metadata, the digest while it is loaded. A pointer may be replaced
    # between reading it and opening its data file (whose old version is then deleted): read it again, once.
    for attempt in (0, 1):
        data = resolve(path)
        try:
            problem = size_problem(os.path.getsize(data), digests)
            if problem is not None:
                raise CheckpointError(describe_problem(path, problem, fmt))
            return fmt.read_checked(data, set(digests), **kwargs)
        except FileNotFoundError:
            if attempt or not os.path.exists(path):
                raise
        except DigestMismatch as mismatch:
            problem = digest_problem(mismatch.actual, digests, path)
            raise CheckpointError(describe_problem(path, str(problem), fmt)) from mismatch.__cause__
    raise AssertionError("unreachable")


def copy_names(name: str, steps: int, epochs: int | None, best: bool, keep: int, epoch_copy: bool) -> list[str]:
    r"""
    The other names a save of `name` gets: `step-{steps}` (a `latest` save, when `keep` > 0), `epoch-{epochs}`
    (with `epoch_copy`) and `best`.

    Examples:
        >>> copy_names("latest", 7, 2, best=True, keep=2, epoch_copy=True)
        ['step-7', 'epoch-2', 'best']
    """
    copies = []
    if name == LATEST and keep > 0:
        copies.append(f"step-{int(steps)}")
    if epoch_copy and epochs is not None:
        copies.append(f"epoch-{epochs}")
    if best and name != BEST:
        copies.append(BEST)
    return copies


def refuse_pickle(path: str, error: BaseException) -> str:
    r"""
    Why a checkpoint that needs pickle to load is refused: the objects it holds, never advice to unpickle it.

    Examples:
        >>> message = refuse_pickle("x.pth", ValueError("Unsupported global: GLOBAL os.system was not allowed"))
        >>> message[:73]
        "checkpoint file 'x.pth' holds Python objects that only pickle can rebuild"
        >>> "(os.system)" in message, "weights_only" in message
        (True, False)
    """
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
    held = f" ({', '.join(names)})" if names else ""
    return (
        f"checkpoint file {path!r} holds Python objects that only pickle can rebuild{held}, and unpickling a file "
        "can run any code it carries: DanLing refuses it. A DanLing checkpoint holds tensors and plain values only; "
        "if you wrote this file yourself, save the state dicts (tensors) instead of the objects"
    )


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def _explain_write_error(error: OSError, path: str) -> OSError:
    # The error a failed write raises: the file, the cause, the free space. Explained once, at the deepest level.
    if getattr(error, "checkpoint_path", None) is not None:
        return error
    directory = os.path.dirname(path) or "."
    free = free_space(directory)
    space = "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full)"
    message = f"could not write checkpoint file {path!r}: {reason} ({space} in {directory!r}); earlier files are intact"
    explained = OSError(error.errno, message) if error.errno is not None else OSError(message)
    explained.checkpoint_path = path  # type: ignore[attr-defined]
    return explained
