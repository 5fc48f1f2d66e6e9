"""The epoch schedule of [`TorchRunner.train`][danling.runner.TorchRunner.train]: which epochs run, what each runs,
what is saved after it, and when training stops.

The runner holds a [`TrainingLoop`][danling.runner.loop.training.TrainingLoop] and its `train` delegates to it. The loop
calls back through the runner's public methods (`train_epoch`, `evaluate_epoch`, `append_result`,
`save_checkpoint`...), so a subclass's override is the one that runs, and calls the callbacks' `on_train_begin` and
`on_train_end` (the epochs call the others). The batches of an epoch are the runner's own
[`train_epoch`][danling.runner.TorchRunner.train_epoch]: nothing here runs per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from itertools import count
from typing import Any

from chanfig import NestedDict
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..reporting import results as res


class TrainingLoop:
    r"""
    The epochs of a training run: from `epoch_begin` to `epoch_end` (or on until `step_end`), each training the
    train splits and evaluating the evaluate splits, then recording, saving and deciding whether to stop.

    Args:
        runner: The runner it trains.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from danling.runner import TorchRunner
        >>> runner = TorchRunner({"log": False, "dir": tempfile.mkdtemp(), "epoch_begin": 2, "epoch_end": 4})
        >>> list(runner._training.epochs())
        [2, 3]
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def run(self, train_splits: list[str], evaluate_splits: list[str]) -> NestedDict:
        r"""The body of [`train`][danling.runner.TorchRunner.train], with the splits resolved."""
        runner = self.runner
        epochs = self.epochs()
        runner.check_score_split([*train_splits, *evaluate_splits])
        complete = self.completion()
        if complete is not None:
            runner.log(f"the run is already complete ({complete}): nothing to train; returning its results")
            return runner.results
        runner.announce("train")
        recovery, callbacks = runner._recovery, runner._callbacks
        recovery.check_world_size()
        callbacks.dispatch("on_train_begin", runner)  # distributed: every rank agrees on its failures here
        # Inside, a callback's failure on one rank waits for the loop's own agreements (see `CallbackList`).
        training = callbacks.training(runner.world_size)
        with training, recovery.catch_preemption(), recovery.explain_timeouts(), self.saves_drained():
            self.run_epochs(epochs, train_splits, evaluate_splits)
        callbacks.dispatch("on_train_end", runner)  # after the last save committed; agreed here too
        return runner.results

    def run_epochs(self, epochs: Iterable[int], train_splits: list[str], evaluate_splits: list[str]) -> None:
        r"""Run, record and save `epochs` until they end, `step_end` is reached or `patience` runs out."""
        runner = self.runner
        for epoch in epochs:
            if self.step_end_reached():
                reached = f"step_end ({runner.step_end}) already reached at step {runner.steps}"
                runner.log(f"{reached}: nothing left to train")
                break
            runner.epochs = epoch
            result = self.run_epoch(train_splits, evaluate_splits)
            self.record_epoch(epoch, result)
            if self.should_stop():
                break

    def record_epoch(self, epoch: int, result: NestedDict) -> None:
        r"""
        After an epoch: append and log its result, step a plateau scheduler, save the checkpoint and then the
        results that describe it, and stop on a preemption request (or a failure of any rank, a callback's
        included). Its TensorBoard scalars were written as each split ended (`TensorBoardCallback`).
        """
        runner = self.runner
        recovery = runner._recovery
        runner.append_result(result, index=epoch)
        self.step_plateau_scheduler()
        runner.log(runner.format_epoch_result(result))
        # Commit order: the checkpoint first, then the JSON files that describe it.
        recovery.end_of_epoch()
        with recovery.contain():  # a failed save stops every rank at the agreement just below
            runner.save_checkpoint(epochs=epoch)
            self.save_result_after_checkpoint()
        if runner.writer is not None:
            runner.writer.flush()
        recovery.stop_if_preempted()

    def saves_drained(self) -> AbstractContextManager:
        r"""A context that returns (or raises, preemption included) only once a background save has committed."""
        saver = self.runner.async_saver
        return nullcontext() if saver is None else saver.draining()

    def save_result_after_checkpoint(self) -> None:
        r"""Save the results now, or with `async_save` once the checkpoint just submitted is committed."""
        runner = self.runner
        if runner.async_saver is None:
            runner.save_result()
        elif runner.is_main_process:  # the results of now, written once the checkpoint is committed
            runner.after_checkpoint(runner.result_writer())

    def epochs(self) -> Iterable[int]:
        r"""
        The epochs to run: `range(epoch_begin, epoch_end)`, or counting up from `epoch_begin` without `epoch_end`.

        Raises:
            ValueError: If neither `epoch_end` nor `step_end` is set, or `epoch_end < epoch_begin`.
        """
        runner = self.runner
        if runner.epoch_end is None and runner.step_end is None:
            raise ValueError("train() needs config.epoch_end or config.step_end to know when to stop")
        if runner.epoch_end is None:
            return count(runner.epoch_begin)
        if runner.epoch_end < runner.epoch_begin:
            raise ValueError(
                f"epoch_end ({runner.epoch_end}) is before epoch_begin ({runner.epoch_begin}): nothing to train"
            )
        return range(runner.epoch_begin, runner.epoch_end)

    def run_epoch(self, train_splits: list[str], evaluate_splits: list[str]) -> NestedDict:
        r"""Train the train splits, then evaluate the evaluate splits; the epoch's result, `split -> metrics`."""
        runner = self.runner
        # Train splits a mid-epoch checkpoint had finished keep their results (see `Recovery.train_splits`).
        result = runner._recovery.train_splits(train_splits, runner.train_epoch, self.step_end_reached)
        for split in evaluate_splits:
            result[split] = runner.evaluate_epoch(split)
        return result

    def completion(self) -> str | None:
        r"""
        Why a run that already has results has nothing left to train (`epoch_end` or `step_end` reached, or
        `patience` exhausted), or `None` when it has.

        Examples:
            >>> import tempfile
            >>> from danling.runner import TorchRunner
            >>> runner = TorchRunner({"log": False, "dir": tempfile.mkdtemp(), "epoch_begin": 3, "epoch_end": 3})
            >>> runner._training.completion() is None  # no results: a run that never trained
            True
            >>> runner.append_result({"val": {"loss": 1.0}}, index=2)
            >>> runner._training.completion()
            'epoch_end 3 reached'
        """
        runner = self.runner
        if not runner.results:
            return None
        if runner.epoch_end is not None and runner.epoch_begin >= runner.epoch_end:
            return f"epoch_end {runner.epoch_end} reached"
        if self.step_end_reached():
            return f"step_end {runner.step_end} reached at step {runner.steps}"
        patience = runner.config.get("patience")
        if patience is not None and res.epochs_without_improvement(runner.scores or {}, runner.best_fn) >= patience:
            return f"stopped early: no improvement within patience {patience}"
        return None

    def step_end_reached(self) -> bool:
        r"""Whether `step_end` is set and the optimizer steps reached it."""
        runner = self.runner
        return runner.step_end is not None and runner.steps >= runner.step_end

    def step_plateau_scheduler(self) -> None:
        r"""Step a `ReduceLROnPlateau` scheduler with the epoch's score (other schedulers step per optimizer step)."""
        runner = self.runner
        if isinstance(runner.scheduler, ReduceLROnPlateau) and runner.latest_score is not None:
            runner.scheduler.step(runner.latest_score)

    def should_stop(self) -> bool:
        r"""Whether to stop after this epoch: `step_end` reached, or `patience` epochs without improvement."""
        runner = self.runner
        if self.step_end_reached():
            return True
        patience = runner.config.get("patience")
        if patience is None or not runner.results:
            return False
        waited = res.epochs_without_improvement(runner.scores or {}, runner.best_fn)
        if waited >= patience:
            runner.log(f"stopping early: no improvement in the last {waited} epochs (patience {patience})")
            return True
        return False
