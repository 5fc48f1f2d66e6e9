"""What `TorchRunner.infer` accepts (a split, a dataset, a dataloader or a tensor) and how it gathers predictions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader

from danling.utils import distributed as dist_utils

from .data import build_dataloader, build_sampler, split_options


def inference_loader(data: Any, dataloader_config: Any, rank: int, world_size: int, pin: bool) -> DataLoader:
    r"""
    A loader over `data` (a dataset or a tensor, whose rows are samples), or `data` itself when it is a loader.

    The options are `config.dataloader` overlaid with `config.dataloader.infer`; under DDP each rank gets an
    unpadded contiguous shard (possibly empty), so the gathered predictions are in dataset order.

    Examples:
        >>> [batch.tolist() for batch in inference_loader(torch.arange(5), {"batch_size": 2}, 0, 1, False)]
        [[0, 1], [2, 3], [4]]
    """
    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__getitem__") and not isinstance(data, torch.utils.data.IterableDataset):
        raise ValueError(
            f"infer() takes a split name, a dataset, a DataLoader or a tensor, but got {type(data).__name__}"
        )
    config = dataloader_config or {}
    options = split_options(config, "infer", [key for key, value in config.items() if isinstance(value, dict)])
    sampler = build_sampler(data, False, False, rank, world_size, None)
    return build_dataloader(data, sampler, options, False, pin)


def gather_predictions(outputs: list[torch.Tensor], distributed: bool) -> torch.Tensor:
    r"""
    Concatenate this rank's batches of predictions and gather every rank's, in rank order (on CPU).

    A rank whose shard was empty contributes nothing: the ranks first agree on the trailing shape and dtype.
    Collective when `distributed`.

    Examples:
        >>> gather_predictions([torch.ones(2, 3), torch.zeros(1, 3)], distributed=False).shape
        torch.Size([3, 3])
        >>> gather_predictions([], distributed=False)
        tensor([])
    """
    local = torch.cat(outputs) if outputs else None
    if not distributed:
        return torch.empty(0) if local is None else local.cpu()
    layout = None if local is None else (tuple(local.shape[1:]), local.dtype)
    layouts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, layout)
    known = [item for item in layouts if item is not None]
    if not known:
        return torch.empty(0)
    if local is None:
        shape, dtype = known[0]
        local = torch.empty((0, *shape), dtype=dtype, device=dist_utils.communication_device())
    return dist_utils.all_gather_uneven(local).cpu()


def infer_input(data: Any) -> Any:
    r"""
    The model input of a batch: `input` of a mapping, the first element of an `(input,)` or `(input, target)`
    sequence, else the batch itself.

    Examples:
        >>> infer_input({"input": 1, "target": 2}), infer_input((1, 2)), infer_input(3)
        (1, 1, 3)
    """
    if isinstance(data, Mapping):
        return data["input"]
    if isinstance(data, (tuple, list)) and len(data) in (1, 2):
        return data[0]
    return data
