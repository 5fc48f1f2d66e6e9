"""Matthews correlation coefficient."""

from __future__ import annotations

import torch
from torch import Tensor

from ..preprocesses import ArrayLike
from ._utils import TaskLike, prepare_classification
from .confusion import confusion_matrix, predict_labels


def mcc_from_confusion(matrix: Tensor) -> Tensor:
    r"""
    Matthews correlation coefficient of a (multiclass) confusion matrix; 0 when undefined, as in scikit-learn.

    Examples:
        >>> mcc_from_confusion(torch.tensor([[2, 0], [0, 2]]))
        tensor(1., dtype=torch.float64)
    """
    matrix = matrix.double()
    true_counts, pred_counts = matrix.sum(dim=1), matrix.sum(dim=0)
    correct, total = matrix.trace(), matrix.sum()
    covariance = correct * total - true_counts @ pred_counts
    denominator = ((total**2 - pred_counts @ pred_counts) * (total**2 - true_counts @ true_counts)).sqrt()
    if denominator == 0:
        return torch.zeros((), dtype=torch.float64, device=matrix.device)
    return covariance / denominator


def mcc(
    input: ArrayLike,
    target: ArrayLike,
    task: TaskLike = None,
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    ignore_index: int | None = -100,
    preprocess: bool = True,
) -> Tensor:
    r"""
    Matthews correlation coefficient (as `sklearn.metrics.matthews_corrcoef`).

    Multilabel predictions are scored as one binary problem over all (sample, label) pairs.

    Args:
        input: Probabilities or logits.
        target: Targets.
        task: `"binary"`, `"multiclass"` or `"multilabel"`; inferred from `num_classes`/`num_labels` when `None`.
        num_classes: Number of classes (multiclass).
        num_labels: Number of labels (multilabel).
        threshold: Decision threshold for binary and multilabel probabilities.
        ignore_index: Target value to drop.
        preprocess: Whether to flatten, filter and activate the inputs first.

    Returns:
        A 0-d float64 tensor in `[-1, 1]`.

    Examples:
        >>> mcc([0.2, 0.7, 0.6, 0.9], [0, 1, 0, 1])
        tensor(0.5774, dtype=torch.float64)
    """
    task, input, target = prepare_classification(input, target, task, num_classes, num_labels, ignore_index, preprocess)
    pred = predict_labels(input, task, threshold)
    size = input.shape[-1] if task == "multiclass" else 2
    return mcc_from_confusion(confusion_matrix(pred.reshape(-1), target.reshape(-1), size))
