"""
A callback that raises on rank 1 only, under a 2-rank gloo `torchrun`, for `tests/runner/test_callbacks.py`.

    torchrun --nproc_per_node=2 callback_failure_worker.py OUT_DIR

`dist_timeout` is 120 s: a rank left waiting in a collective would take that long. Each case trains (or
evaluates) a fresh runner in the same process group with a callback that raises `ValueError` on rank 1 in one
hook; every rank must raise `CallbackError` naming the callback, the hook and rank 1 within seconds, at the same
step, and the process group stays usable for the next case. The last case is left uncaught, so both ranks exit
non-zero. Each rank writes `OUT_DIR/rank{R}.json`: per case, the error's type, message and cause, the steps
reached and the seconds the case took.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import Callback, CallbackError


class Job(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        features, targets = torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)
        self.datasets.train = TensorDataset(features, targets)
        self.datasets.val = TensorDataset(features[:12], targets[:12])
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


class FailsOnRankOne(Callback):
    r"""Raises in `hook` on rank 1 (at optimizer step `at_step` for `on_step_end`); counts its calls."""

    def __init__(self, hook: str, at_step: int = 0) -> None:
        self.hook = hook
        self.at_step = at_step
        self.calls = 0

    def check(self, runner: Any, hook: str) -> None:
        if hook == self.hook and runner.rank == 1 and runner.steps >= self.at_step:
            self.calls += 1
            raise ValueError(f"{hook} broke on rank {runner.rank} at step {runner.steps}")

    def on_step_end(self, runner: Any, split: str) -> None:
        self.check(runner, "on_step_end")

    def on_epoch_end(self, runner: Any, split: str, result: Any) -> None:
        self.check(runner, "on_epoch_end")

    def on_evaluate_end(self, runner: Any, split: str, result: Any) -> None:
        self.check(runner, "on_evaluate_end")

    def on_train_end(self, runner: Any) -> None:
        self.check(runner, "on_train_end")


def run_case(out: str, name: str, rank: int, hook: str, action: str, reports: dict, **config: Any) -> None:
    settings = {"seed": 1, "log": True, "dir": os.path.join(out, name, f"rank{rank}"), "epoch_end": 2}
    settings.update(dist_timeout=120, dataloader={"batch_size": 4}, **config)
    callback = FailsOnRankOne(hook, at_step=2 if hook == "on_step_end" else 0)
    runner = Job(settings, callbacks=[callback])
    report: dict[str, Any] = {"outcome": "finished", "started": time.time()}
    reports[name] = report
    try:
        runner.train() if action == "train" else runner.evaluate(["val"])
    except CallbackError as error:
        report.update(outcome="CallbackError", message=str(error), rank=error.rank, hook=error.hook)
        report.update(callback=error.callback, world_size=error.world_size)
        report["cause"] = None if error.__cause__ is None else f"{type(error.__cause__).__name__}: {error.__cause__}"
        raise
    except BaseException as error:
        report.update(outcome=type(error).__name__, message=str(error)[:2000])
        raise
    finally:
        report.update(ended=time.time(), steps=runner.steps, epochs=runner.epochs, failed_calls=callback.calls)
        report["seconds"] = report["ended"] - report["started"]
        runner.close()


CASES = [
    ("epoch_end", "on_epoch_end", "train", {}),
    ("step_end", "on_step_end", "train", {"preemption_check_steps": 2}),  # the ranks agree every 2 steps
    ("step_end_no_signals", "on_step_end", "train", {"preemption_signals": []}),
    ("evaluate", "on_evaluate_end", "evaluate", {}),
    ("train_end", "on_train_end", "train", {}),  # the last case: uncaught, so both ranks exit non-zero
]


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    reports: dict[str, Any] = {}
    try:
        for name, hook, action, config in CASES:
            try:
                run_case(out, name, rank, hook, action, reports, **config)
            except CallbackError:
                if name == CASES[-1][0]:
                    raise
    finally:
        with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as fp:
            json.dump(reports, fp)


if __name__ == "__main__":
    main()
