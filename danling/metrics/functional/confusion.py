"""Confusion matrices and per-class true/false positive counts, built with `bincount`."""

from __future__ import annotations

import torch
from torch import Tensor


def predict_labels(input: Tensor, task: str, threshold: float = 0.5) -> Tensor:
    r"""
    Hard predictions: thresholded probabilities (binary, multilabel) or the arg-max class (multiclass).

    Examples:
        >>> predict_labels(torch.tensor([0.2, 0.5, 0.9]), "binary")
        tensor([0, 1, 1])
    """
    if task == "multiclass":
        return input.argmax(dim=-1)
    return (input >= threshold).long()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    r"""
    Confusion matrix with true classes on rows and predicted classes on columns.

    Args:
        pred: Predicted class indices of shape `(N,)`.
        target: True class indices of shape `(N,)`.
        num_classes: Number of classes.

    Returns:
        Int64 tensor of shape `(num_classes, num_classes)`.

    Examples:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def stat_scores(pred: Tensor, target: Tensor, task: str, num_classes: int | None = None) -> tuple[Tensor, ...]:
    r"""
    Per-class true positives, false positives and false negatives.

    Binary tasks give one class (the positive one); multiclass tasks one per class; multilabel tasks one per label.

    Args:
        pred: Hard predictions from [`predict_labels`][danling.metrics.functional.confusion.predict_labels].
        target: Targets.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass).

    Returns:
        `(tp, fp, fn)`, int64 tensors of shape `(K,)`.

    Examples:
        >>> stat_scores(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1]), "binary")
        (tensor([1]), tensor([1]), tensor([1]))
    """
    if task == "multiclass":
        if num_classes is None:
            raise ValueError("num_classes is required for a multiclass task")
        matrix = confusion_matrix(pred, target, num_classes)
        tp = matrix.diagonal()
        return tp, matrix.sum(dim=0) - tp, matrix.sum(dim=1) - tp
    pred = pred.reshape(pred.shape[0], -1).bool()
    truth = target.reshape(target.shape[0], -1).bool()
    tp = (pred & truth).sum(dim=0)
    return tp, (pred & ~truth).sum(dim=0), (~pred & truth).sum(dim=0)
