"""Learning-rate schedulers: [`LRScheduler`][danling.optim.LRScheduler], the textbook warmup schedules
[`CosineWithWarmupLR`][danling.optim.CosineWithWarmupLR] and [`LinearWithWarmupLR`][danling.optim.LinearWithWarmupLR],
the [`SCHEDULERS`][danling.optim.SCHEDULERS] registry and [`planned_lrs`][danling.optim.lr_scheduler.planned_lrs],
which previews a schedule."""

from .lr_scheduler import LRScheduler
from .preview import planned_lrs
from .registry import SCHEDULERS
from .warmup import CosineWithWarmupLR, LinearWithWarmupLR, WarmupDecayLR

__all__ = ["SCHEDULERS", "CosineWithWarmupLR", "LRScheduler", "LinearWithWarmupLR", "WarmupDecayLR", "planned_lrs"]
