"""Correlation coefficients between predictions and targets."""

from __future__ import annotations

from torch import Tensor

from ..preprocesses import ArrayLike
from ._utils import average_ranks
from .regression import MultiOutput, TaskWeights, prepare_regression, reduce_outputs


def pearson_columns(input: Tensor, target: Tensor) -> Tensor:
    r"""
    Pearson correlation of every column pair; `nan` where a column is constant.

    Examples:
        >>> import torch
        >>> pearson_columns(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[2.0], [4.0], [7.0]]))
        tensor([0.9934])
    """
    input = input - input.mean(dim=0)
    target = target - target.mean(dim=0)
    covariance = (input * target).sum(dim=0)
    scale = (input.pow(2).sum(dim=0) * target.pow(2).sum(dim=0)).sqrt()
    return covariance / scale  # 0 / 0 is nan for a constant column, as in scipy


def pearson(
    input: ArrayLike,
    target: ArrayLike,
    num_outputs: int = 1,
    multioutput: MultiOutput = "uniform_average",
    ignore_nan: bool = True,
    preprocess: bool = True,
    task_weights: TaskWeights = None,
) -> Tensor:
    r"""
    Pearson correlation coefficient (as `scipy.stats.pearsonr`), per output then averaged.

    Args:
        input: Predictions, `(N,)` or `(N, num_outputs)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs per sample.
        multioutput: `"uniform_average"` or `"raw_values"`.
        ignore_nan: Whether to drop NaN targets.
        preprocess: Whether to reshape and filter the inputs first.
        task_weights: One weight per output; when given, the result is `per_output_scores @ task_weights`.

    Returns:
        A 0-d float64 tensor (`nan` when an output is constant), or one score per output.

    Examples:
        >>> pearson([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
        tensor(0.8000, dtype=torch.float64)
    """
    input, target = prepare_regression(input, target, num_outputs, ignore_nan, preprocess)
    return reduce_outputs(pearson_columns(input, target), multioutput, task_weights)


def spearman(
    input: ArrayLike,
    target: ArrayLike,
    num_outputs: int = 1,
    multioutput: MultiOutput = "uniform_average",
    ignore_nan: bool = True,
    preprocess: bool = True,
    task_weights: TaskWeights = None,
) -> Tensor:
    r"""
    Spearman rank correlation (as `scipy.stats.spearmanr`): Pearson correlation of the average ranks.

    Args:
        input: Predictions, `(N,)` or `(N, num_outputs)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs per sample.
        multioutput: `"uniform_average"` or `"raw_values"`.
        ignore_nan: Whether to drop NaN targets.
        preprocess: Whether to reshape and filter the inputs first.
        task_weights: One weight per output; when given, the result is `per_output_scores @ task_weights`.

    Returns:
        A 0-d float64 tensor (`nan` when an output is constant), or one score per output.

    Examples:
        >>> spearman([1.0, 2.0, 2.0, 4.0], [1.0, 3.0, 2.0, 4.0])
        tensor(0.9487, dtype=torch.float64)
    """
    input, target = prepare_regression(input, target, num_outputs, ignore_nan, preprocess)
    return reduce_outputs(pearson_columns(average_ranks(input), average_ranks(target)), multioutput, task_weights)
