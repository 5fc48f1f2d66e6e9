"""
Two-process worker for `tests/runner/loop/test_grad_norm.py`: `grad_norm` under DDP and FSDP2, with and without
clipping.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/runner/workers/grad_norm_worker.py OUT_DIR

Each run trains 2 epochs of 6 batches per rank in windows of 2 (3 optimizer steps an epoch) with a log line every
2 batches. At every optimizer step the runner's gradients are gathered whole (`full_tensor()` of FSDP2's shards)
and their norm computed by hand; each rank records it and the `grad_norm` of its log lines. Rank 0 writes
`OUT_DIR/report.pt`: `{run: [rank 0's, rank 1's]}`.
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


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.head(x)


class NormRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(24, 4, generator=generator), torch.arange(24) % 3)
        torch.manual_seed(0)  # the same model on every rank
        self.model = Net()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.reference: list[float] = []
        self.logged: list[tuple[int, float]] = []

    def optimizer_step(self) -> None:
        total = torch.zeros((), dtype=torch.float64)
        for parameter in self.unwrap(self.model).parameters():
            grad = parameter.grad
            if grad is not None:
                grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad  # a collective under FSDP2
                total += (grad.double() ** 2).sum()
        self.reference.append(float(total.sqrt()))
        super().optimizer_step()


class Recorder(dl.Callback):
    def on_log(self, runner: Any, split: str, result: Any) -> None:
        if str(runner.mode) == "train":
            runner.logged.append((runner.steps, result.get("grad_norm")))


def run(out_dir: str, name: str, strategy: str, max_grad_norm: float | None) -> dict:
    config = {"dir": os.path.join(out_dir, name), "log": False, "epoch_end": 2, "strategy": strategy}
    config.update(accum_steps=2, log_interval=2, max_grad_norm=max_grad_norm, dataloader={"batch_size": 2})
    runner = NormRunner(config, callbacks=[Recorder()])
    runner.train()
    record = {"logged": runner.logged, "reference": runner.reference}
    runner.close()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    return gathered


def main() -> None:
    out_dir = sys.argv[1]
    report = {}
    for strategy in ("ddp", "fsdp"):
        report[strategy] = run(out_dir, strategy, strategy, None)
        report[f"{strategy}-clip"] = run(out_dir, f"{strategy}-clip", strategy, 0.05)
    if dist.get_rank() == 0:
        torch.save(report, os.path.join(out_dir, "report.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
