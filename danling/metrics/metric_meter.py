"""Streaming metrics: a metric computed on each batch and averaged over batches, weighted by batch size.

Cheaper than [`Metrics`][danling.metrics.Metrics] (nothing is stored) and exact for metrics that are means over
samples (accuracy); use `Metrics` for AUROC, F1, correlations, which do not decompose over batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from torch import Tensor

from .average_meter import AverageMeter, AverageMeters
from .preprocesses import ArrayLike, NonFiniteInputError, bind_options, preprocess_flat, to_tensor, warn_non_finite
from .preprocesses import preprocess as preprocess_keeping_shape

MetricFunc = Callable[..., Any]
Preprocess = Callable[..., tuple[Tensor, Tensor]]
_DEFAULT: Any = object()  # "preprocess not given", distinct from `None` (skip preprocessing)


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
        preprocess: Called as `preprocess(input, target)` before the metric; `None` skips it. The default flattens
            the batch and drops `ignore_index=-100` and NaN targets, so they do not count towards the batch size.
        ignore_index: Passed to `preprocess` as `ignore_index=` when given (the reference library's option).
        ignore_nan: Passed to `preprocess` as `ignore_nan=` when given.

    Examples:
        >>> from danling.metrics.functional import accuracy
        >>> meter = MetricMeter(accuracy)
        >>> meter.update([0.9, 0.2, 0.7, 0.4], [1, 0, 0, 0])
        >>> meter.update([0.8, 0.6], [1, 1])
        >>> meter.val, round(meter.avg, 4)
        (1.0, 0.8333)
    """

    def __init__(
        self,
        metric: MetricFunc,
        preprocess: Preprocess | None = preprocess_flat,
        ignore_index: int | None = None,
        ignore_nan: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(metric):
            raise ValueError(f"metric must be callable, but got {type(metric).__name__}")
        self.metric = metric
        self.preprocess = bind_options(preprocess, ignore_index, ignore_nan)

    def update(self, input: ArrayLike, target: ArrayLike) -> None:  # type: ignore[override]
        r"""
        Score one batch and add it, weighted by its number of (kept) samples.

        Args:
            input: Predictions.
            target: Targets.
        """
        if self.preprocess is not None:
            try:
                input, target = self.preprocess(input, target)
            except NonFiniteInputError as error:  # NaN/inf predictions: a NaN score, a warning, no crash
                warn_non_finite(self, error)
                super().update(float("nan"), n=len(target))
                return
        input, target = to_tensor(input, "input"), to_tensor(target, "target")
        if target.shape[0] == 0:
            return
        super().update(_score(self.metric, input, target), n=target.shape[0])


class MetricMeters(AverageMeters):
    r"""
    Several [`MetricMeter`][danling.metrics.MetricMeter]s that share one preprocessing step.

    Args:
        *args: Mappings from name to metric function, metric functions (named by their `__name__`), or a
            [`Metrics`][danling.metrics.Metrics] whose functions (and, unless `preprocess` is given, preprocessing)
            to stream.
        preprocess: Called once per batch as `preprocess(input, target)`; `None` skips it. The default flattens the
            batch and drops `ignore_index=-100` and NaN targets.
        ignore_index: Passed to `preprocess` as `ignore_index=` when given (the reference library's option).
        ignore_nan: Passed to `preprocess` as `ignore_nan=` when given.
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
        self,
        *args: Mapping[str, MetricFunc] | MetricFunc | Any,
        preprocess: Preprocess | None | Any = _DEFAULT,
        ignore_index: int | None = None,
        ignore_nan: bool | None = None,
        **metrics: MetricFunc,
    ) -> None:
        from .metrics import Metrics  # metrics.py needs nothing from here; import late to keep the modules apart

        functions: dict[str, MetricFunc] = {}
        for arg in args:
            if isinstance(arg, Metrics):
                functions.update(arg.metrics)
                if preprocess is _DEFAULT and arg.preprocess is not preprocess_keeping_shape:
                    preprocess = arg.preprocess  # the default of `Metrics` keeps shapes; meters need flat batches
            elif isinstance(arg, Mapping):
                functions.update(arg)
            elif callable(arg):
                functions[getattr(arg, "__name__", repr(arg))] = arg
            else:
                raise ValueError(f"Expected a mapping, a metric function or a Metrics, but got {type(arg).__name__}")
        functions.update(metrics)
        preprocess = bind_options(preprocess_flat if preprocess is _DEFAULT else preprocess, ignore_index, ignore_nan)
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
            try:
                input, target = preprocess(input, target)
            except NonFiniteInputError as error:  # NaN/inf predictions: NaN scores, a warning, no crash
                warn_non_finite(self, error)
                for meter in self.values():
                    AverageMeter.update(meter, float("nan"), n=len(target))
                return
        for meter in self.values():
            meter.update(input, target)
