"""Regression metrics: coefficient of determination and (root) mean squared error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import Tensor

from ..preprocesses import ArrayLike, preprocess_regression, to_tensor
from ._utils import weight_tasks

MultiOutput = Literal["uniform_average", "raw_values"]
TaskWeights = Union[Tensor, Sequence[float], None]


def prepare_regression(
    input: ArrayLike, target: ArrayLike, num_outputs: int, ignore_nan: bool, preprocess: bool
) -> tuple[Tensor, Tensor]:
    r"""
    Float64 `(N, num_outputs)` views of `input` and `target`, preprocessed when asked.

    Examples:
        >>> prepare_regression([1, 2], [1.0, 2.0], 1, True, True)[0].shape
        torch.Size([2, 1])
    """
    if preprocess:
        input, target = preprocess_regression(input, target, num_outputs=num_outputs, ignore_nan=ignore_nan)
    input, target = to_tensor(input, "input"), to_tensor(target, "target")
    if input.shape != target.shape:
        raise ValueError(f"Shapes of input {tuple(input.shape)} and target {tuple(target.shape)} differ")
    return input.double().reshape(input.shape[0], -1), target.double().reshape(target.shape[0], -1)


def reduce_outputs(scores: Tensor, multioutput: MultiOutput, task_weights: TaskWeights = None) -> Tensor:
    r"""
    Mean over outputs (`"uniform_average"`), the per-output scores (`"raw_values"`), or, when `task_weights` is
    given, the weighted sum `scores @ task_weights` (the reference library's `task_weights`).

    Examples:
        >>> reduce_outputs(torch.tensor([1.0, 3.0]), "uniform_average")
        tensor(2.)
        >>> reduce_outputs(torch.tensor([1.0, 3.0]), "uniform_average", task_weights=[0.5, 0.5])
        tensor(2., dtype=torch.float64)
    """
    if task_weights is not None:
        return weight_tasks(scores, task_weights)
    if multioutput == "raw_values":
        return scores
    if multioutput == "uniform_average":
        return scores.mean()
    raise ValueError(f"multioutput must be 'uniform_average' or 'raw_values', but got {multioutput!r}")


def r2_score(
    input: ArrayLike,
    target: ArrayLike,
    num_outputs: int = 1,
    multioutput: MultiOutput = "uniform_average",
    ignore_nan: bool = True,
    preprocess: bool = True,
    task_weights: TaskWeights = None,
) -> Tensor:
    r"""
    Coefficient of determination (as `sklearn.metrics.r2_score`).

    A constant target gives 1 for a perfect prediction and 0 otherwise (scikit-learn's `force_finite=True`).

    Args:
        input: Predictions, `(N,)` or `(N, num_outputs)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs per sample.
        multioutput: `"uniform_average"` or `"raw_values"`.
        ignore_nan: Whether to drop NaN targets.
        preprocess: Whether to reshape and filter the inputs first.
        task_weights: One weight per output; when given, the result is `per_output_scores @ task_weights`.

    Returns:
        A 0-d float64 tensor, or one score per output with `"raw_values"`.

    Examples:
        >>> r2_score([2.5, 0.0, 2.0, 8.0], [3.0, -0.5, 2.0, 7.0])
        tensor(0.9486, dtype=torch.float64)
    """
    input, target = prepare_regression(input, target, num_outputs, ignore_nan, preprocess)
    residual = ((target - input) ** 2).sum(dim=0)
    total = ((target - target.mean(dim=0)) ** 2).sum(dim=0)
    constant = torch.where(residual == 0, torch.ones_like(total), torch.zeros_like(total))
    scores = torch.where(total == 0, constant, 1 - residual / total.clamp(min=torch.finfo(total.dtype).tiny))
    return reduce_outputs(scores, multioutput, task_weights)


def mse(
    input: ArrayLike,
    target: ArrayLike,
    num_outputs: int = 1,
    multioutput: MultiOutput = "uniform_average",
    ignore_nan: bool = True,
    preprocess: bool = True,
    task_weights: TaskWeights = None,
) -> Tensor:
    r"""
    Mean squared error (as `sklearn.metrics.mean_squared_error`).

    Args:
        input: Predictions, `(N,)` or `(N, num_outputs)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs per sample.
        multioutput: `"uniform_average"` or `"raw_values"`.
        ignore_nan: Whether to drop NaN targets.
        preprocess: Whether to reshape and filter the inputs first.
        task_weights: One weight per output; when given, the result is `per_output_scores @ task_weights`.

    Returns:
        A 0-d float64 tensor, or one score per output with `"raw_values"`.

    Examples:
        >>> mse([2.5, 0.0, 2.0, 8.0], [3.0, -0.5, 2.0, 7.0])
        tensor(0.3750, dtype=torch.float64)
    """
    input, target = prepare_regression(input, target, num_outputs, ignore_nan, preprocess)
    return reduce_outputs(((input - target) ** 2).mean(dim=0), multioutput, task_weights)


def rmse(
    input: ArrayLike,
    target: ArrayLike,
    num_outputs: int = 1,
    multioutput: MultiOutput = "uniform_average",
    ignore_nan: bool = True,
    preprocess: bool = True,
    root_per_output: bool = False,
    task_weights: TaskWeights = None,
) -> Tensor:
    r"""
    Root mean squared error.

    With several outputs the default is the reference library's: the square root of the MSE averaged uniformly
    over outputs. `root_per_output=True` averages the per-output RMSEs instead, as
    `sklearn.metrics.root_mean_squared_error` does. With one output both agree.

    Args:
        input: Predictions, `(N,)` or `(N, num_outputs)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs per sample.
        multioutput: `"uniform_average"` or `"raw_values"` (one RMSE per output).
        ignore_nan: Whether to drop NaN targets.
        preprocess: Whether to reshape and filter the inputs first.
        task_weights: One weight per output; when given, the result is `per_output_scores @ task_weights`.
        root_per_output: Whether `"uniform_average"` averages per-output roots instead of rooting the average.

    Returns:
        A 0-d float64 tensor, or one score per output with `"raw_values"`.

    Examples:
        >>> rmse([1.0, 2.0], [1.0, 4.0])
        tensor(1.4142, dtype=torch.float64)
        >>> input, target = [[0.0, 0.0], [0.0, 0.0]], [[1.0, 3.0], [1.0, 3.0]]
        >>> rmse(input, target, num_outputs=2)  # sqrt((1 + 9) / 2)
        tensor(2.2361, dtype=torch.float64)
        >>> rmse(input, target, num_outputs=2, root_per_output=True)  # (1 + 3) / 2
        tensor(2., dtype=torch.float64)
    """
    input, target = prepare_regression(input, target, num_outputs, ignore_nan, preprocess)
    per_output = ((input - target) ** 2).mean(dim=0)
    if multioutput == "uniform_average" and not root_per_output and task_weights is None:
        return per_output.mean().sqrt()
    return reduce_outputs(per_output.sqrt(), multioutput, task_weights)
