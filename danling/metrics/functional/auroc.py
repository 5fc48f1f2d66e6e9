"""Area under the ROC curve, exact (no thresholds), from one sort per column."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..preprocesses import ArrayLike
from ._utils import (
    Average,
    TaskLike,
    one_hot,
    prepare_classification,
    reduce_scores,
    sorted_tie_groups,
    tie_bounds,
    weight_tasks,
)

UNDEFINED_AUROC = 0.5
"""AUROC of a class whose targets hold a single value, as the reference library's backend (torcheval) reports it."""


def binary_auroc_columns(scores: Tensor, positives: Tensor, undefined: float = UNDEFINED_AUROC) -> Tensor:
    r"""
    ROC AUC of every column through the Mann-Whitney rank sum, ties counting one half.

    Args:
        scores: Scores of shape `(N, K)`.
        positives: Boolean (or 0/1) targets of shape `(N, K)`.
        undefined: AUC reported for a column with a single class (no positive or no negative).

    Returns:
        Float64 AUC per column, shape `(K,)`; `undefined` for a column with a single class.

    Examples:
        >>> binary_auroc_columns(torch.tensor([[0.1], [0.4], [0.35], [0.8]]), torch.tensor([[0], [0], [1], [1]]))
        tensor([0.7500], dtype=torch.float64)
    """
    if scores.shape[1] <= 64 and scores.shape[0] > 0:  # few columns: one 1-D pass each is the fastest
        columns = [_single_column_auroc(scores[:, i], positives[:, i], undefined) for i in range(scores.shape[1])]
        return torch.stack(columns)
    sorted_scores, order = scores.sort(dim=0)
    positive = positives.bool().gather(0, order).long()  # one-byte gather: several times faster than int64
    start, end = tie_bounds(sorted_scores)
    # doubled 1-based average ranks stay integral, so the rank sum is exact even for millions of samples
    rank_sum = ((start + end + 2) * positive).sum(dim=0).double() / 2
    num_pos = positive.sum(dim=0).double()
    num_neg = scores.shape[0] - num_pos
    auc = (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
    return torch.where((num_pos == 0) | (num_neg == 0), torch.full_like(auc, undefined), auc)


def _single_column_auroc(scores: Tensor, positives: Tensor, undefined: float) -> Tensor:
    # Mann-Whitney over tie groups (ascending): each negative counts the positives above its group, plus half of
    # the positives tied with it.
    _, cum_positives, group_positives, group_sizes = sorted_tie_groups(scores, positives, descending=False)
    num_pos = cum_positives[-1].double()
    num_neg = scores.numel() - num_pos
    group_negatives = (group_sizes - group_positives).double()
    above = num_pos - cum_positives.double() + group_positives.double() / 2
    auc = (group_negatives * above).sum() / (num_pos * num_neg)
    return torch.where((num_pos == 0) | (num_neg == 0), torch.full_like(auc, undefined), auc)


def auroc(
    input: ArrayLike,
    target: ArrayLike,
    task: TaskLike = None,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "macro",
    ignore_index: int | None = -100,
    preprocess: bool = True,
    undefined: float = UNDEFINED_AUROC,
    task_weights: Tensor | Sequence[float] | None = None,
) -> Tensor:
    r"""
    Area under the receiver operating characteristic curve (as `sklearn.metrics.roc_auc_score`).

    Multiclass scores are one-vs-rest per class; multilabel scores are per label. A class whose targets hold a
    single value (e.g. a class absent from the targets, or a binary task left with one class after
    `ignore_index`) has no defined AUC: like the reference library, it scores `undefined` (0.5) and counts in the
    macro average. Pass `undefined=float("nan")` to report it as `nan` instead and leave it out of the macro
    average (scikit-learn refuses such input).

    Args:
        input: Probabilities or logits: `(N,)` binary, `(N, num_classes)` multiclass, `(N, num_labels)` multilabel.
        target: Targets: `{0, 1}`, class indices, or a `{0, 1}` label matrix.
        task: `"binary"`, `"multiclass"` or `"multilabel"`; inferred from `num_classes`/`num_labels` when `None`.
        num_classes: Number of classes (multiclass).
        num_labels: Number of labels (multilabel).
        average: `"macro"`, `"weighted"` (by positives), `"micro"` (all pairs flattened) or `None` (per class).
        ignore_index: Target value to drop.
        preprocess: Whether to flatten, filter and activate the inputs first.
        task_weights: Multilabel only: one weight per label; the result is `per_label_scores @ task_weights`.
        undefined: Score of a class with a single target value; `nan` leaves it out of the macro average.

    Returns:
        A 0-d float64 tensor, or per-class scores when `average` is `None`.

    Examples:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        tensor(0.7500, dtype=torch.float64)
        >>> auroc([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], [0, 1, 1], num_classes=2)
        tensor(1., dtype=torch.float64)
        >>> scores = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
        >>> auroc(scores, [0, 1, 0, 1], num_classes=3)  # class 2 never occurs: it counts 0.5
        tensor(0.8333, dtype=torch.float64)
        >>> auroc(scores, [0, 1, 0, 1], num_classes=3, undefined=float("nan"))
        tensor(1., dtype=torch.float64)
    """
    task, input, target = prepare_classification(input, target, task, num_classes, num_labels, ignore_index, preprocess)
    if task_weights is not None and task != "multilabel":
        raise ValueError(f"task_weights weighs the labels of a multilabel task, but the task is {task!r}")
    if task == "binary":
        return binary_auroc_columns(input.reshape(-1, 1), target.reshape(-1, 1), undefined)[0]
    positives = one_hot(target, input.shape[-1]) if task == "multiclass" else target.bool()
    if task_weights is not None:  # the reference's weighting of labels; it takes precedence over `average`
        return weight_tasks(binary_auroc_columns(input, positives, undefined), task_weights)
    if average == "micro":
        return binary_auroc_columns(input.reshape(-1, 1), positives.reshape(-1, 1), undefined)[0]
    scores = binary_auroc_columns(input, positives, undefined)
    return reduce_scores(scores, average, support=positives.sum(dim=0))
