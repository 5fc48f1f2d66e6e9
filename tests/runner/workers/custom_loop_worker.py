"""
The runner of `docs/guides/custom-loops.md`, with its own `train_epoch`, as a job that can be preempted, for
`tests/runner/loop/test_custom_loop.py`.

    python custom_loop_worker.py PROJECT_ROOT [--signal-at STEP]

The job trains with `auto_resume=True` under `PROJECT_ROOT`, so launching it again continues it. `--signal-at` makes
it send itself SIGTERM at that optimizer step, from a callback: the loop is the guide's, untouched.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import torch
from chanfig import NestedDict
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class NoisyInputRunner(dl.TorchRunner):
    """Regression on inputs with fresh Gaussian noise every batch: a `train_epoch` of its own."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, 4, generator=generator), torch.randn(48, 1, generator=generator)
        self.datasets.train = TensorDataset(x, y)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)

    def train_epoch(self, split: str = "train") -> NestedDict:
        batches = self.begin_epoch(split)  # resumes inside the epoch after a mid-epoch checkpoint
        for input, target in batches:
            noisy = input + self.config.noise * torch.randn_like(input)  # the checkpointed random stream
            self.train_step(self.to_device((noisy, target)))
            if self.end_step(split):  # log lines, save_steps, preemption, step_end
                break
        result = self.end_epoch(split)
        self.log(f"epoch {self.epochs}: trained {split} with input noise {self.config.noise}")
        return result


def job_config(project_root: str) -> dict[str, Any]:
    return {
        "project_root": project_root,
        "auto_resume": True,
        "seed": 7,
        "epoch_end": 3,
        "save_steps": 5,
        "noise": 0.1,
        "log": True,
        "dataloader": {"batch_size": 4},
    }


class SignalAt(dl.Callback):
    """Sends this process SIGTERM once, after the batch that made optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, runner: Any, split: str) -> None:
        if runner.steps == self.step:
            self.step = -1
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project_root")
    parser.add_argument("--signal-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    callbacks = [] if args.signal_at is None else [SignalAt(args.signal_at)]
    runner = NoisyInputRunner(job_config(args.project_root), callbacks=callbacks)
    runner.train()  # SIGTERM: saves latest.pth at the step and exits with status 143


if __name__ == "__main__":
    main()
