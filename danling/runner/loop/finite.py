"""Watching the training loss for NaN and infinity without a host-device synchronisation per step."""

from __future__ import annotations

import math

import torch
import torch.distributed

from danling.utils import distributed as dist_utils


class NonFiniteLossGuard:
    r"""
    Remembers, on the loss's device, the first micro-step of an epoch whose loss was NaN or infinite.

    [`watch`][danling.runner.loop.finite.NonFiniteLossGuard.watch] only keeps a reference to the detached loss (no
    device work, no synchronisation); every `FOLD` losses, and at each
    [`check`][danling.runner.loop.finite.NonFiniteLossGuard.check], they are tested together in a few device
    operations. `check` reads the result (one synchronisation); the runner calls it at log steps, at the end of
    an epoch and before a checkpoint is written.

    Examples:
        >>> guard = NonFiniteLossGuard()
        >>> guard.start("train", epoch=0, steps=10, accum_steps=1)
        >>> guard.watch(torch.tensor(0.5), 0)
        >>> guard.watch(torch.tensor(float("nan")), 1)
        >>> guard.check()
        Traceback (most recent call last):
        FloatingPointError: non-finite training loss on split 'train' at epoch 0, step 12 (batch 1 of the epoch); ...
    """

    FOLD = 256  # losses kept before they are tested on the device (bounds the memory the references take)

    __slots__ = ("accum_steps", "epoch", "first_bad", "pending", "pending_start", "split", "steps")

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.pending_start = 0
        self.first_bad: torch.Tensor | None = None
        self.split: str | None = None
        self.epoch = 0
        self.steps = 0
        self.accum_steps = 1

    def start(self, split: str, epoch: int, steps: int, accum_steps: int) -> None:
        r"""Start watching an epoch of `split` that begins after optimizer step `steps`."""
        self.pending, self.pending_start, self.first_bad = [], 0, None
        self.split, self.epoch, self.steps, self.accum_steps = split, epoch, steps, accum_steps

    def watch(self, loss: torch.Tensor, micro_step: int) -> None:
        r"""Keep `loss` (of micro-step `micro_step` of the epoch) to test later; no device work."""
        pending = self.pending
        if not pending:
            self.pending_start = micro_step
        pending.append(loss.detach() if loss.dim() == 0 else loss.detach().sum())
        if len(pending) >= self.FOLD:
            self.fold()

    def fold(self) -> None:
        r"""Test the kept losses on the device and merge the first bad micro-step into `first_bad`."""
        if not self.pending:
            return
        bad = ~torch.isfinite(torch.stack(self.pending))
        first = torch.where(bad.any(), bad.to(torch.uint8).argmax() + self.pending_start, -1)
        self.first_bad = first if self.first_bad is None else torch.where(self.first_bad >= 0, self.first_bad, first)
        self.pending = []

    def _pending_finite(self) -> bool:
        # The common case in one reduction: NaN and infinity propagate through a sum, and float64 cannot overflow
        # on a sum of `FOLD` finite losses. Only a non-finite sum needs `fold` to find the first bad micro-step.
        return math.isfinite(torch.stack(self.pending).sum(dtype=torch.float64).item())

    def check(self, distributed: bool = False) -> None:
        r"""
        Raise if a watched loss was not finite (on any rank when `distributed`; then collective).

        Raises:
            FloatingPointError: Naming the split, the epoch and the optimizer step.
        """
        if not distributed and self.first_bad is None and self.pending and self._pending_finite():
            self.pending = []
            return
        self.fold()
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
