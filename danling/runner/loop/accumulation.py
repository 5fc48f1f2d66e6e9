"""Bookkeeping of gradient-accumulation windows, kept off the runner so the hot loop writes plain slots."""

from __future__ import annotations


class AccumulationWindows:
    r"""
    Tracks the micro-steps of an epoch and where each accumulation window ends.

    Windows hold `accum_steps` micro-steps; when the epoch's length is known, the last window ends with the
    epoch, so a short last window is still stepped and its loss is divided by its real size.

    `accum_steps` and `length` are fixed for the object's life (each epoch makes a new one). A resumed epoch starts
    part-way ([`resume_at`][danling.runner.loop.accumulation.AccumulationWindows.resume_at]): its windows start
    there.

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

    __slots__ = ("_end", "_start", "accum_steps", "length", "micro_step", "origin", "pending")

    def __init__(self, accum_steps: int = 1, length: int | None = None) -> None:
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be a positive integer, but got {accum_steps!r}")
        self.accum_steps = accum_steps
        self.length = length
        self.micro_step = 0  # micro-steps taken in this epoch (a resumed epoch sets it)
        self.origin = 0  # where the windows start: 0, or where a resumed epoch started
        self.pending = 0  # micro-steps whose gradients have not been stepped yet
        # The window that holds `micro_step`, as [start, end): located again only when `micro_step` leaves it,
        # so the per-micro-step questions below are one comparison, not a division each.
        self._start = self._end = 0

    def _window(self) -> int:
        # The end of the window holding `micro_step`, locating it first if `micro_step` has left the cached one.
        micro_step = self.micro_step
        if self._start <= micro_step < self._end:
            return self._end
        accum_steps, length = self.accum_steps, self.length
        if length is not None and micro_step >= length:  # past the length: windows start again from it
            start = length + (micro_step - length) // accum_steps * accum_steps
        else:
            origin = self.origin
            start = origin + (micro_step - origin) // accum_steps * accum_steps
        end = start + accum_steps
        if length is not None and micro_step < length < end:  # the epoch's end cuts the window short
            end = length
        self._start, self._end = start, end
        return end

    def resume_at(self, micro_step: int) -> None:
        r"""
        Continue an epoch at `micro_step`, with windows of `accum_steps` from there: after a resume on another
        world size or batch size, the micro-steps left need not start on a multiple of `accum_steps` of the new
        epoch's length.

        Examples:
            >>> windows = AccumulationWindows(accum_steps=2, length=12)
            >>> windows.resume_at(3)
            >>> windows.start(), windows.end()
            (3, 5)
        """
        self.micro_step = self.origin = micro_step
        self._start = self._end = 0

    def start(self) -> int:
        r"""
        Micro-step index at which the current window started. Past the epoch's length (a loop of its own that runs
        more micro-steps) windows of `accum_steps` start again from the length.
        """
        self._window()
        return self._start

    def end(self) -> int:
        r"""Micro-step index (exclusive) at which the current window ends: the epoch's end cuts it short."""
        return self._window()

    def size(self) -> int:
        r"""Number of micro-steps in the current window (what its losses are divided by)."""
        if self.accum_steps == 1:
            return 1
        end = self._end if self._start <= self.micro_step < self._end else self._window()  # no call when cached
        return end - self._start

    def is_last(self) -> bool:
        r"""Whether the upcoming micro-step closes its window (gradients must be synchronised)."""
        micro_step = self.micro_step
        if self.accum_steps == 1:
            return True
        return micro_step + 1 >= (self._end if self._start <= micro_step < self._end else self._window())

    def advance(self) -> bool:
        r"""
        Count one micro-step.

        Returns:
            Whether it closed its window, i.e. the optimizer must step now.
        """
        micro_step = self.micro_step
        if self.accum_steps == 1:
            closes = True
        else:
            closes = micro_step + 1 >= (self._end if self._start <= micro_step < self._end else self._window())
        self.micro_step = micro_step + 1
        self.pending += 1
        return closes
