"""The checkpoint subsystem of a [`TorchRunner`][danling.runner.TorchRunner]: scaler, EMA, RNG and position, shards.

It extends [`RunnerCheckpoints`][danling.runner.checkpointing.runner_state.RunnerCheckpoints] with what PyTorch
training adds to a checkpoint, and with sharded (`torch.distributed.checkpoint`) checkpoints under FSDP2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from warnings import warn

from ..distributed.processes import resolve_device
from . import files as ckpt
from .manager import CheckpointManager
from .replan import check_resume_schedule, continue_schedule, follows_plan, group_lrs, kept_lr_note, replan
from .restore import POSITION
from .runner_state import RunnerCheckpoints
from .sharded import (
    ShardedCheckpointManager,
    export_model,
    is_sharded_checkpoint,
    load_sharded,
    read_sharded_model,
    sharded_state,
)


class TorchRunnerCheckpoints(RunnerCheckpoints):
    r"""
    The checkpointing of a [`TorchRunner`][danling.runner.TorchRunner]: besides the base parts, the grad scaler,
    the EMA, the random states and the position in the epoch (through the runner's `Recovery`), with the model,
    optimizer and EMA converted by the parallelism policy; sharded checkpoints when the model is sharded.

    Like its base it keeps no runner; it works with the runner's
    [`Recovery`][danling.runner.loop.interruptions.Recovery] (random states and position), parallelism policy and
    optimizer stepper (whose loss guard it asks), which the runner hands it with
    [`connect`][danling.runner.checkpointing.torch_state.TorchRunnerCheckpoints.connect] once they exist (after the
    config of a checkpoint to resume is read).

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from danling.runner import TorchRunner
        >>> class Runner(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.model = torch.nn.Linear(2, 1)
        >>> runner = Runner({"log": False, "dir": tempfile.mkdtemp()})
        >>> sorted(runner.state_dict())
        ['model', 'position', 'results', 'rng', 'runner']
    """

    fresh_lrs: list[dict[str, Any]] | None = None  # the optimizer's learning rates before a load
    replanned: Any = None  # how the last load continued a schedule rebuilt for a new plan (a `Replan`), if it did
    recovery: Any = None  # the runner's `Recovery`: random states and position
    parallel: Any = None  # the runner's parallelism policy: full or sharded states of the model and optimizer
    stepper: Any = None  # the runner's `OptimizerStepper`: no checkpoint holds weights of a non-finite loss

    def connect(self, recovery: Any, parallel: Any, stepper: Any) -> None:
        r"""
        Take the runner's [`Recovery`][danling.runner.loop.interruptions.Recovery], parallelism policy and
        [`OptimizerStepper`][danling.runner.loop.stepping.OptimizerStepper] (built once the run's config is final).
        """
        self.recovery, self.parallel, self.stepper = recovery, parallel, stepper

    def map_location(self, runner: Any) -> Any:
        r"""
        Tensors saved on an accelerator are read onto the runner's device (`cuda:LOCAL_RANK`, or the CPU on a machine
        without a GPU), those saved on the CPU stay there: see
        [`restore_location`][danling.runner.checkpointing.files.restore_location]. Available during `__init__` already,
        when `config.checkpoint` is read.
        """
        device = getattr(runner, "device", None)  # a runner whose `__init__` is running has none yet
        if device is None:  # the device the runner is about to choose
            device = resolve_device(runner.config.get("device"), runner.local_rank)
        return ckpt.restore_location(device)

    def state_dict(self, runner: Any) -> dict[str, Any]:
        r"""
        The full checkpoint: see [`assemble`][danling.runner.checkpointing.torch_state.TorchRunnerCheckpoints.assemble].

        Raises:
            FloatingPointError: If the training loss went NaN/inf: such weights are never checkpointed.
        """
        return self.assemble(runner, sharded=False)

    def assemble(self, runner: Any, sharded: bool) -> dict[str, Any]:
        r"""
        The one place a checkpoint is put together from its named parts: the config, results, scheduler, grad
        scaler, random states and position (whole, from the main process), and the model, optimizer and EMA, full
        (gathered to rank 0 by the parallelism policy) or, for `sharded` checkpoints, as sharded state dicts that
        every rank writes its part of.

        Raises:
            FloatingPointError: If the training loss went NaN/inf: such weights are never checkpointed.
        """
        self.stepper.loss_guard.check(False)  # this rank's losses: no collective (the loop checks all ranks first)
        state = self.host_parts(runner) if runner.is_main_process or not sharded else {}
        modules = {ckpt.EMA: runner.ema} if runner.ema is not None else {}
        if sharded:
            state.update(sharded_state(runner.unwrap(runner.model), runner.optimizer, modules=modules))
            return state
        state.update(self.module_parts(runner))
        state.update({key: module.state_dict() for key, module in modules.items()})
        self.parallel.export_state(state, runner.model, runner.optimizer, runner.ema)
        return state

    def host_parts(self, runner: Any) -> dict[str, Any]:
        r"""The base's host parts, the grad scaler (under fp16) and every rank's random state and position."""
        state = super().host_parts(runner)
        if runner.scaler.is_enabled():
            state[ckpt.SCALER] = runner.scaler.state_dict()
        self.recovery.add_to(runner, state)
        return state

    def build_manager(self, runner: Any) -> CheckpointManager:
        r"""A [`ShardedCheckpointManager`][danling.runner.checkpointing.ShardedCheckpointManager] when the model is
        sharded, else the manager of single files."""
        if getattr(self.parallel, "sharded", False):
            return ShardedCheckpointManager(runner.checkpoint_dir)
        return super().build_manager(runner)

    def checkpoint_state(self, runner: Any) -> Mapping:
        r"""The body of [`checkpoint_state`][danling.runner.TorchRunner.checkpoint_state]."""
        if not runner.checkpoint_manager.collective:
            return runner.state_dict()  # through the runner: a subclass's override is what a save writes
        return self.assemble(runner, sharded=True)

    def export_model(self, runner: Any, path: str | None) -> str | None:
        r"""The body of [`export_model`][danling.runner.TorchRunner.export_model]."""
        path = os.path.join(runner.checkpoint_dir, "model.pth") if path is None else os.fsdecode(path)
        return export_model(runner.unwrap(runner.model), path)

    def load_state_dict(self, runner: Any, state: Mapping) -> None:
        r"""The body of [`load_state_dict`][danling.runner.TorchRunner.load_state_dict]."""
        self.fresh_lrs = group_lrs(runner.optimizer) if runner.optimizer is not None else None
        state = self.parallel.import_state(state, runner.model, runner.optimizer, runner.ema)
        super().load_state_dict(runner, state)
        if runner.ema is not None and ckpt.EMA in state:
            runner.ema.load_state_dict(state[ckpt.EMA])

    def restore_host_parts(self, runner: Any, state: Mapping) -> None:
        r"""
        The one place the host parts of a checkpoint are restored, from a file or a sharded directory: scheduler
        (rebuilt for a new plan), results, grad scaler, random states and position.
        """
        super().restore_host_parts(runner, state)
        if ckpt.SCALER in state and runner.scaler.is_enabled():
            runner.scaler.load_state_dict(state[ckpt.SCALER])
        self.recovery.restore(runner, state)

    def load_scheduler(self, runner: Any, state: Mapping) -> None:
        r"""
        Restore the scheduler; when the plan changed since the checkpoint (`total_steps`, or the global batch) and
        `resume_schedule` is `"rebuild"` (the default), the scheduler the runner built for the new plan is advanced
        to the matching position instead (see [`replan`][danling.runner.checkpointing.replan.replan]).
        """
        self.replanned = None
        mode = check_resume_schedule(runner.config.get("resume_schedule"))
        scheduler, fresh_lrs, self.fresh_lrs = runner.scheduler, self.fresh_lrs, None
        if mode == "rebuild" and follows_plan(scheduler) and fresh_lrs is not None:
            saved_plan = (state.get(POSITION) or {}).get("plan")
            steps = int((state.get(ckpt.RUNNER) or {}).get("steps", 0))
            self.replanned = replan(saved_plan, self.recovery.plan(runner), steps)
        if self.replanned is None:
            super().load_scheduler(runner, state)
            scheduled = scheduler is not None
            note = None if fresh_lrs is None else kept_lr_note(fresh_lrs, group_lrs(runner.optimizer), scheduled)
            if note is not None:
                warn(note, RuntimeWarning, stacklevel=2)
                runner.log(note, logging.WARNING)
            return
        continue_schedule(scheduler, runner.optimizer, fresh_lrs, self.replanned.position)

    def load_checkpoint(self, runner: Any, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""The body of [`load_checkpoint`][danling.runner.TorchRunner.load_checkpoint]."""
        checkpoint = self.resolve(runner, checkpoint)  # a directory stands for the newest valid checkpoint in it
        if is_sharded_checkpoint(checkpoint):
            self._load_sharded(runner, os.fsdecode(checkpoint))
        else:
            super().load_checkpoint(runner, checkpoint, *args, **kwargs)
        self.recovery.after_load(runner, self.replanned)

    def _load_sharded(self, runner: Any, path: str) -> None:
        # A `*.dcp` directory, on any world size and wrapping: model, optimizer and EMA through the DCP helpers,
        # the rest (read in full) as from a single-file checkpoint.
        modules = {ckpt.EMA: runner.ema} if runner.ema is not None else {}
        self.fresh_lrs = group_lrs(runner.optimizer) if runner.optimizer is not None else None
        state = load_sharded(path, runner.unwrap(runner.model), runner.optimizer, modules=modules)
        self.restore_host_parts(runner, state)
        if ckpt.RUNNER in state:
            runner.load_config(state)
        runner.config["checkpoint"] = path

    def load_pretrained(self, runner: Any, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""The body of [`load_pretrained`][danling.runner.TorchRunner.load_pretrained]."""
        if runner.model is None:
            raise ValueError("cannot load pretrained weights before the model is set: assign self.model first")
        if is_sharded_checkpoint(checkpoint):  # the model's entries only, in full
            loaded = read_sharded_model(os.fsdecode(checkpoint))
        else:
            loaded = self.read(runner, checkpoint, *args, what="pretrained", **kwargs)
        self.parallel.load_model_state(runner.model, ckpt.extract_model_state(loaded))
