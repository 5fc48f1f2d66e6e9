"""Small collective helpers shared by the meters and metrics.

Every function is the identity in a single process. In a process group each one is a collective: call it on
*all* ranks, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import distributed as dist

from danling.utils.distributed import (
    all_gather_uneven,
    all_reduce,
    communication_device,
    get_world_size,
    is_distributed,
)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    r"""
    Floating dtype used to accumulate running sums on `device`.

    Float64 keeps long sums exact enough; MPS has no float64, so it falls back to float32 there.

    Examples:
        >>> accumulation_dtype(torch.device("cpu"))
        torch.float64
    """
    return torch.float32 if device.type == "mps" else torch.float64


def union_keys(keys: Sequence[str]) -> list[str]:
    r"""
    Keys present on any rank, in the order rank 0, rank 1, ... first saw them.

    Collective when distributed: call on all ranks. Ranks that share their meters' names therefore reduce them
    in the same order, even when one rank created a meter the others never touched.

    Args:
        keys: Local keys.

    Returns:
        The union of the keys of every rank, identical on all ranks.

    Examples:
        >>> union_keys(["loss", "acc"])
        ['loss', 'acc']
    """
    if not is_distributed():
        return list(keys)
    gathered: list[list[str] | None] = [None] * get_world_size()
    dist.all_gather_object(gathered, list(keys))
    merged: dict[str, None] = {}
    for rank_keys in gathered:
        merged.update(dict.fromkeys(rank_keys or []))
    return list(merged)


def reduce_sums(
    sums: Sequence[float | torch.Tensor], counts: Sequence[float | torch.Tensor]
) -> list[tuple[float, float]]:
    r"""
    Sum pairs of `(sum, count)` across ranks in one collective and return them as Python floats.

    Collective when distributed: call on all ranks with the same number of pairs.

    Args:
        sums: Local sums (numbers or 0-d tensors on any device).
        counts: Local counts, one per sum.

    Returns:
        The global `(sum, count)` for each pair.

    Examples:
        >>> reduce_sums([1.5, torch.tensor(2.0)], [3, 4])
        [(1.5, 3.0), (2.0, 4.0)]
    """
    if len(sums) == 0:
        return []
    device = communication_device() if is_distributed() else torch.device("cpu")
    dtype = accumulation_dtype(device)
    stacked = torch.stack(
        [torch.as_tensor(value, dtype=dtype, device=device).reshape(()) for value in [*sums, *counts]]
    )
    reduced = all_reduce(stacked, op="sum").tolist()
    half = len(sums)
    return list(zip(reduced[:half], reduced[half:]))


def gather_rows(local: torch.Tensor | None) -> torch.Tensor | None:
    r"""
    Concatenate every rank's rows in rank order; a rank with nothing (`None`) contributes no rows.

    Collective when distributed: call on all ranks. Ranks may hold different numbers of rows; the trailing
    dimensions and dtype come from the ranks that hold data.

    Args:
        local: This rank's rows, or `None` when it has none.

    Returns:
        The rows of every rank, or `None` when no rank has any.

    Examples:
        >>> gather_rows(torch.tensor([1, 2])), gather_rows(None)
        (tensor([1, 2]), None)
    """
    if not is_distributed():
        return local
    meta = None if local is None else (tuple(local.shape[1:]), local.dtype)
    metas: list[Any] = [None] * get_world_size()
    dist.all_gather_object(metas, meta)
    known = next((m for m in metas if m is not None), None)
    if known is None:
        return None
    if local is None:
        trailing, dtype = known
        local = torch.empty((0, *trailing), dtype=dtype, device=communication_device())
    return all_gather_uneven(local)
