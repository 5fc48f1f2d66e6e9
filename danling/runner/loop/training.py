"""The epoch schedule of [`TorchRunner.train`][danling.runner.TorchRunner.train], as functions of plain values.

The loop itself is the runner's: [`train`][danling.runner.TorchRunner.train] runs the epochs these functions
describe, each through [`run_epoch`][danling.runner.TorchRunner.run_epoch] and
[`record_epoch`][danling.runner.TorchRunner.record_epoch], until
[`should_stop`][danling.runner.TorchRunner.should_stop] says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import count


def epoch_range(epoch_begin: int, epoch_end: int | None, step_end: int | None) -> Iterable[int]:
    r"""
    The epochs to run: `range(epoch_begin, epoch_end)`, or counting up from `epoch_begin` without `epoch_end`
    (`step_end` then ends the run).

    Raises:
        ValueError: If neither `epoch_end` nor `step_end` is set, or `epoch_end < epoch_begin`.

    Examples:
        >>> list(epoch_range(2, 4, None))
        [2, 3]
        >>> next(iter(epoch_range(5, None, 100)))
        5
        >>> epoch_range(0, None, None)
        Traceback (most recent call last):
        ValueError: train() needs config.epoch_end or config.step_end to know when to stop
    """
    if epoch_end is None and step_end is None:
        raise ValueError("train() needs config.epoch_end or config.step_end to know when to stop")
    if epoch_end is None:
        return count(epoch_begin)
    if epoch_end < epoch_begin:
        raise ValueError(f"epoch_end ({epoch_end}) is before epoch_begin ({epoch_begin}): nothing to train")
    return range(epoch_begin, epoch_end)


def step_end_reached(steps: int, step_end: int | None) -> bool:
    r"""
    Whether `step_end` is set and `steps` optimizer steps reached it.

    Examples:
        >>> step_end_reached(10, 10), step_end_reached(9, 10), step_end_reached(10**6, None)
        (True, False, False)
    """
    return step_end is not None and steps >= step_end
