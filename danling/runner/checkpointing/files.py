"""Checkpoint files: reading them back, writing them durably, and the names of their parts."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import torch
from torch.serialization import default_restore_location

from . import read_verified
from .links import resolve

# Stable names of the parts of a checkpoint.
RUNNER = "runner"
MODEL = "model"
EMA = "ema"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
RNG = "rng"
RESULTS = "results"

CheckpointLike = Mapping | bytes | str | os.PathLike


class CheckpointIsADirectoryError(IsADirectoryError, ValueError):
    r"""A checkpoint path names a directory: an `IsADirectoryError` that is also a `ValueError` (a bad value)."""


def read_checkpoint(checkpoint: Any, *args: Any, what: str = "checkpoint", **kwargs: Any) -> Mapping:
    r"""
    Return a checkpoint as a mapping, verifying and loading it first when given a path.

    A path is verified against its manifest (or its zip CRCs) before it is loaded, see
    [`verify_checkpoint`][danling.runner.checkpointing.verify_checkpoint].

    Args:
        checkpoint: A path (`str`, `bytes`, `os.PathLike`) or an already loaded mapping.
        *args: Passed to [`load`][danling.utils.io.load] (e.g. `map_location`).
        what: Name used in error messages (`"checkpoint"`, `"pretrained"`).
        **kwargs: Passed to [`load`][danling.utils.io.load].

    Returns:
        The checkpoint mapping.

    Raises:
        FileNotFoundError: If the path does not exist.
        IsADirectoryError: If the path is a directory (also a `ValueError`).
        CheckpointError: If the file is corrupt, truncated or cannot be read (a `ValueError`; names the file).
        ValueError: If `checkpoint` is neither a path nor a mapping, or the file does not hold a mapping.

    Examples:
        >>> read_checkpoint({"model": {}})
        {'model': {}}
        >>> read_checkpoint(42)
        Traceback (most recent call last):
        ValueError: checkpoint is set to 42 (int), but it must be a path (str, bytes, os.PathLike) or a mapping
    """
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, (str, bytes, os.PathLike)):
        raise ValueError(
            f"{what} is set to {checkpoint!r} ({type(checkpoint).__name__}), "
            "but it must be a path (str, bytes, os.PathLike) or a mapping"
        )
    path = os.fsdecode(checkpoint)
    if os.path.isdir(resolve(path)):
        raise CheckpointIsADirectoryError(describe_directory(path, what))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} is set to {path!r}, but no such file exists")
    if args:  # `map_location` given positionally
        kwargs["map_location"] = args[0]
    loaded = read_verified(path, **kwargs)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what} file {path!r} holds a {type(loaded).__name__}, but a checkpoint must be a mapping")
    return loaded


class NotACheckpointError(ValueError):
    r"""A file holds a mapping, but not a DanLing checkpoint (an unrelated `torch.save`): a `ValueError`."""


def check_is_checkpoint(loaded: Mapping, source: str, model_keys: Any = None) -> None:
    r"""
    Stop when `loaded` is not a DanLing checkpoint: it has no `runner` config and no `model`, and (given the model's
    state-dict keys) is not a bare state dict of this model either.

    Args:
        loaded: What the file held.
        source: The file, for the message.
        model_keys: Keys of the model's state dict, when a bare state dict of it is acceptable.

    Raises:
        NotACheckpointError: Naming the file and its top-level keys.

    Examples:
        >>> check_is_checkpoint({"runner": {}, "model": {}}, "a.pth")
        >>> try:
        ...     check_is_checkpoint({"epoch": 3, "net": {}}, "b.pth")
        ... except NotACheckpointError as error:
        ...     print(str(error)[:69])
        'b.pth' is not a DanLing checkpoint: its top-level keys are ['epoch',
    """
    if RUNNER in loaded or MODEL in loaded:
        return
    keys = [str(key) for key in loaded]
    if model_keys is not None and keys and set(ckpt_keys(keys)) <= set(model_keys):
        return  # a bare state dict of this model
    shown = keys[:20] + (["..."] if len(keys) > 20 else [])
    raise NotACheckpointError(
        f"{source!r} is not a DanLing checkpoint: its top-level keys are {shown}, and a DanLing checkpoint has "
        f"{RUNNER!r} (its config) and {MODEL!r}; to take only model weights from another file, use load_pretrained "
        "(config.pretrained)"
    )


def ckpt_keys(keys: list[str]) -> list[str]:
    r"""State-dict keys without a DDP `module.` prefix."""
    return [key[len("module.") :] if key.startswith("module.") else key for key in keys]


def describe_directory(path: str, what: str = "checkpoint") -> str:
    r"""
    Why a directory cannot be read as one checkpoint file, naming only checkpoints that exist in it.

    Examples:
        >>> import tempfile
        >>> describe_directory(tempfile.mkdtemp()).endswith("it holds no checkpoint file (*.pth)")
        True
    """
    try:
        files = sorted(name for name in os.listdir(path) if name.endswith((".pth", ".pt")))
    except OSError:
        files = []
    message = f"{what} is set to {path!r}, which is a directory, but a checkpoint file is needed here: "
    if os.path.isfile(os.path.join(resolve(path), ".metadata")):
        return message + "it is a sharded checkpoint (load it with the runner's load_checkpoint or config.checkpoint)"
    if not files:
        return message + "it holds no checkpoint file (*.pth)"
    return message + "it holds " + ", ".join(repr(os.path.join(path, name)) for name in files[:8])


def restore_location(device: torch.device | str) -> Callable[[Any, str], Any]:
    r"""
    A `torch.load` `map_location` that restores a checkpoint on this machine: every tensor saved on an accelerator
    (`cuda:0`, `cuda:3`, ...) goes to `device`, and tensors saved on the CPU (random states, host copies) stay there.

    Without it `torch.load` puts each tensor back on the device it was saved from: a checkpoint written on a GPU
    cannot be read on a machine without one, and under DDP every rank would load rank 0's tensors onto `cuda:0`.

    Args:
        device: Where the runner runs (`runner.device`); `"cpu"` brings accelerator tensors to the host.

    Returns:
        The function to pass as `map_location`.

    Examples:
        >>> restore = restore_location("meta")
        >>> storage = torch.UntypedStorage(4)
        >>> restore(storage, "cuda:1").device, restore(storage, "cpu").device
        (device(type='meta'), device(type='cpu'))
    """
    target = torch.device(device)

    def restore(storage: Any, location: str) -> Any:
        # `storage` arrives on the CPU; `location` is where it was saved from.
        if location == "cpu" or target.type == "cpu":
            return storage
        return default_restore_location(storage, str(target))

    return restore


def extract_model_state(checkpoint: Mapping) -> Mapping:
    r"""
    Find the model's state dict in a checkpoint, tolerating nesting under `model`/`module` and DDP prefixes.

    Args:
        checkpoint: A full runner checkpoint, or a bare (possibly DDP-prefixed) state dict.

    Returns:
        A state dict loadable by the unwrapped model.

    Examples:
        >>> extract_model_state({"runner": {}, "model": {"module.weight": 1}})
        {'weight': 1}
    """
    state = checkpoint
    while isinstance(state, Mapping) and (MODEL in state or "module" in state):
        state = state.get(MODEL, state.get("module"))
    if state and all(isinstance(key, str) and key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def link_or_copy(source: str, destination: str) -> None:
    r"""
    Make `destination` hold the content of `source` atomically: a hard link where possible, else a copy.

    Args:
        source: Existing file.
        destination: Path to (re)place.
    """
    # A hard link costs no I/O and, since every write replaces the file rather than rewriting it, the link
    # keeps the content it was made with. Fall back to a copy where links are not supported.
    directory = os.path.dirname(destination)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.remove(temporary)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def find_latest_checkpoint(checkpoint_dir: str) -> str | None:
    r"""
    Path of `latest.pth` in `checkpoint_dir`, else of the `epoch-N.pth` with the largest N, else `None`.
    """
    latest = os.path.join(checkpoint_dir, "latest.pth")
    if os.path.isfile(latest):
        return latest
    if not os.path.isdir(checkpoint_dir):
        return None
    epochs = [(int(m.group(1)), f) for f in os.listdir(checkpoint_dir) if (m := re.fullmatch(r"epoch-(\d+)\.pth", f))]
    return os.path.join(checkpoint_dir, max(epochs)[1]) if epochs else None
