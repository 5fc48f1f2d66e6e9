"""Gradients of a model as a list of tensors: scaled in place and tested for NaN/inf on the device, never read back;
and the total gradient norm of the optimizer steps a log line reports, kept on the device until it is read.

Used by [`TokenNormalization`][danling.runner.loop.tokens.TokenNormalization] (the gradient of a token-weighted
mean), [`NonFiniteSteps`][danling.runner.loop.finite.NonFiniteSteps] (`skip_nonfinite_steps`) and the optimizer
step's `grad_norm` ([`GradientNorms`][danling.runner.loop.gradients.GradientNorms] decides, from the log interval
and the accumulation steps alone, which optimizer steps a log line will report, so the norm is computed at those
steps only, or taken from `clip_grad_norm_`, which computes it anyway). Sharded gradients (`DTensor`, under FSDP2)
are handled through their local shards.
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
    The tensors grouped by device, in order (a fused multi-tensor call takes the tensors of one device).

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

    Torch has no public fused multiply over a list of tensors (its optimizers use a private one), so this is one
    `mul_` per gradient: once per optimizer step, under `loss_normalization: tokens` only.

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
        on_device = factor.to(device) if isinstance(factor, torch.Tensor) else factor
        for gradient in group:
            gradient.mul_(on_device)


@torch.no_grad()
def nonfinite_flag(gradients: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    r"""
    A 0-d `int32` tensor on `device`: 1 when a gradient holds NaN or infinity, else 0 (not read on the host).

    The gradients are tested through their largest absolute value (their infinity norm, fused over the tensors
    of each device by `torch.nn.utils.get_total_norm`): NaN and infinity propagate into it, and no finite gradient
    overflows it. A `DTensor` is tested on its local shard: reduce the flag across ranks to learn about the whole
    gradient.

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
        bad = largest_magnitude(group).isfinite().logical_not()
        flag = flag.logical_or(bad.to(device)).to(torch.int32)
    return flag


def largest_magnitude(tensors: list[torch.Tensor]) -> torch.Tensor:
    r"""
    The largest absolute value in non-empty `tensors` of one device, in float32 on it (NaN when any holds NaN).

    Examples:
        >>> largest_magnitude([torch.tensor([1.0, -3.0]), torch.tensor([2.0])])
        tensor(3.)
    """
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors, float("inf"), foreach=True).float()
    return torch.stack([tensor.detach().abs().max().float() for tensor in tensors]).max()


def total_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    r"""
    The 2-norm of all the gradients of `parameters` taken as one vector, on the device (no host read).

    Under FSDP2 the gradients are sharded `DTensor`s and so is the norm: read it with
    [`GradientNorms.take`][danling.runner.loop.gradients.GradientNorms.take], which makes it whole.

    Args:
        parameters: The parameters; those without a gradient are left out.

    Returns:
        The norm, a 0-dimensional tensor (0 when no parameter has a gradient).

    Examples:
        >>> weight = torch.zeros(2, requires_grad=True)
        >>> weight.grad = torch.tensor([3.0, 4.0])
        >>> total_norm([weight, torch.zeros(1, requires_grad=True)])
        tensor(5.)
    """
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads)
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grad) for grad in grads]))


class GradientNorms:
    r"""
    The gradient norm the next training log line shows (`grad_norm`): the total norm, before clipping, of the
    accumulated gradients at the latest optimizer step.

    A log line comes every `log_interval` batches (counted over the run) and an optimizer step at least every
    `accum_steps` batches, so the latest step before a log line at batch `L` is a step at batch `b <= L` with
    `L < b + accum_steps`. [`wanted`][danling.runner.loop.gradients.GradientNorms.wanted] answers that for a step
    (one modulo, no device work): only those steps compute a norm. A norm that `clip_grad_norm_` returns is kept
    at every step, for free. The norm stays a device tensor until
    [`take`][danling.runner.loop.gradients.GradientNorms.take] reads it at the log step.

    Args:
        log_interval: Batches between two log lines (`None`: no log lines, no norm).
        accum_steps: Batches per optimizer step.
        batches_before: Batches of earlier epochs (log lines count batches over the run).

    Examples:
        >>> norms = GradientNorms(log_interval=10, accum_steps=4)
        >>> [batch for batch in range(4, 41, 4) if norms.wanted(batch)]  # steps at batches 4, 8, ..., 40
        [8, 20, 28, 40]
        >>> norms.take() is None  # nothing recorded yet
        True
        >>> norms.record(torch.tensor(2.5))
        >>> norms.take(), norms.result()
        (2.5, {'grad_norm': 2.5})
    """

    __slots__ = ("accum_steps", "batches_before", "log_interval", "norm")

    def __init__(self, log_interval: int | None = None, accum_steps: int = 1, batches_before: int = 0) -> None:
        self.log_interval = log_interval
        self.accum_steps = accum_steps
        self.batches_before = batches_before
        self.norm: Any = None

    def plan(self, log_interval: int | None, accum_steps: int, batches_before: int = 0) -> None:
        r"""Follow the log interval, accumulation steps and batches before it of a training epoch (at its start)."""
        self.log_interval = log_interval
        self.accum_steps = accum_steps
        self.batches_before = batches_before

    def wanted(self, batch: int) -> bool:
        r"""
        Whether a log line may report the optimizer step taken at `batch`: the next log line comes before the next
        optimizer step can.

        Args:
            batch: The batch of the epoch, counted from 1, whose micro-step takes the optimizer step (the batches
                of earlier epochs are added to it).
        """
        interval = self.log_interval
        return interval is not None and (-(self.batches_before + batch)) % interval < self.accum_steps

    def record(self, norm: torch.Tensor) -> None:
        r"""Keep `norm` (a device tensor, possibly a sharded `DTensor`) as the latest step's."""
        self.norm = norm

    def result(self) -> dict[str, float]:
        r"""`{"grad_norm": norm}` of [`take`][danling.runner.loop.gradients.GradientNorms.take], or `{}` if none."""
        norm = self.take()
        return {} if norm is None else {"grad_norm": norm}

    def take(self) -> float | None:
        r"""
        The latest recorded norm as a number (a host read: call it at log steps only), or `None` when no step
        has recorded one. A sharded norm is made whole first, a collective: every rank calls this at the same
        log step.
        """
        norm = self.norm
        if norm is None:
            return None
        full_tensor = getattr(norm, "full_tensor", None)  # a DTensor (FSDP2): the norm of every shard
        if full_tensor is not None:
            norm = full_tensor()
            self.norm = norm
        return float(norm)
