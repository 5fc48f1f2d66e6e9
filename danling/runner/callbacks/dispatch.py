"""Calling the callbacks of a runner: [`CallbackList`][danling.runner.callbacks.CallbackList] (the runner's
`callbacks` and `add_callback` read and extend it)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from danling.utils.distributed import is_distributed

from ..distributed.consensus import FailureConsensus, RankFailedError, describe
from .base import HOOKS, Callback, CallbackError
from .builtin import ProgressBarCallback

__all__ = ["CallbackList"]

# Hooks every rank reaches at the same point: a failure in them can be agreed on right there.
AGREED_HOOKS = frozenset({"on_train_begin", "on_epoch_begin", "on_epoch_end", "on_evaluate_end", "on_train_end"})


class CallbackList:
    r"""
    The callbacks of one runner, and the calls of their hooks: the built-in ones first, then the user's, each in
    the order added. It never holds the runner: every call receives it.

    For each hook it keeps the callbacks that override it, so a hook no callback implements costs nothing:
    [`hook`][danling.runner.callbacks.dispatch.CallbackList.hook] returns `None` and the loop skips the call.

    Failures: in a single process a hook that raises is re-raised at once as a
    [`CallbackError`][danling.runner.callbacks.CallbackError] chained from the original error. Under
    `torch.distributed` a raise on one rank would leave the others waiting in their next collective, so the
    failure is kept in `failures` (the runner's
    [`FailureConsensus`][danling.runner.distributed.consensus.FailureConsensus])
    and the failing callback is skipped until every rank agrees on it and raises the `CallbackError`:

    - inside [`training`][danling.runner.callbacks.dispatch.CallbackList.training] (`train()`), at the next point
      where the ranks agree anyway: an optimizer-step boundary that checks for preemption or a failed background
      save, the end of the epoch (after its checkpoint), and the end of `train()`. Nothing is added per step.
    - outside it (`evaluate()`, a direct `evaluate_epoch`), right after the next hook every rank calls at the
      same point (`on_epoch_begin`, `on_evaluate_end`): one small all-reduce each.

    Args:
        failures: Where failures wait for the agreement (default: a consensus of its own).

    Examples:
        >>> class Shout(Callback):
        ...     def on_log(self, runner, split, result):
        ...         print(f"{split}: {result['loss']}")
        >>> callbacks = CallbackList()
        >>> shout = callbacks.add(Shout())
        >>> callbacks.dispatch("on_log", None, "train", {"loss": 0.5})
        train: 0.5
        >>> callbacks.hook("on_step_end") is None  # nobody implements it: the loop does not call it
        True
    """

    def __init__(self, failures: FailureConsensus | None = None) -> None:
        self.failures = FailureConsensus() if failures is None else failures
        self.deferring = False  # inside `train()`: failures wait for an existing agreement
        self._builtins: list[Any] = []
        self._users: list[Any] = []
        self._failed: set[int] = set()
        self._methods: dict[str, tuple[tuple[Any, Callable], ...]] = dict.fromkeys(HOOKS, ())
        self._saved: deque[str] = deque()  # committed checkpoints not yet announced (filled by a save thread)

    @property
    def callbacks(self) -> tuple[Any, ...]:
        r"""Every callback, in calling order: the built-in ones, then the user's."""
        return (*self._builtins, *self._users)

    def add(self, callback: Any, builtin: bool = False) -> Any:
        r"""
        Add `callback` (once: adding it again changes nothing); a built-in one is added once per type.

        Returns:
            The callback.

        Raises:
            TypeError: If `callback` is a class, or an object that is no `Callback` and has none of its hooks.
        """
        if isinstance(callback, type):
            raise TypeError(f"add_callback takes a callback object, not the class {callback.__name__}: call it first")
        if not isinstance(callback, Callback) and not any(callable(getattr(callback, h, None)) for h in HOOKS):
            raise TypeError(f"{type(callback).__name__} is not a Callback and has none of its hooks {list(HOOKS)}")
        present = self._builtins if builtin else self._users
        for known in present:
            if known is callback or (builtin and type(known) is type(callback)):
                return known
        present.append(callback)
        self._index()
        return callback

    def find(self, kind: type) -> Any:
        r"""The first callback that is an instance of `kind`, or `None`."""
        return next((callback for callback in self.callbacks if isinstance(callback, kind)), None)

    def progress(self, runner: Any, batches: Iterable, split: str, total: int | None) -> Iterable:
        r"""
        The batches of an epoch of `split`, through the bar of the list's
        [`ProgressBarCallback`][danling.runner.callbacks.ProgressBarCallback] when it shows one, else as they are.
        """
        bar = self.find(ProgressBarCallback)
        return batches if bar is None else bar.wrap(runner, batches, split, total)

    def hook(self, name: str) -> Callable[..., None] | None:
        r"""
        [`dispatch`][danling.runner.callbacks.dispatch.CallbackList.dispatch] bound to hook `name`, or `None` when no
        callback overrides it: what a loop takes once per epoch and calls per batch only when it is not `None`.
        """
        return partial(self.dispatch, name) if self._methods[name] else None

    def dispatch(self, hook: str, runner: Any, *args: Any) -> None:
        r"""
        Call `hook` of every callback that overrides it with `(runner, *args)`: first announcing checkpoints a
        background save committed since the last hook (`on_save_checkpoint`), and after a hook every rank reaches
        together, outside `train()` and under `torch.distributed`, agreeing on failures (a collective).

        Raises:
            CallbackError: If a callback raised (see the class for where and when).
        """
        if self._saved and hook != "on_step_end":
            self.announce_saves(runner)
        self._call(hook, runner, args)
        if hook in AGREED_HOOKS and not self.deferring and is_distributed():
            self.agree(runner.world_size)

    def saved(self, path: str) -> None:
        r"""Note that the checkpoint at `path` is committed (from any thread); announced at the next hook."""
        self._saved.append(path)

    def announce_saves(self, runner: Any) -> None:
        r"""Call `on_save_checkpoint` for every checkpoint noted as committed, oldest first."""
        while self._saved:
            self._call("on_save_checkpoint", runner, (self._saved.popleft(),))

    def agree(self, world_size: int) -> None:
        r"""
        Agree with every rank on kept failures; collective when distributed.

        Raises:
            CallbackError: On every rank, when a rank kept a callback's failure.
            RankFailedError: When a rank kept another failure (a checkpoint save).
        """
        try:
            self.failures.agree()
        except RankFailedError as error:
            converted = CallbackError.from_description(error.problem, world_size)
            if converted is None:
                raise
            raise converted from _original(error)

    @contextmanager
    def training(self, world_size: int) -> Iterator[None]:
        r"""
        The `train()` loop: failures wait for the loop's own agreements, and a failure agreed there
        ([`RankFailedError`][danling.runner.distributed.consensus.RankFailedError]) that a callback caused is raised as
        the
        `CallbackError` it describes.
        """
        self.deferring = True
        self._failed.clear()
        self._index()
        try:
            yield
        except RankFailedError as error:
            converted = CallbackError.from_description(error.problem, world_size)
            if converted is None:
                raise
            raise converted from _original(error)
        finally:
            self.deferring = False

    def _call(self, hook: str, runner: Any, args: tuple) -> None:
        for callback, method in self._methods[hook]:
            try:
                method(runner, *args)
            except RankFailedError:  # agreed on every rank already (a save the callback made)
                raise
            except Exception as error:
                self._fail(callback, hook, runner, error)

    def _fail(self, callback: Any, hook: str, runner: Any, error: Exception) -> None:
        rank = 0 if runner is None else runner.rank
        failure = CallbackError(type(callback).__name__, hook, rank, describe(error))
        if not is_distributed():
            raise failure from error
        self._failed.add(id(callback))  # skipped until every rank has agreed on its failure
        self._index()
        with self.failures.contain():
            raise failure from error

    def _index(self) -> None:
        callbacks = [callback for callback in self.callbacks if id(callback) not in self._failed]
        for hook in HOOKS:
            methods = ((callback, _own(callback, hook)) for callback in callbacks)
            self._methods[hook] = tuple((callback, method) for callback, method in methods if method is not None)


def _own(callback: Any, hook: str) -> Callable | None:
    # The callback's `hook`, unless it is missing or the no-op of `Callback` itself.
    method = getattr(callback, hook, None)
    if not callable(method) or getattr(method, "__func__", None) is getattr(Callback, hook):
        return None
    return method


def _original(error: RankFailedError) -> BaseException | None:
    # The callback's own error on the rank where it was raised (the agreement chains the kept CallbackError), else
    # None: the other ranks have its description only.
    kept = error.__cause__
    return kept.__cause__ if isinstance(kept, CallbackError) else None
