"""What a callback is: [`Callback`][danling.runner.callbacks.Callback], its hooks, and the error a failing one
raises on every rank ([`CallbackError`][danling.runner.callbacks.CallbackError])."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["Callback", "CallbackError", "HOOKS"]

# Every hook, in the order a training run first calls them.
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_step_end",
    "on_log",
    "on_epoch_end",
    "on_evaluate_end",
    "on_save_checkpoint",
    "on_train_end",
)


class Callback:
    r"""
    The extension point of a runner: subclass it, override the hooks you need, and pass an instance to the runner
    (`TorchRunner(config, callbacks=[cb])`) or add it later ([`add_callback`][danling.runner.BaseRunner.add_callback]).

    Every hook receives the runner first and does nothing here. Hooks run on every process, in the order the
    callbacks were added (after the built-in ones: the log lines, TensorBoard and the progress bar, see
    [`danling.runner.callbacks.builtin`][danling.runner.callbacks.builtin]); check `runner.is_main_process` for
    work that only one process should do. A hook that raises stops the run on every rank with a
    [`CallbackError`][danling.runner.callbacks.CallbackError] naming the callback, the hook and the rank.

    | hook | when | cost to keep in mind |
    | --- | --- | --- |
    | `on_train_begin(runner)` | `train()` starts, after the banner | once |
    | `on_epoch_begin(runner, split)` | a train or evaluate epoch of `split` starts | once per split and epoch |
    | `on_step_end(runner, split)` | after every training batch (`train_step`) | per batch: keep it free of syncs |
    | `on_log(runner, split, result)` | a step log line is produced (`log_interval`) | per log step |
    | `on_epoch_end(runner, split, result)` | a train split's epoch ends | once per split and epoch |
    | `on_evaluate_end(runner, split, result)` | an evaluate split's epoch ends | once per split and epoch |
    | `on_save_checkpoint(runner, path)` | a checkpoint is committed (on the process that wrote it) | per save |
    | `on_train_end(runner)` | `train()` finishes, also when it stops early | once |

    Examples:
        A callback that records the training loss of every epoch:

        >>> import tempfile
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from danling.runner import Callback, TorchRunner
        >>> class EpochLosses(Callback):
        ...     def __init__(self):
        ...         self.losses = []
        ...     def on_epoch_end(self, runner, split, result):
        ...         self.losses.append((runner.epochs, split, result["loss"]))
        >>> class Runner(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.datasets.train = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
        ...         self.model = torch.nn.Linear(2, 1)
        ...         self.criterion = torch.nn.MSELoss()
        ...         self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        >>> losses = EpochLosses()
        >>> config = {"log": False, "dir": tempfile.mkdtemp(), "epoch_end": 2, "dataloader": {"batch_size": 4}}
        >>> runner = Runner(config, callbacks=[losses])
        >>> _ = runner.train()
        >>> [(epoch, split) for epoch, split, _ in losses.losses]
        [(0, 'train'), (1, 'train')]
        >>> all(isinstance(loss, float) for _, _, loss in losses.losses)
        True
    """

    def on_train_begin(self, runner: Any) -> None:
        r"""
        [`train`][danling.runner.TorchRunner.train] starts: after the banner and `config.yaml`, before the first
        epoch (not called for a run that is already complete).

        Args:
            runner: The runner.
        """

    def on_epoch_begin(self, runner: Any, split: str) -> None:
        r"""
        An epoch of `split` starts (training or evaluation: `runner.mode` tells which), once its meters and
        metrics are reset and before its first batch.

        Args:
            runner: The runner.
            split: The split about to run.
        """

    def on_step_end(self, runner: Any, split: str) -> None:
        r"""
        After every training batch (each [`train_step`][danling.runner.TorchRunner.train_step]; with
        `accum_steps > 1` several run per optimizer step, and `runner.steps` counts optimizer steps).

        Nothing is computed for it: the loss of the step is a tensor still on the device. Reading a value here
        (`.item()`, `float(...)`, `runner.get_step_result()`) waits for the device on every batch; read results
        in [`on_log`][danling.runner.callbacks.base.Callback.on_log] instead, which runs every `log_interval` batches.
        When no callback overrides this hook, the loop does not call it at all.

        Args:
            runner: The runner.
            split: The train split running.
        """

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        r"""
        A step log line is produced (every `log_interval` batches, in training and evaluation): `result` is the
        step result the line shows (the meters and metrics of the latest batch, `lr` and throughput), on every
        process (the line itself is written by the main process only).

        Args:
            runner: The runner.
            split: The split running.
            result: The step result, `metric -> value`.
        """

    def on_epoch_end(self, runner: Any, split: str, result: Mapping) -> None:
        r"""
        A train split's epoch ends: `result` is its epoch result (averaged over every rank), as it will be
        recorded in `runner.results`; it holds `partial: True` when `step_end` cut the epoch short.

        Args:
            runner: The runner.
            split: The train split that ran.
            result: Its epoch result, `metric -> value`.
        """

    def on_evaluate_end(self, runner: Any, split: str, result: Mapping) -> None:
        r"""
        An evaluate split's epoch ends, in `train()` or in [`evaluate`][danling.runner.TorchRunner.evaluate]:
        `result` is its result (every sample counted once, averaged over every rank).

        Args:
            runner: The runner.
            split: The split evaluated.
            result: Its result, `metric -> value`.
        """

    def on_save_checkpoint(self, runner: Any, path: str) -> None:
        r"""
        A checkpoint is committed at `path` (`checkpoint_dir/latest.pth`, or a `latest.dcp` directory when
        sharded): on the process that wrote it (the main process; every rank with sharded checkpoints), at the
        end of an epoch, at a `save_steps` boundary or on a call to `save_checkpoint`. With `async_save` it is
        called on the training thread, at the next hook after the background save committed; a save that failed
        calls nothing.

        Args:
            runner: The runner.
            path: The committed checkpoint.
        """

    def on_train_end(self, runner: Any) -> None:
        r"""
        [`train`][danling.runner.TorchRunner.train] finishes: after the last epoch, also when it stops early
        (`step_end`, `patience`), once every background save has committed. Not called when training raises
        (a failure, a preemption).

        Args:
            runner: The runner.
        """


# The description of a CallbackError that another rank receives: "CallbackError: callback ... on rank R: ...".
_DESCRIBED = re.compile(r"CallbackError: callback (?P<callback>\S+) failed in (?P<hook>\w+) on rank (?P<rank>\d+): ")


class CallbackError(RuntimeError):
    r"""
    A callback raised: the message names the callback (its class), the hook, the rank and the original error.

    In a single process it is raised at once, chained from the original error. Under `torch.distributed` every
    rank raises it at the same point (see [`CallbackList`][danling.runner.callbacks.CallbackList]), so no rank is
    left waiting in a collective; on the failing rank it is chained from the original error.

    Attributes:
        callback: The class name of the callback.
        hook: The hook that raised, e.g. `on_epoch_end`.
        rank: The rank it raised on (the lowest one, when several did).
        problem: The original error, as `"{type}: {message}"`.
        world_size: The number of processes that stop (`None`: raised on the failing rank alone).

    Examples:
        >>> str(CallbackError("Uploader", "on_save_checkpoint", 0, "OSError: no network"))
        'callback Uploader failed in on_save_checkpoint on rank 0: OSError: no network'
        >>> str(CallbackError("Uploader", "on_epoch_end", 1, "ValueError: bad", world_size=2))
        'callback Uploader failed in on_epoch_end on rank 1 of 2: ValueError: bad; every rank stops'
    """

    def __init__(self, callback: str, hook: str, rank: int, problem: str, world_size: int | None = None) -> None:
        where = f"rank {rank}" if world_size is None else f"rank {rank} of {world_size}"
        message = f"callback {callback} failed in {hook} on {where}: {problem}"
        if world_size is not None and world_size > 1:
            message += "; every rank stops"
        super().__init__(message)
        self.callback = callback
        self.hook = hook
        self.rank = rank
        self.problem = problem
        self.world_size = world_size

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.callback, self.hook, self.rank, self.problem, self.world_size)

    @classmethod
    def from_description(cls, description: str, world_size: int) -> CallbackError | None:
        r"""
        The error every rank raises from the description of one rank's `CallbackError` (what an agreement across
        ranks carries), or `None` when `description` describes another error.

        Examples:
            >>> error = CallbackError("Uploader", "on_log", 1, "ValueError: x\ny")
            >>> str(CallbackError.from_description(f"CallbackError: {error}", world_size=2))
            'callback Uploader failed in on_log on rank 1 of 2: ValueError: x\ny; every rank stops'
            >>> CallbackError.from_description("OSError: disk full", world_size=2) is None
            True
        """
        match = _DESCRIBED.match(description)
        if match is None:
            return None
        problem = description[match.end() :]
        return cls(match["callback"], match["hook"], int(match["rank"]), problem, world_size)
