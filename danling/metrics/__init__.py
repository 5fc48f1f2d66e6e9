"""Meters and metrics: running averages, dataset-level metrics and their functional forms.

- [`AverageMeter`][danling.metrics.AverageMeter] / [`AverageMeters`][danling.metrics.AverageMeters]: running
  averages of scalars such as the loss; `update` never synchronises with the device.
- [`Metrics`][danling.metrics.Metrics]: metrics that need every prediction (AUROC, Spearman, ...), gathered
  across ranks on `value()` and `average()` (`local_value()` scores this rank's latest batch alone).
- [`MetricMeter`][danling.metrics.MetricMeter] / [`MetricMeters`][danling.metrics.MetricMeters]: per-batch metrics
  averaged over batches.
- [`functional`][danling.metrics.functional]: the metric functions themselves, in plain torch.
"""

from . import functional
from .average_meter import AverageMeter, AverageMeters
from .factory import (
    binary_metrics,
    multiclass_metric_meters,
    multiclass_metrics,
    multilabel_metric_meters,
    multilabel_metrics,
    regression_metrics,
)
from .functional import accuracy, auprc, auroc, f1_score, mcc, mse, pearson, r2_score, rmse, spearman
from .metric_meter import MetricMeter, MetricMeters
from .metrics import Metrics, MultiTaskMetricMeters, MultiTaskMetrics, ScoreMetrics
from .multi_task_average_meters import MultiTaskAverageMeters
from .preprocesses import (
    infer_task,
    preprocess,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    preprocess_regression,
)
from .registry import METRICS

__all__ = [
    "METRICS",
    "AverageMeter",
    "AverageMeters",
    "MetricMeter",
    "MetricMeters",
    "Metrics",
    "MultiTaskAverageMeters",
    "MultiTaskMetricMeters",
    "MultiTaskMetrics",
    "ScoreMetrics",
    "accuracy",
    "auprc",
    "auroc",
    "binary_metrics",
    "f1_score",
    "functional",
    "infer_task",
    "mcc",
    "mse",
    "multiclass_metric_meters",
    "multiclass_metrics",
    "multilabel_metric_meters",
    "multilabel_metrics",
    "pearson",
    "preprocess",
    "preprocess_binary",
    "preprocess_multiclass",
    "preprocess_multilabel",
    "preprocess_regression",
    "r2_score",
    "regression_metrics",
    "rmse",
    "spearman",
]
