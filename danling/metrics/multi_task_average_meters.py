"""Running averages of scalars grouped by task: nested [`AverageMeter`][danling.metrics.AverageMeter]s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chanfig import NestedDict

from danling.utils.io import flatten

from ._sync import reduce_sums, union_keys
from .meter import AverageMeter, Number, Scalar, _averages, _is_empty, _merge_update_args


class MultiTaskAverageMeters(NestedDict):
    r"""
    Nested [`AverageMeter`][danling.metrics.AverageMeter]s, one per task and metric.

    Keys are dotted paths (`"task1.loss"`) or nested mappings; meters are created on first update.

    Examples:
        >>> meters = MultiTaskAverageMeters()
        >>> meters.update({"task1": {"loss": 0.6}, "task2.loss": 0.2})
        >>> meters.update({"task1": {"loss": 0.8}, "task2.loss": 0.4})
        >>> meters.task1.loss.val
        0.8
        >>> {k: round(v, 4) for k, v in meters.average().all_items()}
        {'task1.loss': 0.7, 'task2.loss': 0.3}
        >>> print(f"{meters:.2f}")
        task1.loss: 0.80 (0.70)
        task2.loss: 0.40 (0.30)
    """

    def meter(self, name: str) -> AverageMeter:
        r"""The meter at the dotted path `name`, created (empty) when missing."""
        return self._meter(name)

    def _meter(self, name: str) -> AverageMeter:
        if name not in self:
            self.set(name, AverageMeter())
        meter = self.get(name)
        if not isinstance(meter, AverageMeter):
            raise ValueError(f"Expected {name!r} to be an AverageMeter, but got {type(meter).__name__}")
        return meter

    def update(self, *args: Mapping[str, Any], n: Scalar = 1, **values: Any) -> None:  # type: ignore[override]
        r"""
        Update one meter per (dotted or nested) key; missing meters are created.

        Args:
            *args: At most one (nested) mapping from name to value.
            n: Weight of every value.
            **values: More values by name.
        """
        for name, value in flatten(_merge_update_args(args, values)).items():
            self._meter(name).update(value, n=n)

    def meters(self) -> dict[str, AverageMeter]:
        r"""Every meter, keyed by its dotted path."""
        return {name: meter for name, meter in self.all_items() if isinstance(meter, AverageMeter)}

    def reset(self) -> None:
        r"""Reset every meter."""
        for meter in self.meters().values():
            meter.reset()

    def value(self, skip_empty: bool = False) -> NestedDict:
        r"""
        Latest value of every meter on this process, nested by task (`skip_empty`: leave out meters never
        updated since their last reset).
        """
        meters = self.meters().items()
        return NestedDict({name: meter.val for name, meter in meters if not (skip_empty and _is_empty(meter))})

    def average(self, skip_empty: bool = False) -> NestedDict:
        r"""
        Average of every meter across processes (one collective); call on all ranks (`skip_empty`: leave out
        meters no rank updated since their last reset).
        """
        names = union_keys(list(self.meters()))
        meters = [self._meter(name) for name in names]
        reduced = reduce_sums([m._running_sum() for m in meters], [m._count for m in meters])
        return NestedDict(_averages(names, reduced, skip_empty))

    @property
    def val(self) -> NestedDict:
        r"""Same as [`value`][danling.metrics.MultiTaskAverageMeters.value]."""
        return self.value()

    @property
    def avg(self) -> NestedDict:
        r"""Same as [`average`][danling.metrics.MultiTaskAverageMeters.average]."""
        return self.average()

    @property
    def sum(self) -> NestedDict:
        r"""Local sum of every meter."""
        return NestedDict({name: meter.sum for name, meter in self.meters().items()})

    @property
    def count(self) -> NestedDict:
        r"""Local count of every meter."""
        return NestedDict({name: meter.count for name, meter in self.meters().items()})

    def state_dict(self) -> dict[str, dict[str, Number]]:
        r"""State of every meter on this process, keyed by dotted path."""
        return {name: meter.state_dict() for name, meter in self.meters().items()}

    def load_state_dict(self, state_dict: Mapping[str, Mapping[str, Number]]) -> None:
        r"""Restore meters saved by [`state_dict`][danling.metrics.MultiTaskAverageMeters.state_dict]."""
        for name, state in state_dict.items():
            self._meter(name).load_state_dict(state)

    def __format__(self, format_spec: str) -> str:
        values, averages = self.value(), self.average()
        return "\n".join(
            f"{name}: {value.__format__(format_spec)} ({averages[name].__format__(format_spec)})"
            for name, value in values.all_items()
        )
