"""Shared building blocks of the functional metrics: task dispatch, tie-aware ranking and averaging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ..preprocesses import (
    ArrayLike,
    Task,
    infer_task,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    to_tensor,
)

Average = Optional[Literal["macro", "micro", "weighted", "none"]]
TaskLike = Union[Task, str, None]


def resolve_task(task: TaskLike, num_classes: int | None, num_labels: int | None) -> str:
    r"""
    Task named by `task`, else inferred from `num_classes` / `num_labels`.

    Examples:
        >>> resolve_task(None, 3, None)
        'multiclass'
    """
    if task is None:
        return infer_task(num_classes, num_labels)
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"task must be 'binary', 'multiclass' or 'multilabel', but got {task!r}")
    return task


def prepare_classification(
    input: ArrayLike,
    target: ArrayLike,
    task: TaskLike,
    num_classes: int | None,
    num_labels: int | None,
    ignore_index: int | None,
    preprocess: bool,
) -> tuple[str, Tensor, Tensor]:
    r"""
    Resolve the task and, when `preprocess`, run the matching `preprocess_<task>`.

    With `preprocess=False` the tensors must already be in the shape that preprocessing gives.

    Returns:
        `(task, input, target)`.
    """
    task = resolve_task(task, num_classes, num_labels)
    if not preprocess:
        return task, to_tensor(input, "input"), to_tensor(target, "target")
    if task == "binary":
        return task, *preprocess_binary(input, target, ignore_index=ignore_index)
    if task == "multiclass":
        if num_classes is None:
            raise ValueError("num_classes is required for a multiclass task")
        return task, *preprocess_multiclass(input, target, num_classes, ignore_index=ignore_index)
    if num_labels is None:
        raise ValueError("num_labels is required for a multilabel task")
    return task, *preprocess_multilabel(input, target, num_labels, ignore_index=ignore_index)


def _column_tie_bounds(column: Tensor) -> tuple[Tensor, Tensor]:
    """Tie bounds of one sorted column from its runs (`unique_consecutive` is a single linear pass)."""
    _, inverse, counts = torch.unique_consecutive(column, return_inverse=True, return_counts=True)
    ends = counts.cumsum(dim=0) - 1
    return (ends - counts + 1)[inverse], ends[inverse]


def sorted_tie_groups(scores: Tensor, positives: Tensor, descending: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""
    Sort one column of scores and summarise it by groups of tied scores, for exact ranking metrics.

    Args:
        scores: Scores of shape `(N,)`.
        positives: Boolean (or 0/1) targets of shape `(N,)`.
        descending: Sort order.

    Returns:
        `(ends, cum_positives, group_positives, group_sizes)`, int64 tensors with one entry per tie group: the
        last sorted position of the group, the positives up to and including it, and the group's positives and size.

    Examples:
        >>> scores, positives = torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 1, 0, 1])
        >>> ends, cum, pos, size = sorted_tie_groups(scores, positives, descending=False)
        >>> ends.tolist(), cum.tolist(), pos.tolist(), size.tolist()
        ([0, 2, 3], [0, 1, 2], [0, 1, 1], [1, 2, 1])
    """
    sorted_scores, order = scores.sort(descending=descending)
    positive = positives.bool()[order]  # one-byte index: several times faster than gathering int64 targets
    last = torch.tensor([sorted_scores.numel() - 1], device=scores.device)
    ends = torch.cat([(sorted_scores[1:] != sorted_scores[:-1]).nonzero().squeeze(1), last])
    cum_positives = positive.cumsum(dim=0)[ends]
    group_positives = torch.diff(cum_positives, prepend=cum_positives.new_zeros(1))
    group_sizes = torch.diff(ends, prepend=ends.new_full((1,), -1))
    return ends, cum_positives, group_positives, group_sizes


