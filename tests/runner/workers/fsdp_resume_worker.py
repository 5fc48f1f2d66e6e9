"""
Sharded checkpoints of the runner, for `tests/runner/checkpointing/test_sharded.py`.

    torchrun --nproc_per_node=2 fsdp_resume_worker.py OUT_DIR

On 2 gloo ranks: a `strategy="fsdp"` run trains 2 epochs uninterrupted (saving `latest.dcp` and step-stamped
copies at each epoch end); then a `strategy="ddp"` run resumes its epoch-0 checkpoint `step-6.dcp` and trains the
second epoch. Rank 0 writes `OUT_DIR/report.pt`: the full model and optimizer state of both at the end.
Without shuffling, the 2 ranks' batches of 4 make up exactly the batches of 8 of one process, so a 1-process run
resuming the same checkpoint must end at the same weights (within float tolerance).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl

STEPS_PER_EPOCH = 6


class ResumeRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(48, 4, generator=generator)
        self.datasets.train = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=4, gamma=0.5)


def config_for(directory: str, strategy: str, batch_size: int) -> dict:
    config = {"dir": directory, "log": False, "seed": 3, "epoch_end": 2, "strategy": strategy, "keep_checkpoints": 5}
    config["score_split"] = "train"
    config["dataloader"] = {"batch_size": batch_size, "shuffle": False}
    return config


def final_state(runner: dl.TorchRunner) -> dict:
    state = runner.state_dict()  # collective under FSDP2: the full state on rank 0
    return {"model": state["model"], "optimizer": state["optimizer"], "steps": runner.steps}


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    fsdp = ResumeRunner(config_for(os.path.join(out, "fsdp"), "fsdp", 4))
    fsdp.train()
    report = {"uninterrupted": final_state(fsdp), "exported": fsdp.export_model()}
    report["layout"] = sorted(os.listdir(fsdp.checkpoint_dir))
    checkpoint = os.path.join(fsdp.checkpoint_dir, f"step-{STEPS_PER_EPOCH}.dcp")
    ddp = ResumeRunner(config_for(os.path.join(out, "ddp"), "ddp", 4))
    ddp.load_checkpoint(checkpoint)
    report["resumed_steps"] = ddp.steps
    ddp.train()
    report["ddp"] = final_state(ddp)
    if dist.get_rank() == 0:
        torch.save(report, os.path.join(out, "report.pt"))
    dist.barrier()
    fsdp.close()
    ddp.close()


if __name__ == "__main__":
    main()
