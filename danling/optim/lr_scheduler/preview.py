"""Preview a learning-rate schedule without touching the scheduler or the optimizer that run it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from math import floor, isfinite
from numbers import Real
from typing import Any

from torch.optim import lr_scheduler as torch_lr_scheduler

from .lr_scheduler import LRScheduler
from .warmup import WarmupDecayLR

__all__ = ["DEFAULT_FRACTIONS", "planned_lrs"]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Fractions of the run that [`planned_lrs`][danling.optim.lr_scheduler.planned_lrs] reports by default."""

# PyTorch schedulers whose lr at a step is a closed form of the step, so that `step(epoch)` jumps straight to it
# (through `_get_closed_form_lr` where the class has one, else through `get_lr`, which reads only `last_epoch`).
_JUMPABLE = tuple(
    getattr(torch_lr_scheduler, name)
    for name in (
        "LambdaLR",
        "StepLR",
        "MultiStepLR",
        "ConstantLR",
        "LinearLR",
        "ExponentialLR",
        "CosineAnnealingLR",
        "PolynomialLR",
        "CyclicLR",
        "OneCycleLR",
        "CosineAnnealingWarmRestarts",
    )
    if hasattr(torch_lr_scheduler, name)
)


def planned_lrs(
    scheduler: Any, total_steps: int, fractions: Iterable[float] = DEFAULT_FRACTIONS
) -> list[tuple[float, int, float]] | None:
    """Preview the learning rate of the first param group at some fractions of a run.

    For each fraction ``f`` the step is ``round(f * total_steps)`` and the lr is the one in effect for that optimizer
    step, counted from the start of the schedule (``0`` for the first step, which is the scheduler's ``last_epoch``
    after that many [`step()`][torch.optim.lr_scheduler.LRScheduler.step] calls). Neither `scheduler` nor its
    optimizer is changed:

    - our [`LRScheduler`][danling.optim.LRScheduler] and [`WarmupDecayLR`][danling.optim.WarmupDecayLR] subclasses
      are closed forms of the step, computed directly;
    - PyTorch schedulers whose lr is a closed form of the step (``StepLR``, ``MultiStepLR``, ``ExponentialLR``,
      ``CosineAnnealingLR``, ``LambdaLR``, ``OneCycleLR``, ``CyclicLR``, ...) are evaluated at each step on a copy;
    - any other scheduler is replayed, on a copy, from where it is now up to the last step asked for (about 3 s per
      million steps): steps it has already passed are left out of the result, since they cannot be replayed.

    The copies never hold the model's parameters or the optimizer's state: the scheduler is copied with a stand-in
    optimizer that holds copies of the param groups' settings only. Steps a scheduler refuses (``OneCycleLR`` past
    its own ``total_steps``) are left out. ``LambdaLR``'s functions are called, but not copied.

    Args:
        scheduler: A learning-rate scheduler with an ``optimizer`` attribute.
        total_steps: Number of optimizer steps of the run, a non-negative integer.
        fractions: Fractions of the run, each in ``[0, 1]``.

    Returns:
        ``(fraction, step, lr)`` for each fraction, in the order given; `None` for ``ReduceLROnPlateau`` (its lr
        depends on the metrics it is fed, so it has no schedule) and for a scheduler that cannot be copied.

    Raises:
        ValueError: If `total_steps` or a fraction is out of range.

    Examples:
        >>> import torch
        >>> from danling.optim import CosineWithWarmupLR, planned_lrs
        >>> def make_optimizer():
        ...     return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> scheduler = CosineWithWarmupLR(make_optimizer(), total_steps=1000, warmup_steps=100)
        >>> [(f, step, round(lr, 4)) for f, step, lr in planned_lrs(scheduler, 1000)]
        [(0.0, 0, 0.0), (0.25, 250, 0.0933), (0.5, 500, 0.0587), (0.75, 750, 0.0179), (1.0, 1000, 0.0)]
        >>> step_lr = torch.optim.lr_scheduler.StepLR(make_optimizer(), step_size=400, gamma=0.5)
        >>> [lr for _, _, lr in planned_lrs(step_lr, 1000, fractions=(0.0, 0.5, 1.0))]
        [0.1, 0.05, 0.025]
        >>> step_lr.last_epoch, step_lr.optimizer.param_groups[0]["lr"]
        (0, 0.1)
    """
    planned = _planned_steps(total_steps, fractions)
    if isinstance(scheduler, torch_lr_scheduler.ReduceLROnPlateau):
        return None
    lr_at = _closed_form(scheduler)
    if lr_at is not None:
        return [(fraction, step, lr_at(step)) for fraction, step in planned]
    lrs = _lrs_of_copy(scheduler, sorted({step for _, step in planned}))
    if lrs is None:
        return None
    return [(fraction, step, lrs[step]) for fraction, step in planned if step in lrs]