def tie_bounds(sorted_values: Tensor) -> tuple[Tensor, Tensor]:
    r"""
    First and last position of the run of equal values that each element of a sorted column belongs to.

    Args:
        sorted_values: Values of shape `(N, K)`, each column sorted (ascending or descending).

    Returns:
        `(start, end)`, int64 tensors of shape `(N, K)`.

    Examples:
        >>> start, end = tie_bounds(torch.tensor([[1.0], [2.0], [2.0], [3.0]]))
        >>> start.flatten().tolist(), end.flatten().tolist()
        ([0, 1, 1, 3], [0, 2, 2, 3])
    """
    n, k = sorted_values.shape
    if k <= 64:  # few columns: one linear run-length pass per column is the cheapest
        bounds = [_column_tie_bounds(sorted_values[:, i]) for i in range(k)]
        return torch.stack([b[0] for b in bounds], dim=1), torch.stack([b[1] for b in bounds], dim=1)
    index = torch.arange(n, device=sorted_values.device).unsqueeze(1).expand_as(sorted_values)
    change = sorted_values[1:] != sorted_values[:-1]
    edge = torch.ones_like(change[:1])
    start = torch.where(torch.cat([edge, change]), index, 0).cummax(dim=0).values
    end = torch.where(torch.cat([change, edge]), index, n - 1).flip(0).cummin(dim=0).values.flip(0)
    return start, end


def average_ranks(values: Tensor) -> Tensor:
    r"""
    1-based ranks of each column, ties sharing the average of their ranks (as `scipy.stats.rankdata`).

    Args:
        values: Tensor of shape `(N,)` or `(N, K)`.

    Returns:
        Float64 ranks of the same shape.

    Examples:
        >>> average_ranks(torch.tensor([10.0, 20.0, 20.0, 5.0]))
        tensor([2.0000, 3.5000, 3.5000, 1.0000], dtype=torch.float64)
    """
    columns = values.unsqueeze(1) if values.ndim == 1 else values
    sorted_values, order = columns.sort(dim=0)
    start, end = tie_bounds(sorted_values)
    ranks = torch.empty(columns.shape, dtype=torch.float64, device=values.device)
    ranks.scatter_(0, order, (start + end + 2).double() / 2)
    return ranks.view(values.shape)


def one_hot(target: Tensor, num_classes: int) -> Tensor:
    r"""
    Boolean one-hot encoding of class indices, shape `(N, num_classes)`.

    Examples:
        >>> one_hot(torch.tensor([1, 0]), 3).int()
        tensor([[0, 1, 0],
                [1, 0, 0]], dtype=torch.int32)
    """
    return target.unsqueeze(-1) == torch.arange(num_classes, device=target.device)


def reduce_scores(scores: Tensor, average: Average, support: Tensor | None = None) -> Tensor:
    r"""
    Combine per-class scores.

    Args:
        scores: Per-class scores of shape `(K,)`; `nan` marks an undefined class.
        average: `"macro"` (mean of the defined classes), `"weighted"` (mean weighted by `support`), or
            `None`/`"none"` (the scores themselves).
        support: Per-class weights for `"weighted"`.

    Returns:
        A 0-d tensor, or `scores` when not averaging.

    Examples:
        >>> reduce_scores(torch.tensor([0.5, float("nan"), 1.0]), "macro")
        tensor(0.7500)
    """
    if average is None or average == "none":
        return scores
    if average == "macro":
        return scores.nanmean()
    if average == "weighted":
        if support is None:
            raise ValueError("average='weighted' needs the per-class support")
        weights = support.to(scores.dtype)
        defined = ~torch.isnan(scores)
        return (scores.nan_to_num() * weights).sum() / (weights * defined).sum()
    raise ValueError(f"average must be 'macro', 'micro', 'weighted' or None, but got {average!r}")


def weight_tasks(scores: Tensor, task_weights: Tensor | Sequence[float]) -> Tensor:
    r"""
    Weighted sum of per-task (label or output) scores, `scores @ task_weights`, as the reference library computes it.

    The weights are not normalised: weights that sum to 1 give a weighted mean.

    Raises:
        ValueError: If there is not one weight per score.

    Examples:
        >>> weight_tasks(torch.tensor([0.5, 1.0]), [0.25, 0.75])
        tensor(0.8750, dtype=torch.float64)
    """
    weights = torch.as_tensor(task_weights, dtype=torch.float64, device=scores.device)
    if weights.shape != scores.shape:
        raise ValueError(
            f"task_weights must have one weight per task {tuple(scores.shape)}, got {tuple(weights.shape)}"
        )
    return scores.double() @ weights
