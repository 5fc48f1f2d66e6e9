"""The built-in callbacks: the step lines of the log, TensorBoard and the progress bar (and, in modules of their own,
`metrics.jsonl` and the experiment trackers).

The runner adds them itself when they are on ([`LogCallback`][danling.runner.callbacks.LogCallback] with `log`,
[`TensorBoardCallback`][danling.runner.callbacks.TensorBoardCallback] with `tensorboard`,
[`ProgressBarCallback`][danling.runner.callbacks.ProgressBarCallback] when a bar is shown), on the main process,
before the user's callbacks. They use only what any callback can: the hooks' arguments and the runner's public
attributes (`logger`, `writer`, `mode`, `steps`, `format_log_step`...), so each is an example of writing one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ..reporting.telemetry import step_view, write_scalars
from ..utils import RunnerMode
from .base import Callback

__all__ = ["LogCallback", "TensorBoardCallback", "ProgressBarCallback"]


class LogCallback(Callback):
    r"""
    Writes the line of every log step to the runner's log (stdout and `run.log`, main process only):
    `training on train [12/99]` then `loss: 0.1234`, `lr: 3.2e-04`, `samples/s: 812.5`, `time: 0.012 s/step`.

    The epoch summary (`epoch [3/9]` and a line per split) is written when the epoch is recorded, with the
    results it describes.

    Examples:
        >>> import tempfile
        >>> from danling.runner import BaseRunner
        >>> runner = BaseRunner({"dir": tempfile.mkdtemp()})  # logging on
        >>> [type(callback).__name__ for callback in runner.callbacks]
        ['LogCallback', 'MetricsFileCallback']
        >>> runner.close()
    """

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        if runner.logger is not None:  # nothing to format when the log was closed
            runner.log(runner.format_log_step(result, split))


class TensorBoardCallback(Callback):
    r"""
    Writes to the runner's TensorBoard writer (`runner.writer`, main process only), at the global step (one
    x-axis for all): the step result of training log steps as `{split}/step/{metric}` (dataset-level metrics,
    meaningless on one batch, left out), every epoch result as `{split}/{metric}`, and at the end of training the
    hyper-parameters with the best score (`hparams/best_{score_name}`).

    A writer you assign yourself is written too once you add this callback.
    """

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        if runner.writer is not None and runner.mode == RunnerMode.train:
            write_scalars(runner.writer, step_view(result), f"{split}/step", runner.steps)

    def on_epoch_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.write_epoch(runner, split, result)

    def on_evaluate_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.write_epoch(runner, split, result)

    def on_train_end(self, runner: Any) -> None:
        runner.write_hparams()

    @staticmethod
    def write_epoch(runner: Any, split: str, result: Mapping) -> None:
        r"""Write an epoch result of `split` as `{split}/{metric}` at the global step, and flush."""
        if runner.writer is not None:
            write_scalars(runner.writer, result, split, runner.steps)
            runner.writer.flush()


class ProgressBarCallback(Callback):
    r"""
    A tqdm bar over the batches of each epoch (training, evaluation, inference) on the main process, showing the
    loss and throughput of the latest log step.

    A bar advances with every batch, and only training has a per-batch hook, so the loops hand their batches to
    [`wrap`][danling.runner.callbacks.builtin.ProgressBarCallback.wrap] (tqdm's own iterator is its cheapest form);
    [`on_log`][danling.runner.callbacks.base.Callback.on_log] then puts the step result on the bar.

    `config.progress_bar`: `True` shows it, `False` never, `None` (default) only on an interactive terminal.

    Attributes:
        bar: The bar of the epoch running, or `None`.
    """

    def __init__(self) -> None:
        self.bar: Any = None

    @staticmethod
    def shown(runner: Any) -> bool:
        r"""Whether `runner` shows a bar: `config.progress_bar` on the main process (`None`: on a terminal)."""
        setting = runner.config.get("progress_bar")
        if not runner.is_main_process or setting is False:
            return False
        return setting is True or sys.stderr.isatty()

    def wrap(self, runner: Any, batches: Iterable, split: str, total: int | None) -> Iterable:
        r"""
        The batches of an epoch of `split`, through a new bar when one is shown (named by the split, and by the
        mode when they differ: `train`, `evaluate val`, `infer val`).

        Returns:
            The bar (it iterates the batches), or `batches` when no bar is shown.
        """
        self.bar = None
        if not self.shown(runner):
            return batches
        from tqdm.auto import tqdm

        desc = split if split == str(runner.mode) else f"{runner.mode} {split}"
        self.bar = tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return self.bar

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(runner.format_bar_postfix(result), refresh=False)
