"""An exponential moving average of a model's weights that never reads a number on the host."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ExponentialMovingAverage(nn.Module):
    r"""
    Exponential moving average of a model: after every optimizer step,
    `ema = decay * ema + (1 - decay) * weight` for each parameter, fused over the parameters by torch's own
    `torch.optim.swa_utils.get_ema_multi_avg_fn`; buffers (e.g. batch-norm statistics) are copied.

    Unlike `torch.optim.swa_utils.AveragedModel`, which keeps its update count in a tensor and tests it on the
    host every step (a device sync), the decay is a Python float and nothing is read back, so the training loop
    stays asynchronous. Assign it to `runner.ema`: the runner moves it to the device, shards it like the model under
    `strategy: fsdp`, updates it after every optimizer step and saves it in checkpoints.

    Args:
        model: The model to average (copied; the copy starts from its current weights and needs no gradients).
        decay: Weight of the average in each update, in `[0, 1)`.

    Raises:
        ValueError: If `decay` is outside `[0, 1)`.

    Examples:
        >>> model = nn.Linear(2, 1)
        >>> ema = ExponentialMovingAverage(model, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(2.0)
        >>> before = ema.module.weight.clone()
        >>> ema.update_parameters(model)
        >>> torch.allclose(ema.module.weight, before + 1.0)
        True
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), but got {decay!r}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = float(decay)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        r"""Run the averaged model."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        r"""
        Move the average towards `model`'s current weights (no device sync).

        Args:
            model: The trained model (unwrapped: same parameter order as the copy).
        """
        averages = list(self.module.parameters())
        weights = [parameter.detach() for parameter in model.parameters()]
        if len(averages) != len(weights):
            raise ValueError(f"the EMA holds {len(averages)} parameters but the model has {len(weights)}")
        if averages:
            get_ema_multi_avg_fn(self.decay)(averages, weights, None)
        for average, buffer in zip(self.module.buffers(), model.buffers()):
            average.copy_(buffer)
