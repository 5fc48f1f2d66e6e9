"""Bookkeeping of gradient-accumulation windows, kept off the runner so the hot loop writes plain slots."""

from __future__ import annotations


class AccumulationWindows:
    r"""
    Tracks the micro-steps of an epoch and where each accumulation window ends.

    Windows hold `accum_steps` micro-steps; when the epoch's length is known, the last window ends with the
    epoch, so a short last window is still stepped and its loss is divided by its real size.

    Args:
        accum_steps: Micro-steps per optimizer step.
        length: Micro-steps in the epoch, or `None` when the loader has no length.

    Examples:
        >>> windows = AccumulationWindows(accum_steps=2, length=5)
        >>> sizes = []
        >>> for _ in range(5):
        ...     sizes.append(windows.size())
        ...     _ = windows.advance()
        >>> sizes
        [2, 2, 2, 2, 1]
        >>> windows.size(), windows.end()  # past the epoch's length: full windows again, from the length on
        (2, 7)
    """

    __slots__ = ("accum_steps", "length", "micro_step", "pending")

    def __init__(self, accum_steps: int = 1, length: int | None = None) -> None:
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be a positive integer, but got {accum_steps!r}")
        self.accum_steps = accum_steps
        self.length = length
        self.micro_step = 0  # micro-steps taken in this epoch
        self.pending = 0  # micro-steps whose gradients have not been stepped yet

    def start(self) -> int:
        r"""
        Micro-step index at which the current window started. Past the epoch's length (a loop of its own that runs
        more micro-steps) windows of `accum_steps` start again from the length.
        """
        micro_step, accum_steps, length = self.micro_step, self.accum_steps, self.length
        if length is not None and micro_step >= length:
            return length + (micro_step - length) // accum_steps * accum_steps
        return micro_step // accum_steps * accum_steps

    def end(self) -> int:
        r"""Micro-step index (exclusive) at which the current window ends: the epoch's end cuts it short."""
        end = self.start() + self.accum_steps
        length = self.length
        if length is not None and self.micro_step < length < end:
            return length
        return end

    def size(self) -> int:
        r"""Number of micro-steps in the current window (what its losses are divided by)."""
        if self.accum_steps == 1:
            return 1
        return self.end() - self.start()

    def is_last(self) -> bool:
        r"""Whether the upcoming micro-step closes its window (gradients must be synchronised)."""
        return self.accum_steps == 1 or self.micro_step + 1 >= self.end()

    def advance(self) -> bool:
        r"""
        Count one micro-step.

        Returns:
            Whether it closed its window, i.e. the optimizer must step now.
        """
        closes = self.accum_steps == 1 or self.micro_step + 1 >= self.end()
        self.micro_step += 1
        self.pending += 1
        return closes
