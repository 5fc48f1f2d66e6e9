"""Process group set-up for runners launched with `torchrun`."""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import MutableMapping
from datetime import timedelta

import torch
from torch import distributed as dist

from danling.utils import distributed as dist_utils
from danling.utils.distributed import all_reduce, broadcast_object

__all__ = [
    "init_process_group",
    "destroy_process_group_at_exit",
    "share_run_identity",
    "resolve_device",
    "default_backend",
    "launched_distributed",
    "all_reduce",
    "broadcast_object",
]


def launched_distributed() -> bool:
    r"""
    Whether `torchrun` (or another launcher) started several processes (`WORLD_SIZE > 1`).

    Examples:
        >>> launched_distributed()
        False
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    r"""
    `nccl` when CUDA is available, else `gloo`.
    """
    return "nccl" if torch.cuda.is_available() else "gloo"


def process_group_timeout(seconds: object) -> timedelta | None:
    r"""
    `config.dist_timeout` (seconds) as the `timeout` of `init_process_group`; `None` keeps torch's default.

    Raises:
        ValueError: If it is not a positive number of seconds.

    Examples:
        >>> process_group_timeout(10)
        datetime.timedelta(seconds=10)
        >>> process_group_timeout(0)
        Traceback (most recent call last):
        ValueError: dist_timeout must be a positive number of seconds (or None for torch's default), but got 0
    """
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(
            f"dist_timeout must be a positive number of seconds (or None for torch's default), but got {seconds!r}"
        )
    return timedelta(seconds=seconds)


def init_process_group(backend: str | None = None, timeout: float | None = None) -> bool:
    r"""
    Initialise the default process group from `torchrun`'s environment, once.

    Reads `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; on CUDA, binds this process to
    GPU `LOCAL_RANK` first. Does nothing in a single process or when a group already exists.

    Args:
        backend: `nccl`, `gloo`, ... (default:
            [`default_backend`][danling.runner.distributed.processes.default_backend]).
        timeout: Seconds a collective may wait before the job fails with an error (`config.dist_timeout`);
            `None` keeps torch's default (30 minutes on gloo, 10 on nccl).

    Returns:
        Whether a group is initialised after the call.
    """
    delta = process_group_timeout(timeout)
    if dist.is_initialized():
        return True
    if not launched_distributed():
        return False
    if backend is None:
        backend = default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if delta is None:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, timeout=delta)
    atexit.register(destroy_process_group_at_exit)
    return True


def destroy_process_group_at_exit() -> None:
    r"""
    Destroy the default process group at exit, while the interpreter is still whole (registered by
    [`init_process_group`][danling.runner.distributed.processes.init_process_group]; a no-op if the script destroyed
    it).

    Left to interpreter finalisation, gloo's worker threads can abort a process that has finished its work
    (`terminate called without an active exception`, SIGABRT), and `torchrun` then reports the run as failed.
    Destroying the group is not enough on its own: objects in reference cycles (a runner and its DDP model,
    which holds the group) keep its C++ side alive until finalisation, so the garbage is collected here too,
    also when the script destroyed the group itself. NCCL groups still initialised are left to torch: their
    shutdown must be collective, which an exit path cannot promise.

    Examples:
        >>> destroy_process_group_at_exit()  # no group: nothing to destroy
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            return
        dist.destroy_process_group()
    gc.collect()


# Config keys every rank takes from rank 0, so that all ranks identify and seed the run alike.
SHARED_CONFIG_KEYS = ("experiment_id", "run_id", "seed")


def share_run_identity(timestamp: str, config: MutableMapping) -> str:
    r"""
    Make the run's identity rank 0's on every rank: write rank 0's `experiment_id`, `run_id` and `seed` into
    `config` and return rank 0's `timestamp`. Collective when distributed.

    Args:
        timestamp: This rank's timestamp.
        config: This rank's config, updated in place.

    Returns:
        Rank 0's timestamp.

    Examples:
        >>> config = {"experiment_id": "e", "run_id": "r", "seed": 1}
        >>> share_run_identity("20250101", config), config
        ('20250101', {'experiment_id': 'e', 'run_id': 'r', 'seed': 1})
    """
    agreed = dist_utils.broadcast_object({"timestamp": timestamp, **{k: config.get(k) for k in SHARED_CONFIG_KEYS}})
    timestamp = agreed.pop("timestamp")
    for key, value in agreed.items():
        config[key] = value
    return timestamp


def resolve_device(device: str | None, local_rank: int) -> torch.device:
    r"""
    The device to run on: `device` when given, else `cuda:local_rank` when CUDA is available, else CPU.

    Examples:
        >>> resolve_device("cpu", 3)
        device(type='cpu')
    """
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
