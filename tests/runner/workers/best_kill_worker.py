"""
A run killed (SIGKILL) at a chosen instant of its epoch-`EPOCH` save, for `tests/runner/checkpointing/test_requeue.py`.

    python best_kill_worker.py PROJECT_ROOT EPOCH INSTANT

Every epoch is a best one (the validation loss falls), so each epoch's save commits `latest.pth` and then its
`best.pth` link, then the JSON files. `INSTANT` says where the process dies: `before-best` (after `latest.pth` was
committed, before `best.pth`), `before-json` (after both checkpoints, before `results.json`), or `none`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.checkpointing import manager


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


class BestRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(32, 0)
        self.datasets.val = make_data(16, 1)
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


def config(project_root: str) -> dict:
    return {
        "project_root": project_root,
        "auto_resume": True,
        "seed": 1,
        "epoch_end": 4,
        "log": True,
        "dataloader": {"batch_size": 8},
    }


def main() -> None:
    torch.set_num_threads(1)
    project_root, epoch, instant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    runner = BestRunner(config(project_root))
    link = manager.link_file  # how a save gives its bytes the name best.pth
    save_result = runner.save_result

    def killing_link(source: str, destination: str) -> None:
        if instant == "before-best" and runner.epochs == epoch and ".best.pth" in os.path.basename(destination):
            os.kill(os.getpid(), signal.SIGKILL)
        link(source, destination)

    def killing_save_result() -> None:
        if instant == "before-json" and runner.epochs == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        save_result()

    manager.link_file = killing_link
    runner.save_result = killing_save_result  # type: ignore[method-assign]
    runner.train()


if __name__ == "__main__":
    main()
