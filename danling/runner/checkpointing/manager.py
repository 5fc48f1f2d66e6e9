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

from .formats import CheckpointFormat, TorchFileFormat, free_space
from .manifest import CheckpointError, checkpoint_problem, describe_problem, manifest_path, read_manifest
from .temporaries import TEMPORARY_PATTERN, remove_stale_temporaries, write_atomically  # noqa: F401 (re-exported)

LATEST = "latest"
BEST = "best"
STEP_PATTERN = re.compile(r"step-(\d+)")
EPOCH_PATTERN = re.compile(r"epoch-(\d+)")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointManager:
    r"""
    Owns the checkpoints of one directory: what they are called, how they are committed, which are kept.

    Every save writes `{name}.pth` atomically, then its manifest (SHA-256 and size); a `latest` save also keeps a
    step-stamped copy `step-{steps}.pth`, of which the newest `keep` survive, so a fallback always exists;
    `epoch-{epochs}.pth` and `best.pth` copies are made on request. Retention never deletes `latest` or `best`.
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
        Commit `state` as `{name}.pth` and its copies; every file is complete or absent after a crash.

        Args:
            state: The checkpoint.
            name: File name without extension.
            steps: Optimizer steps of the state (stamped on the `latest` copy and recorded in manifests).
            epochs: Epoch of the state.
            best: Also commit it as `best.pth`.
            keep: Step-stamped copies of `latest` to keep (0 keeps none).
            epoch_copy: Also commit it as `epoch-{epochs}.pth`.

        Returns:
            The path of `{name}.pth`.

        Raises:
            OSError: If a write fails: the message names the path and the free space, and the files committed
                before are intact, no temporary file is left. A full disk is `errno.ENOSPC` ("No space left on
                device"), also when `torch.save` reports it as a `RuntimeError`.
        """
        os.makedirs(self.directory, exist_ok=True)
        self.remove_temporaries()
        info = {"steps": int(steps), "epochs": epochs, "format": self.format.name}
        primary = self.path(name)
        digest = self._commit(primary, lambda tmp: self.format.write(state, tmp), info)
        copies = []
        if name == LATEST and keep > 0:
            copies.append(f"step-{int(steps)}")
        if epoch_copy and epochs is not None:
            copies.append(f"epoch-{epochs}")
        if best and name != BEST:
            copies.append(BEST)
        for copy in copies:
            self._commit(self.path(copy), lambda tmp: self.format.copy(primary, tmp), info, digest)
        if name == LATEST:
            self.prune(keep)
        return primary

    def copy_to(self, source: str, name: str) -> str:
        r"""
        Commit a copy of the checkpoint `source` (of this directory) as `name`, atomically, with its manifest's steps,
        epoch and digest.

        Returns:
            The path of `name`.
        """
        manifest = read_manifest(source) or {}
        info = {key: manifest.get(key) for key in ("steps", "epochs", "format")}
        path = self.path(name)
        self._commit(path, lambda tmp: self.format.copy(source, tmp), info, manifest.get("sha256"))
        return path

    def _commit(self, path: str, writer: Callable[[str], None], info: dict[str, Any], digest: str | None = None) -> str:
        # 1. write a temporary file; 2. record its digest as `pending` next to the current one; 3. rename it over
        # `path`; 4. make the new digest the only one. A kill at any instant leaves a file its manifest accepts.
        current = self._current_entry(path)
        new: dict[str, Any] = {}

        def write_and_announce(temporary: str) -> None:
            writer(temporary)
            new.update(sha256=digest or self.format.digest(temporary), size=_size(temporary))
            transition = {"file": os.path.basename(path), **info, **current, "pending": dict(new)}
            self._write_manifest(path, transition)

        try:
            write_atomically(path, write_and_announce)  # temporary file, fsync, rename
        except OSError as error:
            raise _explain_write_error(error, path) from error
        self._write_manifest(path, {"file": os.path.basename(path), **info, **new, "written": time.time()})
        return new["sha256"]

    def _current_entry(self, path: str) -> dict[str, Any]:
        # Digest and size of the file `path` holds now, as its manifest records them.
        manifest = read_manifest(path) if os.path.exists(path) else None
        if manifest is None:
            return {}
        if manifest.get("pending"):  # an interrupted save: find out which of the two the file holds
            actual = self.format.digest(path)
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
        r"""Delete the checkpoint `name` (without extension) and its manifest."""
        for path in (manifest_path(self.path(name)), self.path(name)):
            with suppress(FileNotFoundError):
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)

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
                and the valid checkpoints next to it.
        """
        return read_verified(path, self.format, **kwargs)


def read_verified(path: str, fmt: CheckpointFormat | None = None, **kwargs: Any) -> Any:
    r"""
    Verify the checkpoint at `path` (see [`verify_checkpoint`][danling.runner.checkpointing.verify_checkpoint]),
    then read it with `fmt`; every error names the file.
    """
    fmt = TorchFileFormat() if fmt is None else fmt
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint is set to {path!r}, but no such file exists")
    problem = checkpoint_problem(path, fmt)
    if problem is not None:
        raise CheckpointError(describe_problem(path, problem, fmt))
    try:
        return fmt.read(path, **kwargs)
    except pickle.UnpicklingError as error:  # `weights_only`: it holds objects that only pickle can rebuild
        raise CheckpointError(refuse_pickle(path, error)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as error:
        message = describe_problem(path, f"it cannot be read ({type(error).__name__}: {error})", fmt)
        raise CheckpointError(message) from error


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
