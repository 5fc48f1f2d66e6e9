"""`AverageMeter`: the running average of one scalar (a loss, an accuracy), synchronised across ranks on demand.

`update` never waits for the device, nor even launches work on it: a 0-d tensor is detached and kept, and every
`FOLD_SIZE` updates the kept ones are added to a tensor sum in one go. Numbers become Python floats only when `val`,
`sum` or `avg` is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import nan
from typing import Any, Union

import torch
from torch import Tensor

from ._sync import accumulation_dtype, reduce_sums

Number = Union[int, float]
Scalar = Union[int, float, Tensor]

# Tensor updates kept before they are added to the sum in one go: one stack and a sum every `FOLD_SIZE` updates
# instead of an add per update, which costs a training loop more than the rest of a meter's work.
FOLD_SIZE = 64


def _as_number(value: Scalar) -> Number:
    """Turn a lazily accumulated value into a Python number (this is where a device sync happens)."""
    if isinstance(value, Tensor):
        return value.item()
    return value


def _detach_scalar(value: Scalar, name: str) -> Scalar:
    """Validate one update value; tensors are detached and promoted to the accumulation dtype, never synced."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, but got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(()).to(accumulation_dtype(value.device))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int, a float or a 0-d tensor, but got {type(value).__name__}")
    return value


class AverageMeter:
    r"""
    Current value and running (sample-weighted) average of a scalar.

    Attributes:
        val: Value of the latest update on this process.
        avg: Weighted average of every update on all processes.
        sum: Weighted sum of the updates on this process.
        count: Total weight of the updates on this process.

    Examples:
        >>> import torch
        >>> meter = AverageMeter()
        >>> meter.update(0.7)
        >>> meter.update(torch.tensor(0.5), n=3)
        >>> meter.val
        0.5
        >>> round(meter.avg, 4)
        0.55
        >>> meter.count
        4
        >>> f"{meter:.2f}"
        '0.50 (0.55)'
        >>> meter.reset()
        >>> meter.avg
        nan
    """

    def __init__(self) -> None:
        self._val: Scalar = 0
        self._n: Scalar = 1
        self._sum: Scalar = 0  # weighted sum of the folded updates
        self._count: Scalar = 0
        self._pending: list[Tensor] = []  # tensor updates since the last fold, and their weights
        self._weights: list[Number] = []

    def reset(self) -> None:
        r"""
        Forget every update.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(2.0)
            >>> meter.reset()
            >>> meter.count, meter.val
            (0, 0)
        """
        self._val, self._n, self._sum, self._count = 0, 1, 0, 0
        self._pending, self._weights = [], []

    def _fold(self) -> None:
        # Add the pending updates to the sum, as one device computation, and start a new block.
        self._sum = self._running_sum()
        self._pending, self._weights = [], []

    def _running_sum(self) -> Scalar:
        r"""The weighted sum of every update (a tensor while any update was one), without a device sync."""
        if not self._pending:
            return self._sum
        return self._sum + weighted_block_sum(self._pending, self._weights)

    def update(self, value: Scalar, n: Scalar = 1) -> None:
        r"""
        Record `value` as the mean of `n` samples.

        Does not synchronise with the device: a tensor `value` is detached and kept, and added to the sum with the
        others kept every `FOLD_SIZE` updates (or when the sum is read).

        Args:
            value: A Python number or a tensor with a single element (e.g. a loss).
            n: Weight of the value, usually the batch size.

        Raises:
            ValueError: If `value` or `n` is not a number or a single-element tensor.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(1.0, n=2)
            >>> meter.sum, meter.count
            (2.0, 2)
        """
        if type(value) is Tensor and (type(n) is int or type(n) is float) and value.numel() == 1:
            # The hot path of a training loop, a loss tensor weighted by the batch size: kept for the next fold,
            # no device work at all.
            value = value.detach()
            pending = self._pending
            pending.append(value if value.ndim == 0 else value.reshape(()))
            self._weights.append(n)
            self._val, self._n, self._count = value, n, self._count + n
            if len(pending) >= FOLD_SIZE:
                self._fold()
            return
        value = _detach_scalar(value, "value")
        n = _detach_scalar(n, "n")
        self._val = value
        self._n = n
        self._sum = self._sum + value * n
        self._count = self._count + n

    @property
    def val(self) -> Number:
        r"""Value of the latest update (0 before any update)."""
        return _as_number(self._val)

    @property
    def n(self) -> Number:
        r"""Weight of the latest update."""
        return _as_number(self._n)

    @property
    def sum(self) -> Number:
        r"""Weighted sum of the updates on this process."""
        return _as_number(self._running_sum())

    @property
    def count(self) -> Number:
        r"""Total weight of the updates on this process."""
        return _as_number(self._count)

    @property
    def avg(self) -> float:
        r"""Same as [`average`][danling.metrics.AverageMeter.average]; collective when distributed."""
        return self.average()

    @property
    def bat(self) -> float:
        r"""Same as [`batch`][danling.metrics.AverageMeter.batch]; collective when distributed."""
        return self.batch()

    def value(self) -> Number:
        r"""
        Value of the latest update on this process.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(3)
            >>> meter.value()
            3
        """
        return self.val

    def batch(self) -> float:
        r"""
        Weighted mean of the latest update of every process.

        Collective when distributed: call on all ranks.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(0.5, n=4)
            >>> meter.batch()
            0.5
        """
        ((total, count),) = reduce_sums([self._val * self._n], [self._n])
        return total / count if count != 0 else nan

    def average(self) -> float:
        r"""
        Weighted average of every update on all processes (`nan` before any update).

        Collective when distributed: call on all ranks.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(1.0)
            >>> meter.update(2.0, n=3)
            >>> meter.average()
            1.75
        """
        ((total, count),) = reduce_sums([self._running_sum()], [self._count])
        return total / count if count != 0 else nan

    def state_dict(self) -> dict[str, Any]:
        r"""
        Plain-number state of this process, for checkpoints.

        `sum` is the sum of every update. While updates wait for their fold, `folded` and `pending` (`[value, n]`
        pairs) are saved too, so that a restored meter folds them in the same blocks as one never saved: its sums
        agree to the last bit.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(2.0, n=2)
            >>> meter.state_dict()
            {'val': 2.0, 'n': 2, 'sum': 4.0, 'count': 2}
            >>> meter.update(torch.tensor(0.5), n=4)
            >>> meter.state_dict()
            {'val': 0.5, 'n': 4, 'sum': 6.0, 'count': 6, 'folded': 4.0, 'pending': [[0.5, 4]]}
        """
        state: dict[str, Any] = {"val": self.val, "n": self.n, "sum": self.sum, "count": self.count}
        if self._pending:
            values = _pending_values(self._pending)
            state["folded"] = _as_number(self._sum)
            state["pending"] = [[value, n] for value, n in zip(values, self._weights)]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        r"""
        Restore the state written by [`state_dict`][danling.metrics.AverageMeter.state_dict].

        Examples:
            >>> meter = AverageMeter()
            >>> meter.load_state_dict({"val": 1.0, "n": 1, "sum": 3.0, "count": 2})
            >>> meter.avg
            1.5
        """
        self._val = state_dict["val"]
        self._n = state_dict.get("n", 1)
        self._count = state_dict["count"]
        pending = state_dict.get("pending") or []
        # Restored in float64 (exact for the float32 and narrower values saved); moved to the new updates' device
        # when the block is folded.
        self._pending = [torch.tensor(value, dtype=torch.float64) for value, _ in pending]
        self._weights = [n for _, n in pending]
        self._sum = state_dict["folded"] if pending else state_dict["sum"]

    def __format__(self, format_spec: str) -> str:
        return f"{self.val.__format__(format_spec)} ({self.avg.__format__(format_spec)})"

    def __repr__(self) -> str:
        # Local numbers only: a repr must never run a collective, since it may be called on one rank.
        return f"{self.__class__.__name__}(val={self.val}, sum={self.sum}, count={self.count})"