def _planned_steps(total_steps: Any, fractions: Iterable[float]) -> list[tuple[float, int]]:
    """Pair each fraction with its step, ``round(fraction * total_steps)`` (halves rounded up)."""
    whole = isinstance(total_steps, Real) and not isinstance(total_steps, bool) and isfinite(total_steps)
    if not whole or total_steps < 0 or total_steps != int(total_steps):
        raise ValueError(f"`total_steps` must be a non-negative integer, but got {total_steps!r}")
    planned = []
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
            raise ValueError(f"every fraction must be a number in [0, 1], but got {fraction!r}")
        planned.append((fraction, int(floor(fraction * total_steps + 0.5))))
    return planned


def _closed_form(scheduler: Any) -> Callable[[int], float] | None:
    """The lr of the first param group as a function of the step, for our schedulers that do not override it."""
    get_lr = getattr(type(scheduler), "get_lr", None)
    if isinstance(scheduler, WarmupDecayLR) and get_lr is WarmupDecayLR.get_lr:
        base_lr = float(scheduler.base_lrs[0])
        return lambda step: scheduler.lr_at(base_lr, step)
    if isinstance(scheduler, LRScheduler) and get_lr is LRScheduler.get_lr:
        base_lr = float(scheduler.base_lrs[0])
        return lambda step: scheduler.lr_at(base_lr, step + 1)  # LRScheduler counts its steps from 1
    return None


def _lrs_of_copy(scheduler: Any, steps: list[int]) -> dict[int, float] | None:
    """Step a copy of `scheduler` to each of `steps` (sorted) and read the lr of its first param group."""
    optimizer = getattr(scheduler, "optimizer", None)
    position = _position(scheduler)
    if optimizer is None or position is None:
        return None
    try:
        stand_in = _StandInOptimizer(optimizer)
        copied = copy.deepcopy(scheduler, {id(optimizer): stand_in})
    except (TypeError, RuntimeError, copy.Error):  # e.g. it holds a lock, or a tensor that is not a leaf
        return None
    lrs: dict[int, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step(epoch) is deprecated; it is what evaluates a closed form
        for step in steps:
            if type(scheduler) in _JUMPABLE:
                try:
                    copied.step(step)
                except ValueError:  # OneCycleLR past its total_steps
                    continue
            elif step < position:
                continue
            else:
                try:
                    for _ in range(step - position):
                        copied.step()
                except ValueError:
                    break
                position = step
            lrs[step] = float(stand_in.param_groups[0]["lr"])
    return lrs


def _position(scheduler: Any) -> int | None:
    """The scheduler's ``last_epoch``; for ``ChainedScheduler``, which has none, that of its first scheduler."""
    position = getattr(scheduler, "last_epoch", None)
    if position is None:
        schedulers = getattr(scheduler, "_schedulers", None)
        if schedulers:
            position = getattr(schedulers[0], "last_epoch", None)
    return None if position is None else int(position)


class _StandInOptimizer:
    """What a scheduler reads of its optimizer, copied: the param groups' settings, without parameters or state."""

    def __init__(self, optimizer: Any) -> None:
        self.defaults = copy.deepcopy(getattr(optimizer, "defaults", {}))
        self.param_groups = [
            {**copy.deepcopy({key: value for key, value in group.items() if key != "params"}), "params": []}
            for group in optimizer.param_groups
        ]
        self.state: dict = {}

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: the stand-in has no parameters (the scheduler's warnings about it are silenced)."""
