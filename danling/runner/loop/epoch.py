"""`EpochCursor`: where a training or evaluation epoch of a [`TorchRunner`][danling.runner.TorchRunner] is.

[`begin_epoch`][danling.runner.TorchRunner.begin_epoch] fills one in, once per epoch, with everything the batches
need (the log interval, the `on_step_end` hook, the step boundary hook, `step_end`); each
[`end_step`][danling.runner.TorchRunner.end_step] reads it and counts the batch, and
[`end_epoch`][danling.runner.TorchRunner.end_epoch] reads whether `step_end` cut the epoch short. It holds values
and callables, never the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..utils import RunnerMode
from .data import describe_loader, has_more


class EpochCursor:
    r"""
    The state of one epoch's loop: plain values and the hooks taken at its start, read once per batch.

    Args:
        split: The split the epoch runs.
        length: Batches in the epoch, or `None` for a loader without a length.
        iteration: Batches of this mode run in earlier epochs (log steps count batches over the run).
        start: Batches of this epoch a resumed checkpoint had consumed already.

    Attributes:
        loader: The loader the epoch reads (named in errors).
        log_interval: Batches between two log lines (`None`: none).
        on_step_end: The callbacks' `on_step_end`, or `None` when no callback overrides it.
        at_boundary: What runs after an optimizer step (`save_steps`, preemption), or `None`.
        step_end: Optimizer steps to stop at, or `None`.
        steps_now: Reads the optimizer steps taken so far.
        stepped: The optimizer steps at the last boundary.
        stream: The batches being iterated (asked for one more to learn whether `step_end` cut the epoch short).
        partial: Whether `step_end` stopped the epoch before its last batch.

    Examples:
        >>> cursor = EpochCursor("train", length=10, iteration=20, start=3)
        >>> cursor.iteration += 2  # two batches after resuming at batch 3
        >>> cursor.batches_done(), cursor.cut_short()
        (5, True)
    """

    __slots__ = (
        "at_boundary",
        "iteration",
        "length",
        "loader",
        "log_interval",
        "offset",
        "on_step_end",
        "partial",
        "split",
        "step_end",
        "stepped",
        "steps_now",
        "stream",
    )

    def __init__(self, split: str, length: int | None = None, iteration: int = 0, start: int = 0) -> None:
        self.split = split
        self.length = length
        self.loader: Any = None
        self.iteration = iteration
        self.offset = start - iteration  # batches of the epoch done = iteration + offset
        self.log_interval: int | None = None
        self.on_step_end: Callable[..., None] | None = None
        self.at_boundary: Callable[[str, int, int | None], None] | None = None
        self.step_end: int | None = None
        self.steps_now: Callable[[], int] = int
        self.stepped = 0
        self.stream: Iterator | None = None
        self.partial = False

    def batches_done(self) -> int:
        r"""Batches of this epoch consumed so far, those before a resume included."""
        return self.iteration + self.offset

    def check_yielded(self, batches: int, training: bool, distributed: bool) -> None:
        r"""
        Raise when the epoch yielded no batch (`batches` counted this epoch, none before a resume either); under DDP
        one rank's evaluation shard may be empty, so only training checks then.

        Raises:
            ValueError: Naming the split and its loader.

        Examples:
            >>> cursor = EpochCursor("val", length=None)
            >>> cursor.check_yielded(0, training=False, distributed=False)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: split 'val' yielded no batches to evaluate (an iterable dataset, ...)
        """
        if batches == 0 and self.batches_done() == 0 and (training or not distributed):
            what = "train on" if training else "evaluate"
            raise ValueError(f"split {self.split!r} yielded no batches to {what} ({describe_loader(self.loader)})")

    def cut_short(self) -> bool:
        r"""
        Whether batches of the epoch are left: known from the length, else by asking the stream for one more (a
        loader without a length, such as an `IterableDataset`; the batch is consumed).
        """
        if self.length is not None:
            return self.batches_done() < self.length
        return self.stream is not None and has_more(self.stream)


def reset_for_epoch(mode: RunnerMode, model: Any, meters: Any, metrics: Any, telemetry: Any, steps: int) -> None:
    r"""
    The start of an epoch for the parts a runner hands over: the model's train/eval mode, fresh meters and
    metrics, and the telemetry's epoch clocks and counters.

    Args:
        mode: The epoch's mode (the model trains in `train` only).
        model: The model, or `None`.
        meters: The running averages (an `AverageMeters`).
        metrics: The current metrics, or `None`.
        telemetry: The runner's [`Telemetry`][danling.runner.reporting.telemetry.Telemetry].
        steps: Optimizer steps taken so far.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from danling.metrics import AverageMeters
        >>> from danling.runner.reporting.telemetry import Telemetry
        >>> model, meters = nn.Linear(1, 1), AverageMeters()
        >>> meters.loss.update(1.0)
        >>> reset_for_epoch(RunnerMode.evaluate, model, meters, None, Telemetry(torch.device("cpu")), steps=0)
        >>> model.training, meters.loss.count
        (False, 0)
    """
    if model is not None:
        model.train(mode == RunnerMode.train)
    meters.reset()
    if metrics is not None:
        metrics.reset()
    telemetry.start_epoch(mode, steps)
