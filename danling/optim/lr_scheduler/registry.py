"""[`SCHEDULERS`][danling.optim.SCHEDULERS]: learning-rate schedulers by name.

Our [`LRScheduler`][danling.optim.LRScheduler] strategies are registered as ``cosine``, ``linear`` and
``constant``, and the textbook warmup schedules [`CosineWithWarmupLR`][danling.optim.CosineWithWarmupLR] and
[`LinearWithWarmupLR`][danling.optim.LinearWithWarmupLR] as ``cosine_with_warmup`` and ``linear_with_warmup``.
PyTorch's schedulers are registered under snake_case names (PyTorch's own ``ConstantLR`` and ``LinearLR`` as
``constant_lr`` and ``linear_lr``, so they do not shadow our strategies).
``ChainedScheduler`` is not registered: it takes schedulers, not an optimizer, as its first argument.

Examples:
    >>> import torch
    >>> from danling.optim import SCHEDULERS
    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> SCHEDULERS.build(optimizer, total_steps=100, type="Cosine")  # doctest: +NORMALIZE_WHITESPACE
    LRScheduler(strategy='cosine', method='percentile', total_steps=100, final_lr_ratio=0.001, final_lr=None,
                min_lr=1e-09, warmup_steps=5, cooldown_steps=20)
    >>> type(SCHEDULERS.build(optimizer, total_steps=100, type="step", step_size=10)).__name__
    'StepLR'
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable

from torch.optim import lr_scheduler as torch_lr_scheduler

from .._registry import Registry
from .lr_scheduler import STRATEGIES, LRScheduler
from .warmup import CosineWithWarmupLR, LinearWithWarmupLR

__all__ = ["SCHEDULERS", "SchedulerRegistry"]

# snake_case name -> class name in torch.optim.lr_scheduler; several names may share a class.
TORCH_SCHEDULERS: dict[str, str] = {
    "lambda": "LambdaLR",
    "multiplicative": "MultiplicativeLR",
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "multi_step": "MultiStepLR",
    "constant_lr": "ConstantLR",
    "linear_lr": "LinearLR",
    "exponential": "ExponentialLR",
    "sequential": "SequentialLR",
    "cosine_annealing": "CosineAnnealingLR",
    "reduce_on_plateau": "ReduceLROnPlateau",
    "cyclic": "CyclicLR",
    "cosine_annealing_warm_restarts": "CosineAnnealingWarmRestarts",
    "cosine_warm_restarts": "CosineAnnealingWarmRestarts",
    "one_cycle": "OneCycleLR",
    "polynomial": "PolynomialLR",
}


def _accepts(component: Callable, parameter: str) -> bool:
    try:
        parameters = inspect.signature(component).parameters
    except (TypeError, ValueError):  # no introspectable signature: pass everything through
        return True
    if parameter in parameters:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class SchedulerRegistry(Registry):
    """Case-insensitive registry of learning-rate schedulers.

    [`build`][chanfig.Registry.build] forwards ``total_steps`` only to schedulers that take it, so one call works
    for every registered name.
    """

    kind = "scheduler"

    @staticmethod
    def init(cls: Callable, *args: Any, **kwargs: Any) -> Any:
        """Construct `cls`, dropping ``total_steps`` if `cls` does not accept it.

        Args:
            cls: The scheduler class or factory.
            *args: Positional arguments, usually the optimizer.
            **kwargs: Keyword arguments.

        Returns:
            The scheduler.
        """
        if "total_steps" in kwargs and not _accepts(cls, "total_steps"):
            kwargs.pop("total_steps")
        return Registry.init(cls, *args, **kwargs)


SCHEDULERS = SchedulerRegistry()

for _strategy in STRATEGIES:
    SCHEDULERS.register(partial(LRScheduler, strategy=_strategy), _strategy)
SCHEDULERS.register(CosineWithWarmupLR, "cosine_with_warmup")
SCHEDULERS.register(LinearWithWarmupLR, "linear_with_warmup")

for _name, _class_name in TORCH_SCHEDULERS.items():
    _scheduler = getattr(torch_lr_scheduler, _class_name, None)
    if _scheduler is not None:  # keep older PyTorch releases importable
        SCHEDULERS.register(_scheduler, _name)
