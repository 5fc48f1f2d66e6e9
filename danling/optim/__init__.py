"""Optimizers and learning-rate schedulers, buildable by name from config sections.

Examples:
    >>> import torch
    >>> from danling.optim import OPTIMIZERS, SCHEDULERS
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = OPTIMIZERS.build(params=model.parameters(), **{"type": "adamw", "lr": 1e-3})
    >>> scheduler = SCHEDULERS.build(optimizer, total_steps=100, **{"type": "cosine"})
    >>> type(optimizer).__name__, type(scheduler).__name__
    ('AdamW', 'LRScheduler')
"""

from . import lr_scheduler, registry
from .lr_scheduler import (
    SCHEDULERS,
    CosineWithWarmupLR,
    LinearWithWarmupLR,
    LRScheduler,
    WarmupDecayLR,
    planned_lrs,
)
from .registry import OPTIMIZERS

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "CosineWithWarmupLR",
    "LRScheduler",
    "LinearWithWarmupLR",
    "WarmupDecayLR",
    "lr_scheduler",
    "planned_lrs",
    "registry",
]
