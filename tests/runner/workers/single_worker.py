"""
Single-process worker for `tests/runner/distributed/test_distributed.py`: `python single_worker.py OUT_DIR`.

The model is not wrapped in `DistributedDataParallel`, yet `runner.accumulate()` must work; the worker drives
the micro-steps by hand with `accum_steps=2` and writes what it saw to `OUT_DIR/single.json`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class LinearRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(
            torch.randn(16, 3, generator=generator), torch.randn(16, 1, generator=generator)
        )
        self.model = nn.Linear(3, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


def main() -> None:
    out_dir = sys.argv[1]
    runner = LinearRunner(
        {
            "dir": os.path.join(out_dir, "run"),
            "log": False,
            "seed": 1,
            "accum_steps": 2,
            "dataloader": {"batch_size": 4},
        }
    )
    report: dict[str, Any] = {
        "world_size": runner.world_size,
        "distributed": runner.distributed,
        "model_type": type(runner.model).__name__,
    }
    steps_seen = []
    for input, target in runner.dataloaders.train:
        with runner.accumulate():
            loss = runner.criterion(runner.model(input), target)
            runner.advance(loss)
        steps_seen.append(runner.steps)
    report["steps_seen"] = steps_seen
    with open(os.path.join(out_dir, "single.json"), "w", encoding="utf-8") as fp:
        json.dump(report, fp)


if __name__ == "__main__":
    main()
