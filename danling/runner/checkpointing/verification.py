"""`verify_resume`: prove, once per training script, that a checkpoint resumes bit for bit."""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from danling.utils.io import to_plain

from ..utils import RunnerMode
from . import CheckpointManager
from .rng import get_rng_state


@dataclass
class ResumeCheck:
    r"""
    Outcome of [`verify_resume`][danling.runner.checkpointing.verification.verify_resume].

    Attributes:
        steps: Optimizer steps run before the checkpoint and again after it.
        parameters: Whether the parameters agree bitwise.
        optimizer: Whether the optimizer states agree bitwise.
        rng: Whether the Python, numpy and torch random streams agree.
        mismatches: What differs (empty when everything agrees).
    """

    steps: int
    parameters: bool
    optimizer: bool
    rng: bool
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        r"""Whether the resumed run agrees with the uninterrupted one in everything checked."""
        return self.parameters and self.optimizer and self.rng

    def __bool__(self) -> bool:
        return self.ok


def verify_resume(
    runner: Any, recovery: Any, steps: int = 2, split: str | None = None, stepper: Any = None
) -> ResumeCheck:
    r"""
    Run `steps` optimizer steps, save a mid-epoch checkpoint, run `steps` more; rebuild a fresh runner of the
    same class from that checkpoint, run `steps` there too, and compare both bitwise.

    The runner is trained by the call (use a freshly built one). The checkpoint goes to a temporary directory;
    the run's own checkpoints are left alone. The current epoch of `split` needs at least `2 * steps` optimizer
    steps. Collective when distributed (call it on every rank).

    Args:
        runner: A [`TorchRunner`][danling.runner.TorchRunner] with a model, optimizer and a train dataset.
        recovery: Its [`Recovery`][danling.runner.loop.interruptions.Recovery], which puts the mid-epoch checkpoint
            together.
        stepper: Its [`OptimizerStepper`][danling.runner.loop.stepping.OptimizerStepper], whose loss guard checks
            every rank's losses before the checkpoint (`FloatingPointError` on every rank), as a save in training
            does.
        steps: Optimizer steps before and after the checkpoint.
        split: Train split to use (default: the first train split).

    Returns:
        A [`ResumeCheck`][danling.runner.checkpointing.verification.ResumeCheck]; truthy when everything agrees.

    Raises:
        ValueError: If `steps` is not positive or the epoch is too short.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, but got {steps!r}")
    split = runner.train_splits[0] if split is None else split
    batches = _open_epoch(runner, split, steps)
    consumed = _run_steps(runner, batches, steps)
    with tempfile.TemporaryDirectory(prefix="danling-verify-") as directory:
        if stepper is not None:
            stepper.loss_guard.check(runner.distributed)
        path = _save_mid_epoch(runner, recovery, split, consumed, directory)
        _run_steps(runner, batches, steps)
        reference = _snapshot(runner)
        config = to_plain(runner.config.dict())
        config.update(checkpoint=path, dir=os.path.join(directory, "fresh"), log=False, tensorboard=False)
        config.update(auto_resume=False, checkpoint_dir=None)
        fresh = type(runner)(config)
        _run_steps(fresh, _open_epoch(fresh, split, steps), steps)
        resumed = _snapshot(fresh)
        fresh.close()
    return _compare(reference, resumed, steps)


def _open_epoch(runner: Any, split: str, steps: int) -> Any:
    # The public start of a training epoch: a resumed runner continues after the checkpoint's batches.
    loader = runner.dataloaders.get(split)
    length = len(loader) if hasattr(loader, "__len__") else None
    needed = 2 * steps * runner.accum_steps
    if length is not None and length < needed:
        raise ValueError(
            f"verify_resume needs {needed} batches of {split!r} in one epoch (2 x {steps} steps x accum_steps "
            f"{runner.accum_steps}), but its loader has {length}: use fewer steps or a smaller batch size"
        )
    return runner.begin_epoch(split, RunnerMode.train)


def _run_steps(runner: Any, batches: Any, steps: int) -> int:
    target = runner.steps + steps
    consumed = 0
    while runner.steps < target:
        runner.train_step(runner.to_device(next(batches)))
        consumed += 1
    return consumed


def _save_mid_epoch(runner: Any, recovery: Any, split: str, consumed: int, directory: str) -> str:
    state = recovery.mid_epoch_state(runner, split, consumed)
    path = CheckpointManager(directory).path("verify")
    if runner.is_main_process:
        CheckpointManager(directory).save(state, "verify", steps=runner.steps, keep=0)
    if runner.distributed:
        torch.distributed.barrier()
    return path


def _snapshot(runner: Any) -> dict[str, Any]:
    model = runner.unwrap(runner.model)
    return {
        "parameters": {key: value.detach().clone() for key, value in model.state_dict().items()},
        "optimizer": _tensors(runner.optimizer.state_dict()) if runner.optimizer is not None else {},
        "rng": get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        flat: dict[str, Any] = {}
        for key, value in state.items():
            flat.update(_tensors(value, f"{prefix}{key}."))
        return flat
    if isinstance(state, (list, tuple)):
        return _tensors(dict(enumerate(state)), prefix)
    return {prefix.rstrip("."): state}


def _differences(first: dict[str, Any], second: dict[str, Any], what: str) -> list[str]:
    differences = []
    for key in sorted(set(first) | set(second), key=str):
        a, b = first.get(key), second.get(key)
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
        if not same:
            differences.append(f"{what} {key}")
    return differences


def _compare(reference: dict[str, Any], resumed: dict[str, Any], steps: int) -> ResumeCheck:
    parameters = _differences(reference["parameters"], resumed["parameters"], "parameter")
    optimizer = _differences(reference["optimizer"], resumed["optimizer"], "optimizer state")
    rng = []
    if not torch.equal(reference["rng"]["torch"], resumed["rng"]["torch"]):
        rng.append("torch random state")
    if reference["python"] != resumed["python"]:
        rng.append("python random state")
    if not all(np.array_equal(a, b) for a, b in zip(reference["numpy"], resumed["numpy"])):
        rng.append("numpy random state")
    return ResumeCheck(steps, not parameters, not optimizer, not rng, parameters + optimizer + rng)
