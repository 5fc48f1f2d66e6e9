"""Registry of the metric factories, so metrics can be built from a config section."""

from __future__ import annotations

from ..optim._registry import Registry
from .factory import binary_metrics, multiclass_metrics, multilabel_metrics, regression_metrics


class MetricRegistry(Registry):
    """Case-insensitive registry of metric factories.

    It works as [`OPTIMIZERS`][danling.optim.OPTIMIZERS] and [`SCHEDULERS`][danling.optim.SCHEDULERS] do:
    a config key that the factory does not accept raises
    [`UnexpectedArgumentError`][danling.optim._registry.UnexpectedArgumentError] (a [`TypeError`][TypeError]) before
    the factory runs, unless the factory takes ``**kwargs``.
    """

    kind = "metric"


METRICS = MetricRegistry(key="type", case_sensitive=False)
r"""
Metric factories by task name: `binary`, `multiclass`, `multilabel`, `regression`.

Examples:
    >>> METRICS.build(type="multiclass", num_classes=3)
    Metrics('auroc', 'auprc', 'acc', 'mcc', 'f1')
"""
METRICS.register(binary_metrics, "binary")
METRICS.register(multiclass_metrics, "multiclass")
METRICS.register(multilabel_metrics, "multilabel")
METRICS.register(regression_metrics, "regression")
