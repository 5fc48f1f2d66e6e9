"""Watching the training loss for NaN and infinity without a host-device synchronisation per step."""

from __future__ import annotations

import torch
import torch.distributed

from danling.utils import distributed as dist_utils


class NonFiniteLossGuard:
    r"""
    Remembers, on the loss's device, the first micro-step of an epoch whose loss was NaN or infinite.

    [`watch`][danling.runner.finite.NonFiniteLossGuard.watch] is a couple of tiny device operations and never
    synchronises; [`check`][danling.runner.finite.NonFiniteLossGuard.check] reads the flag (one synchronisation)
    and is called at log steps, at the end of an epoch and before a checkpoint is written.

    Examples:
        >>> guard = NonFiniteLossGuard()
        >>> guard.start("train", epoch=0, steps=10, accum_steps=1)
        >>> guard.watch(torch.tensor(0.5), 0)
        >>> guard.watch(torch.tensor(float("nan")), 1)
        >>> guard.check()
        Traceback (most recent call last):
        FloatingPointError: non-finite training loss on split 'train' at epoch 0, step 12 (batch 1 of the epoch); ...
    """

    __slots__ = ("accum_steps", "epoch", "first_bad", "split", "steps")

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None
        self.split: str | None = None
        self.epoch = 0
        self.steps = 0
        self.accum_steps = 1

    def start(self, split: str, epoch: int, steps: int, accum_steps: int) -> None:
        r"""Start watching an epoch of `split` that begins after optimizer step `steps`."""
        self.first_bad = None
        self.split, self.epoch, self.steps, self.accum_steps = split, epoch, steps, accum_steps

    def watch(self, loss: torch.Tensor, micro_step: int) -> None:
        r"""Note whether `loss` (of micro-step `micro_step` of the epoch) is finite; no synchronisation."""
        bad = ~torch.isfinite(loss.detach())
        if bad.dim():
            bad = bad.any()
        first = self.first_bad
        if first is None:
            self.first_bad = torch.where(bad, micro_step, -1)
        else:
            self.first_bad = torch.where(bad & (first < 0), micro_step, first)

    def check(self, distributed: bool = False) -> None:
        r"""
        Raise if a watched loss was not finite (on any rank when `distributed`; then collective).

        Raises:
            FloatingPointError: Naming the split, the epoch and the optimizer step.
        """
        first = self.first_bad
        if first is None and not distributed:
            return
        value = torch.tensor(-1) if first is None else first.detach().reshape(())
        if distributed:
            value = value.to(dist_utils.communication_device(), torch.int64, copy=True)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        micro_step = int(value)
        if micro_step < 0:
            return
        step = self.steps + micro_step // self.accum_steps + 1
        raise FloatingPointError(
            f"non-finite training loss on split {self.split!r} at epoch {self.epoch}, step {step} "
            f"(batch {micro_step} of the epoch); training stopped before any checkpoint was written with it"
        )
