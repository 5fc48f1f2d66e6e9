"""Gradients of a model as a list of tensors: scaled in place and tested for NaN/inf on the device, never read back.

Used by [`TokenNormalization`][danling.runner.loop.tokens.TokenNormalization] (the gradient of a token-weighted
mean) and [`NonFiniteSteps`][danling.runner.loop.finite.NonFiniteSteps] (`skip_nonfinite_steps`). Sharded
gradients (`DTensor`, under FSDP2) are handled through their local shards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def gradients_of(module: nn.Module) -> list[torch.Tensor]:
    r"""
    The gradients of `module`'s parameters that have one, in parameter order.

    Examples:
        >>> model = nn.Linear(2, 1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> [tuple(grad.shape) for grad in gradients_of(model)]
        [(1, 2), (1,)]
    """
    return [parameter.grad for parameter in module.parameters() if parameter.grad is not None]


def local_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    r"""
    The tensors with each `DTensor` replaced by its local shard (an alias: in-place changes reach the `DTensor`).

    Examples:
        >>> local_tensors([torch.ones(2)])
        [tensor([1., 1.])]
    """
    # A `DTensor` exists only once its module is loaded (by FSDP2): not imported here, it loads sympy.
    DTensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    if DTensor is None:
        return list(tensors)
    with torch.no_grad():  # `to_local` then returns the shard itself, not a view made by autograd
        return [tensor.to_local() if isinstance(tensor, DTensor) else tensor for tensor in tensors]


def by_device(tensors: Iterable[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    r"""
    The tensors grouped by device, in order (a fused `torch._foreach_*` call takes the tensors of one device).

    Examples:
        >>> groups = by_device([torch.ones(1), torch.zeros(2)])
        >>> list(groups), [len(group) for group in groups.values()]
        ([device(type='cpu')], [2])
    """
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.device, []).append(tensor)
    return groups


@torch.no_grad()
def scale_(gradients: list[torch.Tensor], factor: Any) -> None:
    r"""
    Multiply every gradient by `factor` in place, without reading it on the host.

    Args:
        gradients: The gradients (plain tensors or `DTensor`s).
        factor: A Python number or a 0-d tensor (copied to the gradients' device when it is on another).

    Examples:
        >>> grads = [torch.ones(2), torch.full((1,), 4.0)]
        >>> scale_(grads, torch.tensor(0.5))
        >>> grads
        [tensor([0.5000, 0.5000]), tensor([2.])]
    """
    for device, group in by_device(local_tensors(gradients)).items():
        if isinstance(factor, torch.Tensor):
            torch._foreach_mul_(group, factor.to(device))
        else:
            torch._foreach_mul_(group, factor)


@torch.no_grad()
def nonfinite_flag(gradients: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    r"""
    A 0-d `int32` tensor on `device`: 1 when a gradient holds NaN or infinity, else 0 (not read on the host).

    Each gradient is tested through its largest absolute value (its infinity norm, one fused kernel per device):
    NaN and infinity propagate into it, and no finite gradient overflows it. A `DTensor` is tested on its local
    shard: reduce the flag across ranks to learn about the whole gradient.

    Examples:
        >>> cpu = torch.device("cpu")
        >>> nonfinite_flag([torch.ones(3), torch.tensor([1e38, -1e38])], cpu)
        tensor(0, dtype=torch.int32)
        >>> nonfinite_flag([torch.ones(3), torch.tensor([float("nan")])], cpu)
        tensor(1, dtype=torch.int32)
        >>> nonfinite_flag([torch.ones(0)], cpu)
        tensor(0, dtype=torch.int32)
    """
    flag = torch.zeros((), dtype=torch.int32, device=device)
    # An empty tensor (a rank's shard of a small parameter) holds nothing to test, and has no infinity norm.
    for group in by_device(tensor for tensor in local_tensors(gradients) if tensor.numel()).values():
        norms = torch._foreach_norm(group, float("inf"))
        bad = torch.stack([norm.float() for norm in norms]).isfinite().logical_not().any()
        flag = flag.logical_or(bad.to(device)).to(torch.int32)
    return flag
