"""Preemption: signals only raise a flag; the training loop stops at the next optimizer step, on every rank."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
from torch import distributed as dist

from ..config import DEFAULT_PREEMPTION_SIGNALS, parse_preemption_signals
from .consensus import FailureConsensus

DEFAULT_SIGNALS = DEFAULT_PREEMPTION_SIGNALS


class Preempted(SystemExit):
    r"""
    Raised by `train()` after a preemption signal, once `latest.pth` is saved; exits with `128 + signal`.

    It is a `SystemExit`, so an uncaught one ends the script quietly with that status (143 for `SIGTERM`),
    which schedulers read as "interrupted": requeue the job with `auto_resume=True` to continue.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def parse_signals(names: Any) -> list[signal.Signals]:
    r"""
    Signals named by `config.preemption_signals`: names (`"SIGTERM"`, `"USR1"`) or numbers; `None`/`[]` for none.

    The same rules as the config key (see
    [`parse_preemption_signals`][danling.runner.config.parsing.parse_preemption_signals]).

    Raises:
        ValueError: On a name or number that is not a signal of this platform, or cannot be caught.

    Examples:
        >>> [s.name for s in parse_signals(["SIGTERM", "USR1", 2])]
        ['SIGTERM', 'SIGUSR1', 'SIGINT']
        >>> parse_signals("SIGFOO")
        Traceback (most recent call last):
        ValueError: config key 'preemption_signals' names 'SIGFOO', which is not a signal that can be caught here; ...
    """
    return [signal.Signals[name] for name in parse_preemption_signals(names)]


class PreemptionHandler:
    r"""
    Turns preemption signals into a flag that the loop polls at optimizer-step boundaries.

    The signal handler only records the signal: nothing is saved from inside it. A second signal while the first
    is pending is handled as it would be without this handler (by default: the process ends), so a stuck
    process can still be stopped. `should_stop()` is cheap in a single process (no collective), and the runner's
    loop there reads `received` itself and asks only once it is set. Distributed, it all-reduces one flag (MAX) so
    that every rank stops at the same step even when the signal reached one rank only; the same all-reduce carries
    whether any rank failed (see [`FailureConsensus`][danling.runner.distributed.consensus.FailureConsensus]). The
    runner asks
    every `preemption_check_steps` optimizer steps and at epoch ends, over a `gloo` group
    ([`cpu_channel`][danling.runner.distributed.consensus.cpu_channel]) with a CPU flag: no per-step collective, and
    reading
    the flag never synchronises the host with an accelerator.

    Args:
        signals: Signals to catch (see [`parse_signals`][danling.runner.distributed.preemption.parse_signals]).
        device: Device of the flag tensor for the all-reduce (`"cpu"` for a `gloo` group).
        grace: Seconds after a signal within which the loop must reach a step boundary; past it the process is
            taken as stuck and the signal gets its previous behaviour (terminate). `None` waits forever. The
            runner uses `dist_timeout` when distributed: by then any collective has failed anyway.
        group: Process group of every rank for the all-reduce (`None`: the default group).

    Examples:
        >>> import os
        >>> handler = PreemptionHandler(["SIGUSR1"])
        >>> with handler:
        ...     os.kill(os.getpid(), signal.SIGUSR1)
        ...     handler.should_stop()
        True
        >>> handler.signal_name
        'SIGUSR1'
    """

    def __init__(
        self,
        signals: Iterable[Any] = DEFAULT_SIGNALS,
        device: torch.device | str = "cpu",
        grace: float | None = None,
        group: Any = None,
    ) -> None:
        self.signals = parse_signals(list(signals))
        self.device = torch.device(device)
        self.grace = grace
        self.group = group
        self.received: int | None = None
        self.acknowledged = False
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> PreemptionHandler:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def install(self) -> bool:
        r"""Catch the signals (main thread only; elsewhere nothing is installed). Returns whether it did."""
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._record)
        return True

    def uninstall(self) -> None:
        r"""Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Async-signal context: record and return; the loop saves and stops at the next step boundary. A second
        # signal while one is pending gets the previous behaviour (usually: terminate now), for a stuck process.
        if self.received is not None:
            previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
            signal.signal(signum, previous)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        if self.grace is not None:
            timer = threading.Timer(self.grace, self._escalate, (signum,))
            timer.daemon = True
            timer.start()

    def _escalate(self, signum: int) -> None:
        # The loop never reached a step boundary within the grace period: the process is stuck, end it.
        # (Runs in a timer thread: signal the main thread again, whose handler then gives up waiting.)
        if not self.acknowledged:
            os.kill(os.getpid(), signum)

    @property
    def active(self) -> bool:
        r"""Whether any signal is caught (else the loop skips the check entirely)."""
        return bool(self._previous)

    @property
    def signal_name(self) -> str | None:
        r"""Name of the signal received, or `None`."""
        return None if self.received is None else signal.Signals(self.received).name

    def should_stop(self, failures: FailureConsensus | None = None) -> bool:
        r"""
        Whether any rank received a signal. Collective when distributed: call it at the same points on all ranks.

        Args:
            failures: This rank's [`FailureConsensus`][danling.runner.distributed.consensus.FailureConsensus], agreed
                on in the same all-reduce as the flag (no extra collective): when any rank failed, every rank raises
                [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError].
        """
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            if failures is not None and failures.failed:
                failures.agree()  # raises the kept failure
            self.acknowledged = self.received is not None
            return self.acknowledged
        failures = FailureConsensus() if failures is None else failures
        agreed = failures.agree(self.received or 0, self.device, self.group)
        if agreed and self.received is None:
            self.received = agreed
        self.acknowledged = bool(agreed)
        return self.acknowledged
