"""Manifests: the small JSON file next to each checkpoint that holds its digest, and verifying against it."""

from __future__ import annotations

import json
import os
from typing import Any

from .formats import TorchFileFormat, zip_problem
from .links import resolve

MANIFEST_SUFFIX = ".manifest.json"


class CheckpointError(ValueError):
    r"""
    A checkpoint that cannot be used: corrupt, truncated, or not a checkpoint. The message names the file,
    what is wrong and the intact files next to it.
    """


def manifest_path(path: str) -> str:
    r"""
    Path of the manifest of the checkpoint at `path`.

    Examples:
        >>> manifest_path("checkpoints/latest.pth")
        'checkpoints/latest.pth.manifest.json'
    """
    return path + MANIFEST_SUFFIX


def read_manifest(path: str) -> dict[str, Any] | None:
    r"""
    The manifest of the checkpoint at `path`, or `None` when it has none (or it cannot be parsed).
    """
    try:
        with open(manifest_path(path), encoding="utf-8") as fp:
            manifest = json.load(fp)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def accepted_digests(manifest: dict[str, Any]) -> dict[str, int | None]:
    r"""
    Digests a file may have under `manifest`, mapped to their sizes.

    While a checkpoint is replaced, its manifest accepts both the old and the new bytes (`pending`), so a kill
    between renaming the file and rewriting the manifest never makes a good file look corrupt.

    Examples:
        >>> accepted_digests({"sha256": "a", "size": 1, "pending": {"sha256": "b", "size": 2}})
        {'a': 1, 'b': 2}
    """
    digests: dict[str, int | None] = {}
    for entry in (manifest, manifest.get("pending") or {}):
        if isinstance(entry, dict) and entry.get("sha256"):
            digests[entry["sha256"]] = entry.get("size")
    return digests


def checkpoint_problem(path: str, fmt: Any = None) -> str | None:
    r"""
    What is wrong with the checkpoint at `path`, or `None` when it verifies.

    A checkpoint with a manifest must match one of its digests; one without (written by another tool) must be an
    intact `torch.save` archive (zip CRCs). A pointer file is checked through the data it names (see
    [`links`][danling.runner.checkpointing.links]).

    Args:
        path: The checkpoint.
        fmt: Its [`CheckpointFormat`][danling.runner.checkpointing.CheckpointFormat] (default: torch files).

    Returns:
        A sentence saying what is wrong, or `None`.
    """
    fmt = TorchFileFormat() if fmt is None else fmt
    if not os.path.exists(path):
        return "it does not exist"
    data = resolve(path)
    if not os.path.exists(data):
        return f"it points to {os.path.basename(data)}, which does not exist (deleted by hand?)"
    manifest = read_manifest(path)
    if manifest is None:
        return zip_problem(data) if os.path.isfile(data) else None
    digests = accepted_digests(manifest)
    size = os.path.getsize(data) if os.path.isfile(data) else None
    return size_problem(size, digests) or digest_problem(fmt.digest(data), digests, path)


def size_problem(size: int | None, digests: dict[str, int | None]) -> str | None:
    r"""
    What is wrong with a file of `size` bytes under a manifest accepting `digests` (see
    [`accepted_digests`][danling.runner.checkpointing.manifest.accepted_digests]), or `None`.

    Examples:
        >>> size_problem(10, {"a": 100})
        'it is 10 bytes but its manifest says 100 (truncated or overwritten)'
    """
    sizes = {value for value in digests.values() if value is not None}
    if size is None or not sizes or size in sizes:
        return None
    expected = " or ".join(str(value) for value in sorted(sizes))
    return f"it is {size} bytes but its manifest says {expected} (truncated or overwritten)"


def digest_problem(actual: str, digests: dict[str, int | None], path: str) -> str | None:
    r"""
    What is wrong with a checkpoint `path` whose bytes have the SHA-256 `actual`, or `None` when it is accepted.

    Examples:
        >>> digest_problem("ab" * 32, {"cd" * 32: 1}, "latest.pth")[:36]
        'its SHA-256 abababababababab... matc'
    """
    if actual in digests:
        return None
    return (
        f"its SHA-256 {actual[:16]}... matches no digest in {os.path.basename(manifest_path(path))} "
        "(corrupt: flipped bits or a partial copy; if you rewrote it on purpose, delete the manifest)"
    )


def sibling_checkpoints(path: str, fmt: Any = None, limit: int = 8) -> list[str]:
    r"""
    Names of the checkpoints in the directory of `path` that verify, newest first (at most `limit` checked).
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fmt = TorchFileFormat() if fmt is None else fmt
    try:
        names = [name for name in os.listdir(directory) if name.endswith(fmt.suffix) and not name.startswith(".")]
    except OSError:
        return []
    names = [name for name in names if os.path.join(directory, name) != os.path.abspath(path)]
    names = [name for name in names if not _same_bytes(os.path.join(directory, name), path)]
    names.sort(key=lambda name: os.path.getmtime(os.path.join(directory, name)), reverse=True)
    return [name for name in names[:limit] if checkpoint_problem(os.path.join(directory, name), fmt) is None]


def _same_bytes(first: str, second: str) -> bool:
    # Two names of one file (hard links, or pointers to one data file): not a fallback for each other.
    try:
        return os.path.samefile(resolve(first), resolve(second))
    except OSError:
        return False


def describe_problem(path: str, problem: str, fmt: Any = None) -> str:
    r"""
    The message of a [`CheckpointError`][danling.runner.checkpointing.CheckpointError]: file, problem, fallbacks.
    """
    valid = sibling_checkpoints(path, fmt)
    hint = f"intact files next to it: {', '.join(valid)}" if valid else "no intact checkpoint file is next to it"
    return f"checkpoint {path!r} cannot be used: {problem}; {hint}"


def verify_checkpoint(path: str | os.PathLike, fmt: Any = None) -> str:
    r"""
    Verify a checkpoint before loading it.

    Args:
        path: The checkpoint.
        fmt: Its [`CheckpointFormat`][danling.runner.checkpointing.CheckpointFormat] (default: torch files).

    Returns:
        The path, as a string.

    Raises:
        FileNotFoundError: If it does not exist.
        CheckpointError: If it is corrupt, truncated or not a checkpoint.

    Examples:
        >>> import tempfile, torch
        >>> from danling.runner.checkpointing import CheckpointManager
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> path = manager.save({"w": torch.ones(2)}, steps=1)
        >>> verify_checkpoint(path) == path
        True
        >>> with open(path, "r+b") as fp:
        ...     _ = fp.seek(100)
        ...     _ = fp.write(b"X")
        >>> verify_checkpoint(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        danling.runner.checkpointing.manifest.CheckpointError: checkpoint ... matches no digest ...
    """
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    problem = checkpoint_problem(path, fmt)
    if problem is not None:
        raise CheckpointError(describe_problem(path, problem, fmt))
    return path
