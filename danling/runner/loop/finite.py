"""
Non-finite numbers in training: by default a NaN or infinite loss stops the run
([`NonFiniteLossGuard`][danling.runner.loop.finite.NonFiniteLossGuard], no host-device synchronisation per step);
with `skip_nonfinite_steps: true` a step whose gradients are not finite is skipped instead
([`NonFiniteSteps`][danling.runner.loop.finite.NonFiniteSteps]).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed

from danling.utils import distributed as dist_utils

from .gradients import nonfinite_flag


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


class IgnoredLosses(NonFiniteLossGuard):
    r"""
    The loss guard of `skip_nonfinite_steps: true`: it watches nothing and never raises, since a step whose
    gradients are not finite is skipped instead ([`NonFiniteSteps`][danling.runner.loop.finite.NonFiniteSteps]).

    Examples:
        >>> guard = IgnoredLosses()
        >>> guard.watch(torch.tensor(float("nan")), 0)
        >>> guard.check(distributed=False)
    """

    __slots__ = ()

    def watch(self, loss: torch.Tensor, micro_step: int) -> None:
        r"""Nothing to keep."""

    def check(self, distributed: bool = False) -> None:
        r"""Nothing to check (on every rank alike: no collective)."""


def loss_guard_for(skip_nonfinite_steps: bool, guard: NonFiniteLossGuard) -> NonFiniteLossGuard:
    r"""
    `guard` when it suits `skip_nonfinite_steps`, else a new guard that does: an
    [`IgnoredLosses`][danling.runner.loop.finite.IgnoredLosses] when skipping, a
    [`NonFiniteLossGuard`][danling.runner.loop.finite.NonFiniteLossGuard] otherwise.

    Examples:
        >>> type(loss_guard_for(True, NonFiniteLossGuard())).__name__
        'IgnoredLosses'
        >>> guard = NonFiniteLossGuard()
        >>> loss_guard_for(False, guard) is guard
        True
    """
    if skip_nonfinite_steps is isinstance(guard, IgnoredLosses):
        return guard
    return IgnoredLosses() if skip_nonfinite_steps else NonFiniteLossGuard()


def nonfinite_steps(config: Any, distributed: bool, previous: NonFiniteSteps | None = None) -> NonFiniteSteps | None:
    r"""
    The [`NonFiniteSteps`][danling.runner.loop.finite.NonFiniteSteps] of `config.skip_nonfinite_steps` (with
    `config.max_nonfinite_steps`), or `None` when it is off (the default). `previous` is kept, with its count of
    consecutive skips, when its limit is the same; its epoch count starts again.

    Examples:
        >>> nonfinite_steps({}, distributed=False) is None
        True
        >>> nonfinite_steps({"skip_nonfinite_steps": True}, distributed=False).limit
        10
    """
    if config.get("skip_nonfinite_steps") is not True:
        return None
    limit = config.get("max_nonfinite_steps", 10)
    if previous is None or previous.limit != limit or previous.distributed != distributed:
        previous = NonFiniteSteps(limit, distributed)
    previous.skipped = 0
    return previous


class NonFiniteSteps:
    r"""
    `skip_nonfinite_steps: true`: an optimizer step whose gradients are not finite on some rank is skipped on
    every rank, and training stops only after `limit` skips in a row.

    [`finite`][danling.runner.loop.finite.NonFiniteSteps.finite] tests the gradients on the device, sums the flag
    across ranks when `distributed` (an `all_reduce` of one number) and reads it on the host: one read per
    optimizer step, the price of this mode. Under `fp16` the `GradScaler` tests the gradients itself, and the
    runner only [`count`][danling.runner.loop.finite.NonFiniteSteps.count]s the steps it skipped.

    Args:
        limit: Consecutive skipped steps that stop training (`max_nonfinite_steps`).
        distributed: Whether to agree on the flag across ranks.

    Attributes:
        skipped: Steps skipped in the current epoch (the epoch result's `skipped_steps`).
        consecutive: Steps skipped since the last step taken.

    Raises:
        ValueError: If `limit` is not a positive integer.

    Examples:
        >>> steps = NonFiniteSteps(limit=2)
        >>> steps.finite([torch.ones(2)]), steps.finite([torch.tensor([float("inf")])])
        (True, False)
        >>> steps.count(skipped=True, steps=7)
        >>> steps.count(skipped=True, steps=7)
        Traceback (most recent call last):
        FloatingPointError: gradients were not finite at 2 optimizer steps in a row (max_nonfinite_steps: 2), ...
    """

    __slots__ = ("consecutive", "distributed", "limit", "skipped")

    def __init__(self, limit: int = 10, distributed: bool = False) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"max_nonfinite_steps: got {limit!r}; accepted values are integers >= 1")
        self.limit = limit
        self.distributed = distributed
        self.skipped = 0
        self.consecutive = 0

    def finite(self, gradients: list[torch.Tensor]) -> bool:
        r"""
        Whether every gradient is finite on every rank (collective when `distributed`; one host read).
        """
        device = dist_utils.communication_device() if self.distributed else None
        if device is None:
            device = gradients[0].device if gradients else torch.device("cpu")
        flag = nonfinite_flag(gradients, device)
        if self.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item() == 0

    def count(self, skipped: bool, steps: int) -> None:
        r"""
        Count an optimizer step that was `skipped` or taken (after `steps` steps taken in the run).

        Raises:
            FloatingPointError: At the `limit`-th skipped step in a row, naming the step and what to try.
        """
        if not skipped:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise FloatingPointError(
                f"gradients were not finite at {self.consecutive} optimizer steps in a row (max_nonfinite_steps: "
                f"{self.limit}), the last at step {steps + 1} after {steps} steps taken; every one was skipped "
                "(skip_nonfinite_steps: true). Lower the learning rate, check the data and the loss for inf/NaN, "
                "or raise max_nonfinite_steps"
            )
