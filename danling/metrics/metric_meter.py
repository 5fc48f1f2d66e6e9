"""Streaming metrics: a metric computed on each batch and averaged over batches, weighted by batch size.

Cheaper than [`Metrics`][danling.metrics.Metrics] (nothing is stored) and exact for metrics that are means over
samples (accuracy); use `Metrics` for AUROC, F1, correlations, which do not decompose over batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from torch import Tensor

from .average_meter import AverageMeter, AverageMeters
from .preprocesses import ArrayLike, to_tensor
from .preprocesses import preprocess as default_preprocess

MetricFunc = Callable[..., Any]
Preprocess = Callable[..., tuple[Tensor, Tensor]]


def _score(metric: MetricFunc, input: Tensor, target: Tensor) -> Any:
    score = metric(input, target)
    if isinstance(score, Tensor) and score.numel() != 1:
        raise ValueError(f"A metric meter needs a scalar metric, but got a tensor of shape {tuple(score.shape)}")
    return score


class MetricMeter(AverageMeter):
    r"""
    An [`AverageMeter`][danling.metrics.AverageMeter] fed by a metric function applied to each batch.

    Args:
        metric: Called as `metric(input, target)`; returns a number or a single-element tensor.
        preprocess: Called as `preprocess(input, target)` before the metric; `None` skips it. The default drops
            `ignore_index=-100` and NaN targets, so they do not count towards the batch size.

    Examples:
        >>> from danling.metrics.functional import accuracy
        >>> meter = MetricMeter(accuracy)
        >>> meter.update([0.9, 0.2, 0.7, 0.4], [1, 0, 0, 0])
        >>> meter.update([0.8, 0.6], [1, 1])
        >>> meter.val, round(meter.avg, 4)
        (1.0, 0.8333)
    """

    def __init__(self, metric: MetricFunc, preprocess: Preprocess | None = default_preprocess) -> None:
        super().__init__()
        if not callable(metric):
            raise ValueError(f"metric must be callable, but got {type(metric).__name__}")
        self.metric = metric
        self.preprocess = preprocess

    def update(self, input: ArrayLike, target: ArrayLike) -> None:  # type: ignore[override]
        r"""
        Score one batch and add it, weighted by its number of (kept) samples.

        Args:
            input: Predictions.
            target: Targets.
        """
        if self.preprocess is not None:
            input, target = self.preprocess(input, target)
        input, target = to_tensor(input, "input"), to_tensor(target, "target")
        if target.shape[0] == 0:
            return
        super().update(_score(self.metric, input, target), n=target.shape[0])


class MetricMeters(AverageMeters):
    r"""
    Several [`MetricMeter`][danling.metrics.MetricMeter]s that share one preprocessing step.

    Args:
        *args: Mappings from name to metric function.
        preprocess: Called once per batch as `preprocess(input, target)`; `None` skips it.
        **metrics: Metric functions by name.

    Examples:
        >>> from danling.metrics.functional import accuracy, f1_score
        >>> meters = MetricMeters(acc=accuracy, f1=f1_score)
        >>> meters.update([0.9, 0.2, 0.7, 0.4], [1, 0, 0, 0])
        >>> meters.update([0.8, 0.6], [1, 1])
        >>> {k: round(v, 4) for k, v in meters.average().items()}
        {'acc': 0.8333, 'f1': 0.7778}
    """

    def __init__(
        self, *args: Mapping[str, MetricFunc], preprocess: Preprocess | None = default_preprocess, **metrics: MetricFunc
    ) -> None:
        functions: dict[str, MetricFunc] = {}
        for mapping in args:
            functions.update(mapping)
        functions.update(metrics)
        # the shared preprocess runs once in `update`, so the meters themselves skip it
        super().__init__(**{name: MetricMeter(metric, preprocess=None) for name, metric in functions.items()})
        self.setattr("default_factory", None)  # a meter without a metric function makes no sense here
        self.setattr("preprocess", preprocess)

    def update(self, input: ArrayLike, target: ArrayLike) -> None:  # type: ignore[override]
        r"""
        Preprocess one batch once, then update every meter with it.

        Args:
            input: Predictions.
            target: Targets.
        """
        preprocess = self.getattr("preprocess", None)
        if preprocess is not None:
            input, target = preprocess(input, target)
        for meter in self.values():
            meter.update(input, target)
