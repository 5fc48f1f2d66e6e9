"""
A classifier with a warmup-cosine schedule over 4 epochs, for `tests/runner/checkpointing/test_requeue.py`.

    python -m torch.distributed.run --nproc_per_node=2 ... replan_worker.py RUN_DIR [CHECKPOINT]
    python replan_worker.py RUN_DIR [CHECKPOINT]

Trains in `RUN_DIR` (an `epoch-N.pth` copy after every epoch), from `CHECKPOINT` when given, and writes the
learning rate at the end of every epoch to `RUN_DIR/lrs.json` (main process).
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


class ScheduleRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(64, 4, generator=generator), torch.randint(0, 3, (64,)))
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = dl.optim.SCHEDULERS.build(
            self.optimizer, type="cosine_with_warmup", warmup_steps=4, total_steps=self.total_steps
        )


def main() -> None:
    torch.set_num_threads(1)
    run_dir = sys.argv[1]
    config = {"dir": run_dir, "log": True, "seed": 3, "epoch_end": 4, "save_interval": 1}
    config["dataloader"] = {"batch_size": 8}
    if len(sys.argv) > 2:
        config["checkpoint"] = sys.argv[2]
    runner = ScheduleRunner(config)
    runner.train()
    if runner.is_main_process:
        lrs = {str(epoch): result["train"]["lr"] for epoch, result in runner.results.items()}
        with open(os.path.join(run_dir, "lrs.json"), "w", encoding="utf-8") as fp:
            json.dump({"lrs": lrs, "steps": runner.steps}, fp)
    runner.close()


if __name__ == "__main__":
    main()
