"""When a resumed run has another plan than its checkpoint: where its learning-rate schedule continues.

A checkpoint records the plan it was trained under (`total_steps` and the global batch,
`batch_size x world_size x accum_steps`). A run resumed under another plan (a longer `epoch_end`, another world
size, batch size or `accum_steps`) follows the schedule built for the new plan (`resume_schedule: "rebuild"`, the
default) from the position that matches the training already done, or keeps the checkpoint's schedule as it was
(`resume_schedule: "keep"`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

RESUME_SCHEDULES = ("rebuild", "keep")


def check_resume_schedule(value: Any) -> str:
    r"""
    Validate `config.resume_schedule` (`None` means `"rebuild"`).

    Examples:
        >>> check_resume_schedule(None)
        'rebuild'
        >>> check_resume_schedule("again")
        Traceback (most recent call last):
        ValueError: resume_schedule is 'again', but it must be one of ('rebuild', 'keep')
    """
    if value is None:
        return "rebuild"
    if value not in RESUME_SCHEDULES:
        raise ValueError(f"resume_schedule is {value!r}, but it must be one of {RESUME_SCHEDULES}")
    return value


@dataclass
class Replan:
    r"""
    How a resumed schedule continues.

    Attributes:
        steps: Optimizer steps the checkpoint had taken.
        position: Steps of the new plan's schedule that correspond to them (where the schedule continues).
        saved_total: `total_steps` of the checkpoint's plan (`None` when it did not record it).
        total: `total_steps` of the new plan.
    """

    steps: int
    position: int
    saved_total: int | None
    total: int | None

    def describe(self) -> str:
        r"""
        One line for the start banner and the log.

        Examples:
            >>> Replan(steps=150, position=150, saved_total=150, total=180).describe()
            'learning-rate schedule rebuilt for the new plan: 150 -> 180 total steps; continues at step 150 of 180'
        """
        line = f"learning-rate schedule rebuilt for the new plan: {self.saved_total} -> {self.total} total steps"
        line += f"; continues at step {self.position} of {self.total}"
        if self.position != self.steps:
            line += f" (the same fraction of the planned samples as the checkpoint's {self.steps} steps)"
        return line


def replan(saved: Mapping | None, current: Mapping, steps: int) -> Replan | None:
    r"""
    Where the new plan's schedule continues, or `None` when the plan is the checkpoint's.

    When only the length of the run changed (`epoch_end`, `step_end`, the data), the schedule continues at the
    steps taken. When the global batch changed (world size, batch size, `accum_steps`), it continues at the same
    fraction of the planned samples: the same fraction of the planned steps when the length of the run is the
    same, else the samples consumed divided by the new global batch.

    Args:
        saved: The plan recorded in the checkpoint (`total_steps`, `global_batch`, `epoch_end`, `step_end`).
        current: The plan of this run.
        steps: Optimizer steps of the checkpoint.

    Examples:
        >>> replan({"total_steps": 150, "global_batch": 32}, {"total_steps": 180, "global_batch": 32}, 150)
        Replan(steps=150, position=150, saved_total=150, total=180)
        >>> plan = {"total_steps": 40, "global_batch": 32, "epoch_end": 4}
        >>> replan(plan, {"total_steps": 80, "global_batch": 16, "epoch_end": 4}, 20).position
        40
        >>> replan(plan, plan, 20) is None
        True
    """
    if not saved:
        return None
    saved_total, total = saved.get("total_steps"), current.get("total_steps")
    saved_batch, batch = saved.get("global_batch"), current.get("global_batch")
    position = steps
    if saved_batch and batch and saved_batch != batch:
        same_length = all(saved.get(key) == current.get(key) for key in ("epoch_end", "step_end", "train_lengths"))
        if same_length and saved_total and total:
            position = round(steps * total / saved_total)
        else:
            position = round(steps * saved_batch / batch)
    if position == steps and (saved_total is None or saved_total == total):
        return None
    return Replan(steps=steps, position=position, saved_total=saved_total, total=total)


def group_lrs(optimizer: Any) -> list[dict[str, Any]]:
    r"""The learning-rate entries (`lr`, `initial_lr`) of each parameter group, to put back after a load."""
    return [{key: group[key] for key in ("lr", "initial_lr") if key in group} for group in optimizer.param_groups]


def kept_lr_note(
    fresh_lrs: list[dict[str, Any]], loaded_lrs: list[dict[str, Any]], scheduled: bool = False
) -> str | None:
    r"""
    What to tell a user whose optimizer was built with other base learning rates than the checkpoint's state holds
    (a new `lr` in the config on resume): the loaded state wins. Compares `initial_lr` (the base a scheduler keeps)
    where both have it, else `lr` unless a scheduler moves it (`scheduled`); `None` when they agree.

    Examples:
        >>> kept_lr_note([{"lr": 0.01}], [{"lr": 0.1}])
        "the optimizer was built with lr 0.01 (param group 0) but the checkpoint's optimizer state has 0.1; ...
        >>> kept_lr_note([{"lr": 0.5, "initial_lr": 1.0}], [{"lr": 0.2, "initial_lr": 1.0}]) is None  # a schedule
        True
    """
    for index, (fresh, loaded) in enumerate(zip(fresh_lrs, loaded_lrs)):
        key = "initial_lr" if "initial_lr" in fresh and "initial_lr" in loaded else None if scheduled else "lr"
        if key is not None and key in fresh and key in loaded and fresh[key] != loaded[key]:
            return (
                f"the optimizer was built with {key} {fresh[key]} (param group {index}) but the checkpoint's "
                f"optimizer state has {loaded[key]}; training goes on with the checkpoint's. To train with the new "
                "value, set it in optimizer.param_groups after the runner is built (or start from pretrained weights)"
            )
    return None


def continue_schedule(scheduler: Any, optimizer: Any, fresh_lrs: list[dict[str, Any]], position: int) -> None:
    r"""
    Advance a scheduler built for the new plan (never stepped) to `position`, from the learning rates it set when
    it was built: its learning rate is then the one a fresh scheduler of the new plan has after `position` steps.

    Args:
        scheduler: The runner's scheduler, as the user built it (not loaded from the checkpoint).
        optimizer: Its optimizer, whose state was loaded from the checkpoint.
        fresh_lrs: [`group_lrs`][danling.runner.checkpointing.replan.group_lrs] of the optimizer before the checkpoint
            was loaded.
        position: Steps to advance.

    Examples:
        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
        >>> fresh = group_lrs(optimizer)
        >>> optimizer.param_groups[0]["lr"] = 0.5  # as loaded from a checkpoint
        >>> continue_schedule(scheduler, optimizer, fresh, 3)
        >>> optimizer.param_groups[0]["lr"]
        0.25
    """
    for group, lrs in zip(optimizer.param_groups, fresh_lrs):
        group.update(lrs)
    with warnings.catch_warnings():  # stepping a scheduler without an optimizer step is the point here
        warnings.simplefilter("ignore")
        for _ in range(position):
            scheduler.step()


def follows_plan(scheduler: Any) -> bool:
    r"""Whether `scheduler` steps with the optimizer (not `ReduceLROnPlateau`, which follows the scores)."""
    return scheduler is not None and hasattr(scheduler, "step") and not isinstance(scheduler, ReduceLROnPlateau)
