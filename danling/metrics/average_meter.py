"""Running averages of scalars (losses, accuracies), synchronised across ranks on demand.

`update` never waits for the device: a 0-d tensor is detached and added to a tensor sum, and it only becomes a
Python float when `val`, `sum` or `avg` is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import nan
from typing import Any, Union

from chanfig import DefaultDict, FlatDict
from torch import Tensor

from ._sync import accumulation_dtype, reduce_sums, union_keys

Number = Union[int, float]
Scalar = Union[int, float, Tensor]


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
        self._sum: Scalar = 0
        self._count: Scalar = 0

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

    def update(self, value: Scalar, n: Scalar = 1) -> None:
        r"""
        Record `value` as the mean of `n` samples.

        Does not synchronise with the device: a tensor `value` is detached and summed lazily.

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
        total = self._sum
        if (  # the hot path of a training loop: a loss tensor weighted by an int batch size
            isinstance(value, Tensor)
            and isinstance(total, Tensor)
            and not isinstance(n, (Tensor, bool))
            and value.numel() == 1
            # `get_device` is an int (-1 on the CPU): cheaper than comparing two `torch.device` objects.
            and total.get_device() == value.get_device()
            and total.is_cpu == value.is_cpu
        ):
            # One in-place add into the running sum: no new tensors, no sync, no further call.
            value = value.detach()
            total.add_(value if value.ndim == 0 else value.reshape(()), alpha=n)
            self._val, self._n, self._count = value, n, self._count + n
            return
        value = _detach_scalar(value, "value")
        n = _detach_scalar(n, "n")
        self._val = value
        self._n = n
        self._sum = total + value * n
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
        return _as_number(self._sum)

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
        ((total, count),) = reduce_sums([self._sum], [self._count])
        return total / count if count != 0 else nan

    def state_dict(self) -> dict[str, Number]:
        r"""
        Plain-number state of this process, for checkpoints.

        Examples:
            >>> meter = AverageMeter()
            >>> meter.update(2.0, n=2)
            >>> meter.state_dict()
            {'val': 2.0, 'n': 2, 'sum': 4.0, 'count': 2}
        """
        return {"val": self.val, "n": self.n, "sum": self.sum, "count": self.count}

    def load_state_dict(self, state_dict: Mapping[str, Number]) -> None:
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
        self._sum = state_dict["sum"]
        self._count = state_dict["count"]

    def __format__(self, format_spec: str) -> str:
        return f"{self.val.__format__(format_spec)} ({self.avg.__format__(format_spec)})"

    def __repr__(self) -> str:
        # Local numbers only: a repr must never run a collective, since it may be called on one rank.
        return f"{self.__class__.__name__}(val={self.val}, sum={self.sum}, count={self.count})"


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


