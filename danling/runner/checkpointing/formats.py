"""How a checkpoint's state becomes bytes on disk: a small writer/reader interface and the `torch.save` format."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Mapping
from typing import Any, Protocol

import torch

# Bytes read at a time when hashing a file.
CHUNK_SIZE = 1 << 22


class CheckpointFormat(Protocol):
    r"""
    What the [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] needs from a checkpoint format.

    A format serialises a state to a path and back, and computes the digest that verifies it. The manager owns
    names, atomic commits, manifests and retention; a format owns only bytes. A sharded format (a directory per
    checkpoint) implements the same four methods.
    """

    name: str
    suffix: str

    def write(self, state: Mapping, path: str) -> None:
        r"""Serialise `state` to `path` (a temporary path the manager later renames)."""

    def read(self, path: str, **kwargs: Any) -> Any:
        r"""Deserialise the checkpoint at `path`."""

    def digest(self, path: str) -> str:
        r"""Hex SHA-256 of the checkpoint at `path`."""

    def copy(self, source: str, destination: str) -> None:
        r"""Copy the checkpoint at `source` to the (temporary) `destination`."""


def sha256_file(path: str) -> str:
    r"""
    Hex SHA-256 of a file's bytes.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x")
        >>> with open(path, "wb") as fp:
        ...     _ = fp.write(b"abc")
        >>> sha256_file(path)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def zip_problem(path: str) -> str | None:
    r"""
    What is wrong with a `torch.save` zip archive, checked against the CRCs of its entries; `None` if intact.

    Used for checkpoints without a manifest (written by hand or by another tool).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> torch.save({"w": torch.ones(3)}, path)
        >>> zip_problem(path) is None
        True
    """
    if not zipfile.is_zipfile(path):
        return "it is not a torch.save archive (no zip directory: truncated, or not a checkpoint)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as error:
        return f"its zip archive is damaged ({error})"
    if bad is not None:
        return f"the CRC of its entry {bad!r} does not match its bytes (corrupt)"
    return None


class TorchFileFormat:
    r"""
    One `torch.save` file per checkpoint (`.pth`), loadable with `torch.load(..., weights_only=True)`.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.pth")
        >>> TorchFileFormat().write({"w": torch.ones(2)}, path)
        >>> TorchFileFormat().read(path, weights_only=True)["w"]
        tensor([1., 1.])
    """

    name = "torch"
    suffix = ".pth"

    def write(self, state: Mapping, path: str) -> None:
        torch.save(state, path)

    def read(self, path: str, **kwargs: Any) -> Any:
        return torch.load(path, **kwargs)

    def digest(self, path: str) -> str:
        return sha256_file(path)

    def copy(self, source: str, destination: str) -> None:
        # A real copy, not a hard link: a bit flip in one file must leave the other a valid fallback.
        shutil.copyfile(source, destination)
