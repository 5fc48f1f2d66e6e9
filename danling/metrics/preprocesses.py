"""Turn raw model outputs and targets into the flat, filtered tensors that metric functions expect.

Two stages:

- [`flatten_batch`][danling.metrics.preprocesses.flatten_batch] only reshapes, so it never waits for the device
  and is what [`Metrics.update`][danling.metrics.Metrics.update] runs on every batch.
- `preprocess_<task>` filters ignored/NaN targets, checks values and applies the activation; it reads values, so
  it runs when a metric is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Callable, Literal, Union
from warnings import warn

import torch
from torch import Tensor

Task = Literal["binary", "multiclass", "multilabel"]
ArrayLike = Union[Tensor, Sequence[Any], float, int]


def infer_task(num_classes: int | None, num_labels: int | None) -> Task:
    r"""
    Classification task implied by the number of classes or labels.

    Args:
        num_classes: Number of mutually exclusive classes, or `None`.
        num_labels: Number of independent binary labels, or `None`.

    Returns:
        `"multiclass"` when `num_classes` is given, `"multilabel"` when `num_labels` is, else `"binary"`.

    Raises:
        ValueError: If both are given.

    Examples:
        >>> infer_task(None, None), infer_task(10, None), infer_task(None, 5)
        ('binary', 'multiclass', 'multilabel')
    """
    if num_classes is not None and num_labels is not None:
        raise ValueError(f"Only one of num_classes ({num_classes}) and num_labels ({num_labels}) may be given")
    if num_classes is not None:
        return "multiclass"
    if num_labels is not None:
        return "multilabel"
    return "binary"


def to_tensor(value: ArrayLike, name: str = "input") -> Tensor:
    r"""
    Convert `value` to a detached tensor (tensors are not copied).

    Rows of different lengths (a ragged nested list, which the reference library turns into a `NestedTensor`) are
    concatenated, so predictions and targets given row by row stay aligned.

    Examples:
        >>> to_tensor([1, 2])
        tensor([1, 2])
        >>> to_tensor([[0.1, 0.4, 0.6], [0.2]])
        tensor([0.1000, 0.4000, 0.6000, 0.2000])
    """
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        if _is_ragged(value):  # rows of different lengths (the reference's nested lists): concatenate them
            return torch.cat([to_tensor(row, name) for row in value])
        raise ValueError(f"Cannot convert {name} of type {type(value).__name__} to a tensor: {error}") from error


def _is_ragged(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(row, (list, tuple, Tensor)) and len(row) > 0 for row in value)
    )


def _squeezed_shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(size for size in tensor.shape if size != 1)


def flatten_batch(input: ArrayLike, target: ArrayLike) -> tuple[Tensor, Tensor]:
    r"""
    Reshape one batch to `input` of shape `(N,)` or `(N, C)` and `target` of shape `(N,)`, without reading values.

    Same-shaped tensors (binary, multilabel, regression) are flattened to 1-D, and so are tensors whose shapes
    differ only by dimensions of size 1 (an `(N, 1)` prediction of an `(N,)` target); an `input` with one more
    trailing dimension than `target` (multiclass scores) keeps it as `C`.

    Args:
        input: Predictions.
        target: Targets.

    Returns:
        The reshaped `(input, target)`.

    Raises:
        ValueError: If the shapes do not match, or the batch is empty.

    Examples:
        >>> input, target = flatten_batch(torch.zeros(2, 3, 5), torch.zeros(2, 3))
        >>> input.shape, target.shape
        (torch.Size([6, 5]), torch.Size([6]))
    """
    input, target = to_tensor(input, "input"), to_tensor(target, "target")
    if input.numel() == 0 or target.numel() == 0:
        raise ValueError(f"Empty batch: input shape {tuple(input.shape)}, target shape {tuple(target.shape)}")
    if input.shape == target.shape or _squeezed_shape(input) == _squeezed_shape(target):
        return input.reshape(-1), target.reshape(-1)  # a single-output (N, 1) prediction is stored flat
    if input.ndim == target.ndim + 1 and input.shape[:-1] == target.shape:
        return input.reshape(-1, input.shape[-1]), target.reshape(-1)
    raise ValueError(
        f"Shapes of input {tuple(input.shape)} and target {tuple(target.shape)} do not match: expected equal "
        "shapes, or input with one extra trailing (class) dimension"
    )


def _keep_mask(target: Tensor, ignore_index: int | None, ignore_nan: bool) -> Tensor | None:
    """Mask of the targets to keep, or `None` when nothing can be dropped."""
    mask = None
    if ignore_index is not None:
        mask = target != ignore_index
    if ignore_nan and target.is_floating_point():
        not_nan = ~torch.isnan(target)
        mask = not_nan if mask is None else mask & not_nan
    return mask


def _outside(values: Tensor, low: float, high: float) -> bool:
    """Whether any value lies outside `[low, high]` (one fused min/max pass)."""
    if values.numel() == 0:
        return False
    minimum, maximum = torch.aminmax(values)
    return bool((minimum < low) | (maximum > high))


class NonFiniteInputError(ValueError):
    r"""Predictions hold NaN or infinity: metric containers catch it and report NaN instead of crashing."""


def _check_finite(input: Tensor) -> None:
    if input.is_floating_point() and not bool(torch.isfinite(input).all()):
        bad = input[~torch.isfinite(input)].flatten()[:5].tolist()
        raise NonFiniteInputError(f"input of shape {tuple(input.shape)} contains non-finite values, e.g. {bad}")


def warn_non_finite(owner: Any, error: Exception) -> None:
    r"""
    Warn, once per metric container `owner`, that non-finite predictions made its metrics NaN.

    Args:
        owner: The metric container (remembers that it warned).
        error: The [`NonFiniteInputError`][danling.metrics.preprocesses.NonFiniteInputError] raised.
    """
    if getattr(owner, "_warned_non_finite", False):
        return
    object.__setattr__(owner, "_warned_non_finite", True)
    warn(f"{type(owner).__name__}: {error}; the affected metrics are NaN", RuntimeWarning, stacklevel=3)


def preprocess(
    input: ArrayLike, target: ArrayLike, ignore_index: int | None = -100, ignore_nan: bool = True
) -> tuple[Tensor, Tensor]:
    r"""
    Convert a batch to tensors and drop the samples whose target is `ignore_index` or NaN, keeping its shape.

    As in the reference library, nothing is reshaped when nothing is dropped: a nested list `[[0.1, 0.2], [0.3,
    0.4]]` stays `2x2`. Dropping samples flattens the batch to the kept samples (`(N,)`, or `(N, C)` for an input
    with one extra trailing class dimension). When `input` and `target` have as many elements, singleton dimensions
    are squeezed away, so an `(N, 1)` prediction and an `(N,)` target both come back as `(N,)`.

    Args:
        input: Predictions, shaped like `target` or with one extra trailing dimension.
        target: Targets.
        ignore_index: Target value to drop (`None` keeps all).
        ignore_nan: Whether to drop NaN targets.

    Returns:
        `(input, target)`.

    Raises:
        ValueError: If samples must be dropped but the shapes do not line up.

    Examples:
        >>> preprocess([0.1, 0.8, 0.3], [0, -100, 1])
        (tensor([0.1000, 0.3000]), tensor([0, 1]))
        >>> input, target = preprocess([[0.1, 0.2], [0.3, 0.4]], [[0, 1], [1, 0]])
        >>> input.shape, target.shape
        (torch.Size([2, 2]), torch.Size([2, 2]))
        >>> preprocess([[0.2], [0.9]], [0, 1])[0].shape
        torch.Size([2])
    """
    input, target = to_tensor(input, "input"), to_tensor(target, "target")
    mask = _keep_mask(target, ignore_index, ignore_nan)
    if mask is not None and not bool(mask.all()):  # boolean indexing copies; skip it when nothing is dropped
        if input.shape[: target.ndim] != target.shape:
            raise ValueError(
                f"Cannot drop ignored targets: input shape {tuple(input.shape)} does not start with target shape "
                f"{tuple(target.shape)}"
            )
        input, target = input[mask], target[mask]
    if input.numel() == target.numel() and input.shape != target.shape:
        input, target = torch.atleast_1d(input.squeeze()), torch.atleast_1d(target.squeeze())
    return input, target


def preprocess_flat(
    input: ArrayLike, target: ArrayLike, ignore_index: int | None = -100, ignore_nan: bool = True
) -> tuple[Tensor, Tensor]:
    r"""
    [`flatten_batch`][danling.metrics.preprocesses.flatten_batch], then drop ignored and NaN targets.

    Unlike [`preprocess`][danling.metrics.preprocesses.preprocess], the result is always `(N,)` or `(N, C)`, so
    its first dimension counts samples; the meters use it to weight batches.

    Examples:
        >>> preprocess_flat([[0.1, 0.8], [0.3, 0.5]], [[0, -100], [1, 1]])
        (tensor([0.1000, 0.3000, 0.5000]), tensor([0, 1, 1]))
    """
    input, target = flatten_batch(input, target)
    mask = _keep_mask(target, ignore_index, ignore_nan)
    if mask is not None and not bool(mask.all()):
        input, target = input[mask], target[mask]
    return input, target


def bind_options(
    preprocess: Callable[..., tuple[Tensor, Tensor]] | None, ignore_index: int | None, ignore_nan: bool | None
) -> Callable[..., tuple[Tensor, Tensor]] | None:
    r"""
    `preprocess` with `ignore_index` / `ignore_nan` bound, for those that are not `None` (the reference's options).

    Examples:
        >>> bind_options(preprocess, -1, None)([0.2, 0.7], [-1, 1])
        (tensor([0.7000]), tensor([1]))
    """
    options = {"ignore_index": ignore_index, "ignore_nan": ignore_nan}
    options = {key: value for key, value in options.items() if value is not None}
    if preprocess is None or not options:
        return preprocess
    return partial(preprocess, **options)


def preprocess_binary(
    input: ArrayLike, target: ArrayLike, ignore_index: int | None = -100, threshold_logits: bool = True
) -> tuple[Tensor, Tensor]:
    r"""
    Prepare binary predictions: flat probabilities and integer targets.

    Inputs outside `[0, 1]` are treated as logits and passed through a sigmoid. An input of shape `(N, 1)` with a
    target of shape `(N,)` is accepted.

    Args:
        input: Probabilities or logits.
        target: Targets in `{0, 1}`.
        ignore_index: Target value to drop.
        threshold_logits: Whether to apply the sigmoid to inputs outside `[0, 1]`.

    Returns:
        `(probabilities, target)`, both of shape `(N,)`.

    Raises:
        ValueError: On mismatched shapes, non-finite predictions or targets outside `{0, 1}`.

    Examples:
        >>> preprocess_binary([-2.0, 0.0, 3.0], [0, 1, -100])
        (tensor([0.1192, 0.5000]), tensor([0, 1]))
    """
    input, target = preprocess_flat(input, target, ignore_index)
    input = input.reshape(-1)
    if input.shape != target.shape:
        raise ValueError(f"Binary input has {input.numel()} scores for {target.numel()} targets")
    _check_finite(input)
    input = input.float() if not input.is_floating_point() else input
    if threshold_logits and _outside(input, 0, 1):
        input = input.sigmoid()
    target = target.long()
    if _outside(target, 0, 1):
        raise ValueError(f"Binary targets must be 0 or 1, but got values {target.unique().tolist()[:10]}")
    return input, target


def preprocess_multiclass(
    input: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None = -100
) -> tuple[Tensor, Tensor]:
    r"""
    Prepare multiclass predictions: probabilities of shape `(N, num_classes)` and class indices of shape `(N,)`.

    Scores outside `[0, 1]` are treated as logits and passed through a softmax.

    Args:
        input: Scores of shape `(..., num_classes)`.
        target: Class indices of shape `(...)`.
        num_classes: Number of classes.
        ignore_index: Target value to drop.

    Returns:
        `(probabilities, target)`.

    Raises:
        ValueError: On mismatched shapes, a wrong number of classes, non-finite scores or out-of-range targets.

    Examples:
        >>> probs, target = preprocess_multiclass([[2.0, 0.0], [0.0, 2.0]], [0, 1], num_classes=2)
        >>> probs.argmax(-1), target
        (tensor([0, 1]), tensor([0, 1]))
    """
    input, target = preprocess_flat(input, target, ignore_index)
    if input.ndim != 2 or input.shape[-1] != num_classes:
        raise ValueError(
            f"Multiclass input must have shape (N, num_classes={num_classes}), but got {tuple(input.shape)}"
        )
    _check_finite(input)
    input = input.float() if not input.is_floating_point() else input
    if _outside(input, 0, 1):
        input = input.softmax(dim=-1)
    target = target.long()
    if _outside(target, 0, num_classes - 1):
        raise ValueError(f"Multiclass targets must lie in [0, {num_classes}), but got {target.unique().tolist()[:10]}")
    return input, target


def preprocess_multilabel(
    input: ArrayLike, target: ArrayLike, num_labels: int, ignore_index: int | None = -100
) -> tuple[Tensor, Tensor]:
    r"""
    Prepare multilabel predictions: probabilities and targets of shape `(N, num_labels)`.

    A sample (row) with any ignored or NaN label is dropped as a whole, so every label is scored on the same
    samples. Inputs outside `[0, 1]` are treated as logits and passed through a sigmoid.

    Args:
        input: Scores of shape `(..., num_labels)`.
        target: Labels in `{0, 1}` of the same shape.
        num_labels: Number of labels.
        ignore_index: Target value marking a missing label.

    Returns:
        `(probabilities, target)`.

    Raises:
        ValueError: On mismatched shapes, a wrong number of labels or non-finite scores.

    Examples:
        >>> preprocess_multilabel([[0.2, 0.7], [0.4, 0.1]], [[0, 1], [-100, 1]], num_labels=2)
        (tensor([[0.2000, 0.7000]]), tensor([[0, 1]]))
    """
    input, target = to_tensor(input, "input"), to_tensor(target, "target")
    # a flat batch (as stored by `flatten_batch`) is accepted when it holds whole rows of `num_labels`
    flat_rows = input.ndim == 1 and input.numel() % num_labels == 0
    if input.shape != target.shape or input.ndim == 0 or not (flat_rows or input.shape[-1] == num_labels):
        raise ValueError(
            f"Multilabel input and target must both have shape (..., {num_labels}), "
            f"but got {tuple(input.shape)} and {tuple(target.shape)}"
        )
    input, target = input.reshape(-1, num_labels), target.reshape(-1, num_labels)
    mask = _keep_mask(target, ignore_index, ignore_nan=True)
    if mask is not None:
        rows = mask.all(dim=-1)
        if not bool(rows.all()):
            input, target = input[rows], target[rows]
    _check_finite(input)
    input = input.float() if not input.is_floating_point() else input
    if _outside(input, 0, 1):
        input = input.sigmoid()
    return input, target.long()


def preprocess_regression(
    input: ArrayLike, target: ArrayLike, num_outputs: int = 1, ignore_nan: bool = True
) -> tuple[Tensor, Tensor]:
    r"""
    Prepare regression predictions: shape `(N,)` for one output, `(N, num_outputs)` for several.

    With several outputs a sample with any NaN target is dropped as a whole.

    Args:
        input: Predictions.
        target: Targets of the same number of elements.
        num_outputs: Number of outputs per sample.
        ignore_nan: Whether to drop NaN targets.

    Returns:
        `(input, target)` as floating tensors.

    Raises:
        ValueError: On mismatched sizes or non-finite predictions.

    Examples:
        >>> preprocess_regression([1.0, 2.0, 3.0], [1.5, float("nan"), 2.5])
        (tensor([1., 3.]), tensor([1.5000, 2.5000]))
    """
    input, target = to_tensor(input, "input"), to_tensor(target, "target")
    if input.numel() != target.numel() or input.numel() % num_outputs != 0:
        raise ValueError(
            f"Regression input {tuple(input.shape)} and target {tuple(target.shape)} must have the same number of "
            f"elements, a multiple of num_outputs={num_outputs}"
        )
    shape = (-1,) if num_outputs == 1 else (-1, num_outputs)
    input, target = input.reshape(shape), target.reshape(shape)
    input = input if input.is_floating_point() else input.float()
    target = target if target.is_floating_point() else target.float()
    if ignore_nan:
        mask = ~torch.isnan(target)
        if num_outputs > 1:
            mask = mask.all(dim=-1)
        input, target = input[mask], target[mask]
    _check_finite(input)
    return input, target