class AverageMeters(DefaultDict):
    r"""
    A dict of [`AverageMeter`][danling.metrics.AverageMeter]s; a missing meter is created on first access.

    Examples:
        >>> import torch
        >>> meters = AverageMeters()
        >>> meters.update(loss=torch.tensor(0.5), acc=0.5)
        >>> meters.update({"loss": 0.9, "acc": 1.0}, n=3)
        >>> meters.loss.val
        0.9
        >>> meters.value().dict()
        {'loss': 0.9, 'acc': 1.0}
        >>> {k: round(v, 4) for k, v in meters.average().items()}
        {'loss': 0.8, 'acc': 0.875}
        >>> f"{meters:.2f}"
        'loss: 0.90 (0.80)\tacc: 1.00 (0.88)'
        >>> meters.reset()
        >>> meters.avg.dict()
        {'loss': nan, 'acc': nan}
    """

    def __init__(self, *args: Any, default_factory: type[AverageMeter] = AverageMeter, **meters: AverageMeter) -> None:
        super().__init__(default_factory, *args, **meters)
        for name, meter in self.items():
            self._check_meter(name, meter)

    @staticmethod
    def _check_meter(name: Any, meter: Any) -> None:
        if not isinstance(meter, AverageMeter):
            raise ValueError(f"Expected {name!r} to be an AverageMeter, but got {type(meter).__name__}")

    def set(self, name: Any, value: Any) -> None:  # type: ignore[override]
        self._check_meter(name, value)
        super().set(name, value)

    def meter(self, name: str) -> AverageMeter:
        r"""The meter called `name`, created (empty) when missing."""
        return self[name]

    def update(self, *args: Mapping[str, Scalar], n: Scalar = 1, **values: Scalar) -> None:  # type: ignore[override]
        r"""
        Update one meter per key (missing meters are created).

        Args:
            *args: At most one mapping from meter name to value.
            n: Weight of every value, usually the batch size.
            **values: More values by name (`n` is reserved for the weight).

        Raises:
            ValueError: If a value is not a number or a single-element tensor.
        """
        for name, value in _merge_update_args(args, values).items():
            self[name].update(value, n=n)

    def reset(self) -> None:
        r"""Reset every meter."""
        for meter in self.values():
            meter.reset()

    def value(self, skip_empty: bool = False) -> FlatDict:
        r"""
        Latest value of every meter on this process.

        Args:
            skip_empty: Leave out meters never updated since their last reset (`count` 0), which would read `nan`;
                a meter updated with a real NaN is kept.

        Examples:
            >>> meters = AverageMeters()
            >>> meters.update(loss=float("nan"))
            >>> meters.time.reset()  # touched, never updated
            >>> meters.value(skip_empty=True).dict(), meters.average(skip_empty=True).dict()
            ({'loss': nan}, {'loss': nan})
        """
        values = FlatDict()  # filled by `update`: chanfig's constructor costs several times more per key
        values.update({name: meter.val for name, meter in self.items() if not (skip_empty and _is_empty(meter))})
        return values

    def batch(self) -> FlatDict:
        r"""Weighted mean of the latest update of every meter across processes; collective when distributed."""
        names = union_keys(list(self.keys()))
        meters = [self[name] for name in names]
        reduced = reduce_sums([m._val * m._n for m in meters], [m._n for m in meters])
        return FlatDict({name: total / count if count != 0 else nan for name, (total, count) in zip(names, reduced)})

    def average(self, skip_empty: bool = False) -> FlatDict:
        r"""
        Average of every meter across processes, computed with a single collective.

        Collective when distributed: call on all ranks. A meter present on only some ranks is created (empty) on
        the others, so every rank reduces the same names in the same order.

        Args:
            skip_empty: Leave out meters no rank updated since their last reset (which would read `nan`); a meter
                updated with a real NaN is kept.
        """
        names = union_keys(list(self.keys()))
        meters = [self[name] for name in names]
        reduced = reduce_sums([m._sum for m in meters], [m._count for m in meters])
        return FlatDict(_averages(names, reduced, skip_empty))

    @property
    def val(self) -> FlatDict:
        r"""Same as [`value`][danling.metrics.AverageMeters.value]."""
        return self.value()

    @property
    def bat(self) -> FlatDict:
        r"""Same as [`batch`][danling.metrics.AverageMeters.batch]."""
        return self.batch()

    @property
    def avg(self) -> FlatDict:
        r"""Same as [`average`][danling.metrics.AverageMeters.average]."""
        return self.average()

    @property
    def sum(self) -> FlatDict:
        r"""Local sum of every meter."""
        return FlatDict({name: meter.sum for name, meter in self.items()})

    @property
    def count(self) -> FlatDict:
        r"""Local count of every meter."""
        return FlatDict({name: meter.count for name, meter in self.items()})

    def state_dict(self) -> dict[str, dict[str, Number]]:
        r"""State of every meter on this process, for checkpoints."""
        return {name: meter.state_dict() for name, meter in self.items()}

    def load_state_dict(self, state_dict: Mapping[str, Mapping[str, Number]]) -> None:
        r"""Restore meters saved by [`state_dict`][danling.metrics.AverageMeters.state_dict]."""
        for name, state in state_dict.items():
            self[name].load_state_dict(state)

    def __format__(self, format_spec: str) -> str:
        values, averages = self.value(), self.average()
        return "\t".join(
            f"{name}: {values[name].__format__(format_spec)} ({averages[name].__format__(format_spec)})"
            for name in values
        )


def __getattr__(name: str) -> Any:
    # The multi-task meters live in `multi_task_average_meters`; they stay importable from here, as in the reference.
    if name == "MultiTaskAverageMeters":
        from .multi_task_average_meters import MultiTaskAverageMeters

        return MultiTaskAverageMeters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
