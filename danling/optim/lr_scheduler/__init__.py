"""Learning-rate schedulers: [`LRScheduler`][danling.optim.LRScheduler] and the
[`SCHEDULERS`][danling.optim.SCHEDULERS] registry."""

from .lr_scheduler import LRScheduler
from .registry import SCHEDULERS

__all__ = ["SCHEDULERS", "LRScheduler"]
