"""
A rank that hangs, under a 2-rank gloo `torchrun`, for `tests/runner/distributed/test_heartbeat.py`.

    torchrun --nproc_per_node=2 hang_worker.py RUN_DIR DIST_TIMEOUT [healthy]

Both ranks train a small model under DDP in the shared run directory `RUN_DIR`, with `dist_timeout` DIST_TIMEOUT
seconds. At optimizer step 3, rank 1 stops inside `train_step`, in `stall_here`, for ten minutes: rank 0 then waits
in the gradient all-reduce of its backward until the timeout. Nothing is caught: each rank ends as the runner makes
it end. With `healthy`, no rank stops; after `train()` each rank writes `RUN_DIR/threads-rank{R}.json`: the names of
its threads still alive.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl

HANG_AT_STEP = 3


def stall_here(seconds: float) -> None:
    time.sleep(seconds)  # the frame rank 1's stack must show


class Job(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(
            torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator)
        )
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_step(self, data: Any) -> Any:
        if self.rank == 1 and self.steps == HANG_AT_STEP and not self.config.get("healthy"):
            stall_here(600)
        return super().train_step(data)


def main() -> None:
    run_dir, timeout = sys.argv[1], float(sys.argv[2])
    healthy = sys.argv[3:] == ["healthy"]
    config = {"seed": 1, "log": True, "dir": run_dir, "epoch_end": 2, "dist_timeout": timeout, "healthy": healthy}
    runner = Job({**config, "dataloader": {"batch_size": 4}})
    runner.train()
    threads = [thread.name for thread in threading.enumerate()]
    with open(os.path.join(run_dir, f"threads-rank{runner.rank}.json"), "w", encoding="utf-8") as file:
        json.dump(threads, file)


if __name__ == "__main__":
    main()
