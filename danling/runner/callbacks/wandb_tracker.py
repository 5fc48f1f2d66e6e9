"""Weights & Biases (`config.trackers: ["wandb"]`): [`WandbCallback`][danling.runner.callbacks.WandbCallback]."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..rundir.continuation import Continuation
from .trackers import TrackerCallback, run_config

__all__ = ["WandbCallback"]


class WandbCallback(TrackerCallback):
    r"""
    Records a run in Weights & Biases (`pip install "danling[wandb]"`), from the main process.

    The W&B run's id is the runner's `id` (kept in `trackers.json`), and a resumed run continues it with
    `resume="allow"`. Its files go to `wandb/` in the run directory; `WANDB_MODE=offline` keeps them there (`wandb sync`
    uploads them later), and the other `WANDB_*` variables work as usual (`WANDB_PROJECT`, default
    `config.experiment_name`; `WANDB_ENTITY`...). The config is recorded when the W&B run is created, values with
    `step=` the global optimizer step.

    W&B keeps one row per step and ignores a step below its last one. A resumed run records what follows its
    checkpoint, so the steps it sends continue those of the launch before it; online, it skips the steps the W&B
    run already has (the launch before it may have sent some past the checkpoint before it was killed), so the
    steps sent increase strictly across resumes. Offline, the W&B run of each launch is a folder of its own under
    `wandb/`; `wandb sync` uploads them in order, keeping the first value of a step that two of them hold (they
    are equal). W&B buffers what it writes (offline, its `.wandb` file is flushed every 15 s by default): a launch
    killed outright (SIGKILL) loses what W&B had not flushed, while a preemption (SIGTERM) or an error ends the W&B
    run cleanly.
    """

    name = "wandb"

    def __init__(self) -> None:
        super().__init__()
        self.run: Any = None

    def open(self, runner: Any, key: str, earlier: Mapping[str, Any] | None, at: Continuation | None) -> dict:
        import wandb

        continuing = earlier is not None
        self.run = wandb.init(
            id=key,
            resume="allow",
            dir=runner.dir,
            project=os.environ.get("WANDB_PROJECT") or runner.config.get("experiment_name"),
            name=runner.name,
            config=None if continuing else run_config(runner.config),
            reinit="create_new",
        )
        # Online, a resumed W&B run knows its next step: what is below it is in the W&B run already.
        self.floor = max(self.floor, int(getattr(self.run, "step", 0) or 0) - 1)
        return {"id": key}

    def send(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def end(self) -> None:
        self.run.finish()
        self.run = None
