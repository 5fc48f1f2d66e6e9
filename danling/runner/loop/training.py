"""The epoch schedule of [`TorchRunner.train`][danling.runner.TorchRunner.train], as functions of plain values.

The loop itself is the runner's: [`train`][danling.runner.TorchRunner.train] runs the epochs these functions
describe, each through [`run_epoch`][danling.runner.TorchRunner.run_epoch] and
[`record_epoch`][danling.runner.TorchRunner.record_epoch], until
[`should_stop`][danling.runner.TorchRunner.should_stop] says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import count

from ..reporting.results import epochs_without_improvement


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


def patience_exhausted(patience: int | None, scores: Mapping | None, best_fn: Callable = min) -> int | None:
    r"""
    The epochs without improvement when `patience` is set and they reached it, else `None` (also without results,
    `scores=None`). An epoch that improves never stops the run: `patience: 0` stops at the first one that does not
    (as Keras's `EarlyStopping`).

    Examples:
        >>> patience_exhausted(2, {0: 0.5, 1: 0.6, 2: 0.7}), patience_exhausted(3, {0: 0.5, 1: 0.6, 2: 0.7})
        (2, None)
        >>> patience_exhausted(0, {0: 0.5, 1: 0.4}), patience_exhausted(0, {0: 0.5, 1: 0.6})
        (None, 1)
        >>> patience_exhausted(None, {0: 0.5, 1: 0.6}), patience_exhausted(0, None)
        (None, None)
    """
    if patience is None or scores is None:
        return None
    waited = epochs_without_improvement(scores, best_fn)
    return waited if waited >= max(patience, 1) else None


def completion_reason(
    epoch_begin: int, epoch_end: int | None, steps: int, step_end: int | None, patience: int | None, waited: int | None
) -> str | None:
    r"""
    Why a run with results has nothing left to train, or `None`: `epoch_end` reached, `step_end` reached, or
    `patience` exhausted (`waited`, from [`patience_exhausted`][danling.runner.loop.training.patience_exhausted]).

    Examples:
        >>> completion_reason(3, 3, 10, None, None, None)
        'epoch_end 3 reached'
        >>> completion_reason(1, 3, 10, 10, None, None)
        'step_end 10 reached at step 10'
        >>> completion_reason(1, 3, 5, None, 2, 2), completion_reason(1, 3, 5, None, None, None)
        ('stopped early: no improvement within patience 2', None)
    """
    if epoch_end is not None and epoch_begin >= epoch_end:
        return f"epoch_end {epoch_end} reached"
    if step_end_reached(steps, step_end):
        return f"step_end {step_end} reached at step {steps}"
    if waited is not None:
        return f"stopped early: no improvement within patience {patience}"
    return None
