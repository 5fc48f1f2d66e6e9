r"""Textbook schedules: a linear warmup, then a cosine or linear decay.

For optimizer step ``s`` (``0`` for the first step; ``s`` is the scheduler's ``last_epoch``), warmup ``W``,
total ``T`` and floor ratio ``r``, each param group's learning rate is:

```text
lr(s) = base * s / W                        if s < W
lr(s) = base * (r + (1 - r) * f(p))         if s >= W, where p = min((s - W) / (T - W), 1)
```

with ``f(p) = (1 + cos(pi * p)) / 2`` for [`CosineWithWarmupLR`][danling.optim.CosineWithWarmupLR] and
``f(p) = 1 - p`` for [`LinearWithWarmupLR`][danling.optim.LinearWithWarmupLR]: the lr rises from ``0`` to the base lr
over the first ``W`` steps, then falls to ``base * r`` (``0`` by default) at step ``T`` and stays there. These are
the schedules of Hugging Face's ``get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup`` with a
minimum-lr ratio.
"""

from __future__ import annotations

from math import cos, isfinite, pi
from numbers import Real
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_lr_scheduler

__all__ = ["CosineWithWarmupLR", "LinearWithWarmupLR", "WarmupDecayLR"]


def _check_steps(value: Any, what: str, low: int, high: int | None = None, high_name: str = "") -> int:
    """Return `value` as an int, or raise if it is not a whole number in ``[low, high]``."""
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high_name}{high}]"
    whole = isinstance(value, Real) and not isinstance(value, bool) and isfinite(value) and value == int(value)
    if not whole or value < low or (high is not None and value > high):
        raise ValueError(f"`{what}` must be {expected}, but got {value!r}")
    return int(value)


def _check_ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f"`final_lr_ratio` must be a number in [0, 1], but got {value!r}")
    return float(value)


def _check_schedule(total_steps: Any, warmup_steps: Any, final_lr_ratio: Any) -> tuple[int, int, float]:
    """Validate the settings of a warmup-decay schedule and return them normalised."""
    total_steps = _check_steps(total_steps, "total_steps", 1)
    warmup_steps = _check_steps(warmup_steps, "warmup_steps", 0, total_steps, "total_steps=")
    return total_steps, warmup_steps, _check_ratio(final_lr_ratio)


class WarmupDecayLR(torch_lr_scheduler.LRScheduler):
    r"""Linear warmup from ``0`` to the base lr, then a decay to ``base * final_lr_ratio`` at `total_steps`.

    Subclasses define the shape of the decay in [`decay`][danling.optim.WarmupDecayLR.decay]. The lr is a closed
    form of the step: the lr used for optimizer step ``s`` (``0``-based, before the ``s``-th
    [`step()`][torch.optim.lr_scheduler.LRScheduler.step]) is [`lr_at(base_lr, s)`][danling.optim.WarmupDecayLR.lr_at],
    that is ``base * s / W`` while ``s < W``, then ``base * (r + (1 - r) * decay(p))`` with
    ``p = min((s - W) / (T - W), 1)`` (``W`` = `warmup_steps`, ``T`` = `total_steps`, ``r`` = `final_lr_ratio`).
    Step it once per optimizer step. The state dict holds plain numbers only, so checkpoints load with
    ``torch.load(..., weights_only=True)``.

    Args:
        optimizer: Wrapped optimizer.
        total_steps: Step at which the decay reaches its floor; a positive integer.
        warmup_steps: Number of warmup steps, in ``[0, total_steps]``; ``0`` disables warmup.
        final_lr_ratio: The floor, as a fraction of each group's base lr, in ``[0, 1]``.
        last_epoch: Index of the last step, as in PyTorch schedulers; ``-1`` starts a new schedule.

    Raises:
        ValueError: If an argument is outside its range; the message names the value and the range.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        final_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps, self.warmup_steps, self.final_lr_ratio = _check_schedule(
            total_steps, warmup_steps, final_lr_ratio
        )
        super().__init__(optimizer, last_epoch)

    def decay(self, progress: float) -> float:
        """Map decay progress in ``[0, 1]`` to the fraction of the way from the floor to the base lr.

        Args:
            progress: ``0`` at the end of warmup, ``1`` at `total_steps`.

        Returns:
            ``1`` at progress ``0`` (the base lr), ``0`` at progress ``1`` (the floor).
        """
        raise NotImplementedError

    def lr_at(self, base_lr: float | Tensor, step: int) -> float:
        """Compute the lr of a param group with base lr `base_lr` for optimizer step `step`; changes no state.

        Args:
            base_lr: The param group's initial learning rate.
            step: Optimizer step, ``0`` being the first; steps past `total_steps` keep the floor.

        Returns:
            The learning rate.
        """
        base_lr = float(base_lr)
        step = max(int(step), 0)
        if step < self.warmup_steps:
            return base_lr * step / self.warmup_steps
        if step >= self.total_steps:
            progress = 1.0
        else:
            progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        ratio = self.final_lr_ratio
        return base_lr * (ratio + (1.0 - ratio) * self.decay(progress))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Compute the learning rate of every param group at the current step (``last_epoch``).

        Returns:
            One learning rate per param group of the wrapped optimizer.
        """
        return [self.lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the scheduler's state, as returned by [`state_dict()`][torch.optim.lr_scheduler.LRScheduler.state_dict].

        Args:
            state_dict: Scheduler state.

        Raises:
            ValueError: If the state holds settings outside their ranges.
        """
        _check_schedule(
            state_dict.get("total_steps", self.total_steps),
            state_dict.get("warmup_steps", self.warmup_steps),
            state_dict.get("final_lr_ratio", self.final_lr_ratio),
        )
        super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"final_lr_ratio={self.final_lr_ratio})"
        )


class CosineWithWarmupLR(WarmupDecayLR):
    r"""Linear warmup, then half a cosine from the base lr down to ``base * final_lr_ratio`` at `total_steps`.

    Registered in [`SCHEDULERS`][danling.optim.SCHEDULERS] as ``cosine_with_warmup``. See
    [`WarmupDecayLR`][danling.optim.WarmupDecayLR] for the arguments and the step convention.

    Examples:
        >>> import torch
        >>> from danling.optim import CosineWithWarmupLR
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> scheduler = CosineWithWarmupLR(optimizer, total_steps=6, warmup_steps=2)
        >>> lrs = []
        >>> for _ in range(8):
        ...     lrs.append(round(scheduler.get_last_lr()[0], 4))
        ...     optimizer.step()
        ...     scheduler.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """

    def decay(self, progress: float) -> float:
        """Half a cosine period: ``(1 + cos(pi * progress)) / 2``."""
        return 0.5 * (1.0 + cos(pi * progress))


class LinearWithWarmupLR(WarmupDecayLR):
    r"""Linear warmup, then a straight line from the base lr down to ``base * final_lr_ratio`` at `total_steps`.

    Registered in [`SCHEDULERS`][danling.optim.SCHEDULERS] as ``linear_with_warmup``. See
    [`WarmupDecayLR`][danling.optim.WarmupDecayLR] for the arguments and the step convention.

    Examples:
        >>> import torch
        >>> from danling.optim import LinearWithWarmupLR
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> scheduler = LinearWithWarmupLR(optimizer, total_steps=6, warmup_steps=2, final_lr_ratio=0.2)
        >>> [round(scheduler.lr_at(1.0, step), 4) for step in range(8)]
        [0.0, 0.5, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2]
    """

    def decay(self, progress: float) -> float:
        """A straight line: ``1 - progress``."""
        return 1.0 - progress
