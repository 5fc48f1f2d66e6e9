"""
Two ranks that train straight, then a second run preempted in the middle of its first epoch, for
`tests/runner/checkpointing/test_resume_anysize.py`.

    python -m torch.distributed.run --nproc_per_node=2 ... anysize_worker.py OUT_DIR

Both runs train [`AnySizeRunner`][] (48 samples, batches of 4 per rank, `accum_steps` 1: a global batch of 8,
6 optimizer steps per epoch, 2 epochs). The first runs to the end in `OUT_DIR/straight`; the second, in
`OUT_DIR/preempted`, has rank 1 send itself `SIGTERM` at step 3, so both ranks save `latest.pth` there and exit
with status 143. Each rank writes `OUT_DIR/{run}-rank{R}.json`: the indices its dataset was asked for, its steps
and the parameters.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import danling as dl

LENGTH, BATCH_SIZE, SEED, LR = 48, 4, 5, 0.1


class RecordingDataset(Dataset):
    """Regression samples that record every index they are asked for."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(LENGTH, 4, generator=generator)
        self.y = torch.randn(LENGTH, 1, generator=generator)
        self.asked: list[int] = []

    def __len__(self) -> int:
        return LENGTH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append(int(index))
        return self.x[index], self.y[index]


class AnySizeRunner(dl.TorchRunner):
    """A small tanh network trained with plain SGD (so a continuation is easy to compute by hand)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = RecordingDataset()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.actions: dict[int, Any] = {}

    def optimizer_step(self) -> None:
        super().optimizer_step()
        action = self.actions.get(self.steps)
        if action is not None:
            action()


def run_config(run_dir: str, **changes: Any) -> dict[str, Any]:
    config = {"dir": run_dir, "log": True, "seed": SEED, "epoch_end": 2, "score_split": "train"}
    config["dataloader"] = {"batch_size": BATCH_SIZE}
    return {**config, **changes}


def run(out_dir: str, name: str, signal_at: int | None = None) -> None:
    runner = AnySizeRunner(run_config(os.path.join(out_dir, name), preemption_check_steps=1))
    if signal_at is not None and runner.rank == 1:
        runner.actions[signal_at] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    report: dict[str, Any] = {"outcome": "running"}
    try:
        runner.train()
        report["outcome"] = "finished"
    except SystemExit as exit:
        report["outcome"] = f"exit {exit.code}"
        raise
    finally:
        report["asked"] = runner.datasets.train.asked
        report["steps"] = runner.steps
        report["train_loss"] = {str(index): result["train"]["loss"] for index, result in runner.results.items()}
        report["parameters"] = [p.detach().flatten().tolist() for p in runner.unwrap(runner.model).parameters()]
        path = os.path.join(out_dir, f"{name}-rank{runner.rank}.json")
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(report, fp)
        runner.close()


def main() -> None:
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    run(out_dir, "straight")
    run(out_dir, "preempted", signal_at=3)


if __name__ == "__main__":
    main()
