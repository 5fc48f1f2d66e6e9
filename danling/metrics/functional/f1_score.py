"""F1 score: harmonic mean of precision and recall."""

from __future__ import annotations

import torch
from torch import Tensor

from ..preprocesses import ArrayLike
from ._utils import Average, TaskLike, prepare_classification, reduce_scores
from .confusion import predict_labels, stat_scores


def _f1_from_stats(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """F1 per class, 0 where a class has no positives and no predictions (scikit-learn's `zero_division=0`)."""
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp.double() / denominator.clamp(min=1), torch.zeros_like(tp.double()))


def f1_score(
    input: ArrayLike,
    target: ArrayLike,
    task: TaskLike = None,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "micro",
    threshold: float = 0.5,
    ignore_index: int | None = -100,
    preprocess: bool = True,
) -> Tensor:
    r"""
    F1 score (as `sklearn.metrics.f1_score` with `zero_division=0`).

    Binary tasks score the positive class. Multiclass and multilabel tasks average per-class scores:
    `"micro"` pools the counts, `"macro"` takes the mean (multiclass: over the classes present in the targets or
    predictions, as scikit-learn does without `labels`; multilabel: over all labels), `"weighted"` weights by
    support, `None` returns the per-class scores.

    Args:
        input: Probabilities or logits.
        target: Targets.
        task: `"binary"`, `"multiclass"` or `"multilabel"`; inferred from `num_classes`/`num_labels` when `None`.
        num_classes: Number of classes (multiclass).
        num_labels: Number of labels (multilabel).
        average: Averaging over classes, see above.
        threshold: Decision threshold for binary and multilabel probabilities.
        ignore_index: Target value to drop.
        preprocess: Whether to flatten, filter and activate the inputs first.

    Returns:
        A 0-d float64 tensor, or per-class scores when `average` is `None`.

    Examples:
        >>> f1_score([0.2, 0.7, 0.6, 0.9], [0, 1, 0, 1])
        tensor(0.8000, dtype=torch.float64)
    """
    task, input, target = prepare_classification(input, target, task, num_classes, num_labels, ignore_index, preprocess)
    pred = predict_labels(input, task, threshold)
    tp, fp, fn = stat_scores(pred, target, task, input.shape[-1] if task == "multiclass" else None)
    if task == "binary" or average == "micro":
        return _f1_from_stats(tp.sum(), fp.sum(), fn.sum())
    scores = _f1_from_stats(tp, fp, fn)
    if task == "multiclass":
        scores[(tp + fp + fn) == 0] = float("nan")  # absent from targets and predictions: not averaged
    return reduce_scores(scores, average, support=tp + fn)
