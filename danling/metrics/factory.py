"""Ready-made [`Metrics`][danling.metrics.Metrics] for the common tasks, with the reference library's names.

Every factory preprocesses once (`ignore_index` and NaN targets dropped, logits activated) and then runs the metric
functions with `preprocess=False`. Extra keyword arguments add (or replace) metric functions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .functional import accuracy, auprc, auroc, f1_score, mcc, pearson, r2_score, rmse, spearman
from .metric_meter import MetricMeters
from .metrics import Metrics
from .preprocesses import preprocess_binary, preprocess_multiclass, preprocess_multilabel, preprocess_regression


def _classification_metrics(task: dict[str, Any], preprocess: Any, **kwargs: Any) -> Metrics:
    # The five classification metrics of the reference, sharing one preprocessing pass.
    task = {**task, "preprocess": False}
    return Metrics(
        auroc=partial(auroc, **task),
        auprc=partial(auprc, **task),
        acc=partial(accuracy, **task),
        mcc=partial(mcc, **task),
        f1=partial(f1_score, **task),
        preprocess=preprocess,
        **kwargs,
    )


def _streaming_meters(task: dict[str, Any], preprocess: Any, **kwargs: Any) -> MetricMeters:
    # `acc` and `f1`, which can be averaged batch by batch, sharing one preprocessing pass.
    task = {**task, "preprocess": False}
    return MetricMeters(
        acc=partial(accuracy, **task),
        f1=partial(f1_score, **task),
        preprocess=preprocess,
        **kwargs,
    )


def binary_metrics(ignore_index: int | None = -100, **kwargs: Any) -> Metrics:
    r"""
    `auroc`, `auprc`, `acc`, `mcc` and `f1` of a binary task.

    Examples:
        >>> metrics = binary_metrics()
        >>> metrics.update([0.9, 0.2, 0.7, 0.4], [1, 0, -100, 1])
        >>> list(metrics.average().keys())
        ['auroc', 'auprc', 'acc', 'mcc', 'f1']
    """
    preprocess = partial(preprocess_binary, ignore_index=ignore_index)
    return _classification_metrics({"task": "binary"}, preprocess, **kwargs)


def multiclass_metrics(num_classes: int, ignore_index: int | None = -100, **kwargs: Any) -> Metrics:
    r"""
    `auroc`, `auprc` (macro one-vs-rest), `acc`, `f1` (micro) and `mcc` of a multiclass task.

    Examples:
        >>> metrics = multiclass_metrics(num_classes=3)
        >>> metrics.update([[2.0, 0.1, 0.3], [0.2, 1.5, 0.1], [0.1, 0.2, 3.0]], [0, 1, 2])
        >>> metrics.average()["acc"]
        1.0
    """
    preprocess = partial(preprocess_multiclass, num_classes=num_classes, ignore_index=ignore_index)
    return _classification_metrics({"task": "multiclass", "num_classes": num_classes}, preprocess, **kwargs)


def multiclass_metric_meters(num_classes: int, ignore_index: int | None = -100, **kwargs: Any) -> MetricMeters:
    r"""
    Streaming `acc` and `f1` of a multiclass task, averaged over batches.

    Examples:
        >>> meters = multiclass_metric_meters(num_classes=2)
        >>> meters.update([[0.9, 0.1], [0.3, 0.7]], [0, 0])
        >>> meters.average()["acc"]
        0.5
    """
    preprocess = partial(preprocess_multiclass, num_classes=num_classes, ignore_index=ignore_index)
    return _streaming_meters({"task": "multiclass", "num_classes": num_classes}, preprocess, **kwargs)


def multilabel_metrics(num_labels: int, ignore_index: int | None = -100, **kwargs: Any) -> Metrics:
    r"""
    `auroc`, `auprc` (macro over labels), `acc` (subset accuracy), `mcc` and `f1` (micro) of a multilabel task.

    Examples:
        >>> metrics = multilabel_metrics(num_labels=2)
        >>> metrics.update([[0.9, 0.2], [0.1, 0.8]], [[1, 0], [0, 1]])
        >>> metrics.average()["acc"]
        1.0
    """
    preprocess = partial(preprocess_multilabel, num_labels=num_labels, ignore_index=ignore_index)
    return _classification_metrics({"task": "multilabel", "num_labels": num_labels}, preprocess, **kwargs)


def multilabel_metric_meters(num_labels: int, ignore_index: int | None = -100, **kwargs: Any) -> MetricMeters:
    r"""
    Streaming `acc` and `f1` of a multilabel task, averaged over batches.

    Examples:
        >>> meters = multilabel_metric_meters(num_labels=2)
        >>> meters.update([[0.9, 0.2], [0.1, 0.8]], [[1, 0], [1, 1]])
        >>> meters.average()["acc"]
        0.5
    """
    preprocess = partial(preprocess_multilabel, num_labels=num_labels, ignore_index=ignore_index)
    return _streaming_meters({"task": "multilabel", "num_labels": num_labels}, preprocess, **kwargs)


def regression_metrics(num_outputs: int = 1, ignore_nan: bool = True, **kwargs: Any) -> Metrics:
    r"""
    `pearson`, `spearman`, `r2` and `rmse` of a (multi-output) regression task, averaged over outputs.

    Examples:
        >>> metrics = regression_metrics()
        >>> metrics.update([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
        >>> metrics.average().dict()
        {'pearson': 1.0, 'spearman': 1.0, 'r2': 1.0, 'rmse': 0.0}
    """
    task = {"num_outputs": num_outputs, "preprocess": False}
    return Metrics(
        pearson=partial(pearson, **task),
        spearman=partial(spearman, **task),
        r2=partial(r2_score, **task),
        rmse=partial(rmse, **task),
        preprocess=partial(preprocess_regression, num_outputs=num_outputs, ignore_nan=ignore_nan),
        **kwargs,
    )
