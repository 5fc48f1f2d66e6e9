"""The total gradient norm of the optimizer steps that a log line reports, kept on the device until it is read.

[`GradientNorms`][danling.runner.loop.gradients.GradientNorms] decides, from the log interval and the accumulation
steps alone, which optimizer steps a log line will report, so the norm is computed at those steps only (or taken
from `clip_grad_norm_`, which computes it anyway), and read on the host at the log step itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["GradientNorms", "total_norm"]


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
