"""Registry of the metric factories, so metrics can be built from a config section."""

from __future__ import annotations

from chanfig import Registry

from .factory import binary_metrics, multiclass_metrics, multilabel_metrics, regression_metrics

METRICS = Registry(key="type", case_sensitive=False)
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
