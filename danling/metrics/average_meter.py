"""Running averages of scalars (losses, accuracies), synchronised across ranks on demand.

`update` never waits for the device, nor even launches work on it: a 0-d tensor is detached and kept, and every
`FOLD_SIZE` updates the kept ones are added to a tensor sum in one go. Numbers become Python floats only when `val`,
`sum` or `avg` is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import nan
from typing import Any

from chanfig import DefaultDict, FlatDict

from ._sync import reduce_sums, union_keys
from .meter import FOLD_SIZE, AverageMeter, Number, Scalar, _averages, _is_empty, _merge_update_args, weighted_block_sum
from .multi_task_average_meters import MultiTaskAverageMeters

__all__ = [
    "AverageMeter",
    "AverageMeters",
    "MultiTaskAverageMeters",
    "FOLD_SIZE",
    "Number",
    "Scalar",
    "weighted_block_sum",
]


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
        reduced = reduce_sums([m._running_sum() for m in meters], [m._count for m in meters])
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
