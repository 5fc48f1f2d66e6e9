"""Process-group helpers that work with or without `torch.distributed` initialised.

Every function here is safe to call in a single process: it then behaves as the identity (or returns
rank 0 / world size 1). Functions that run a collective say so in their docstring: they must be called on
*all* ranks, never behind an `is_main_process` check.
"""

from __future__ import annotations

import os

import torch
from torch import distributed as dist


def is_distributed() -> bool:
    r"""
    Whether a process group with more than one process is initialised.

    Returns:
        `True` when `torch.distributed` is initialised with `world_size > 1`.

    Examples:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    r"""
    Number of processes in the default group (1 when not distributed).

    Examples:
        >>> get_world_size()
        1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def get_rank() -> int:
    r"""
    Global rank of this process (0 when not distributed).

    Examples:
        >>> get_rank()
        0
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_local_rank() -> int:
    r"""
    Rank of this process on its node, from `LOCAL_RANK` (0 when not launched by `torchrun`).

    Examples:
        >>> get_local_rank()
        0
    """
    return int(os.environ.get("LOCAL_RANK", "0"))


def communication_device() -> torch.device:
    r"""
    Device that tensors must live on to take part in a collective of the default group.

    NCCL needs CUDA tensors on this process's device; every other backend (gloo, mpi) works on CPU.

    Examples:
        >>> communication_device()
        device(type='cpu')
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    r"""
    Reduce `tensor` across all ranks without modifying the input.

    Collective: call on all ranks.

    Args:
        tensor: Tensor to reduce; it is cloned (and moved to the communication device when needed).
        op: `"sum"` or `"mean"`.

    Returns:
        The reduced tensor, on the device of the input.

    Raises:
        ValueError: If `op` is not `"sum"` or `"mean"`.

    Examples:
        >>> all_reduce(torch.tensor([1.0, 2.0]), op="mean")
        tensor([1., 2.])
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', but got {op!r}")
    if not is_distributed():
        return tensor.clone()
    device = tensor.device
    reduced = tensor.detach().to(communication_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    if op == "mean":
        reduced = reduced / dist.get_world_size()
    return reduced.to(device)


def all_gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    r"""
    Concatenate, along dim 0 and in rank order, tensors whose first dimension differs across ranks.

    Collective: call on all ranks. Trailing dimensions and dtype must agree across ranks.

    Args:
        tensor: Local shard.

    Returns:
        The concatenation of every rank's shard, on the device of the input.

    Examples:
        >>> all_gather_uneven(torch.arange(3))
        tensor([0, 1, 2])
    """
    if not is_distributed():
        return tensor
    device = tensor.device
    local = tensor.detach().to(communication_device()).contiguous()
    world_size = dist.get_world_size()
    length = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    lengths = [torch.empty_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(shards, padded)
    return torch.cat([shard[:size] for shard, size in zip(shards, sizes)]).to(device)


def broadcast_object(obj: object, src: int = 0) -> object:
    r"""
    Send a picklable object from rank `src` to every rank.

    Collective: call on all ranks.

    Args:
        obj: Object to send (ignored on the other ranks).
        src: Rank that owns the value.

    Returns:
        The value of rank `src`.

    Examples:
        >>> broadcast_object({"seed": 1})
        {'seed': 1}
    """
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=communication_device())
    return holder[0]


def barrier() -> None:
    r"""
    Wait for every rank (no-op when not distributed).

    Collective: call on all ranks.
    """
    if is_distributed():
        dist.barrier()