def weighted_block_sum(values: list[Tensor], weights: list[Number]) -> Tensor:
    r"""
    `sum(value * weight)` of a block of 0-d tensors, in the accumulation dtype, as a few device operations.

    Consecutive values of the same weight (a constant batch size) are summed first, then multiplied by it. Values
    on different devices (restored from a checkpoint on the CPU) are moved to the device of the last one.

    Examples:
        >>> weighted_block_sum([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)], [2, 2, 1])
        tensor(10., dtype=torch.float64)
    """
    device = values[-1].device
    dtype = accumulation_dtype(device)
    if any(value.device != device for value in values):
        values = [value.to(device, dtype) for value in values]
    stacked = torch.stack(values).to(dtype)
    total = None
    start = 0
    for end in range(1, len(weights) + 1):
        if end == len(weights) or weights[end] != weights[start]:
            part = stacked[start:end].sum() * weights[start]
            total = part if total is None else total + part
            start = end
    return total


def _pending_values(values: list[Tensor]) -> list[float]:
    # One transfer per device, not one per value.
    if all(value.device == values[0].device for value in values):
        return torch.stack(values).tolist()
    return [value.item() for value in values]


def _is_empty(meter: AverageMeter) -> bool:
    # Never updated since its last reset: its value and average would read `nan` without meaning it.
    return meter.count == 0


def _averages(names: list[str], reduced: list[tuple[float, float]], skip_empty: bool) -> dict[str, float]:
    averages = {}
    for name, (total, count) in zip(names, reduced):
        if count != 0:
            averages[name] = total / count
        elif not skip_empty:
            averages[name] = nan
    return averages


def _merge_update_args(args: tuple[Mapping[str, Any], ...], values: dict[str, Any]) -> dict[str, Any]:
    """Combine the optional positional mapping and the keyword values of an `update` call."""
    if len(args) > 1:
        raise ValueError(f"update takes at most one positional mapping, but got {len(args)}")
    merged: dict[str, Any] = {}
    if args:
        if not isinstance(args[0], Mapping):
            raise ValueError(f"update expects a mapping of values, but got {type(args[0]).__name__}")
        merged.update(args[0])
    merged.update(values)
    return merged
