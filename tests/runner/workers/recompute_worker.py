"""
Two-process worker for `tests/runner/distributed/test_recompute.py`: `activation_checkpointing` under DDP, FSDP2
and compiled DDP and FSDP2, against the same runs without it.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/runner/workers/recompute_worker.py OUT_DIR

Each run trains one epoch of 6 batches per rank from the same seed (dropout in the blocks, but under compile) and
records the whole gradients at every optimizer step (`full_tensor()` of FSDP2's shards). Rank 0 writes
`OUT_DIR/report.pt`.
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
from danling.runner.distributed.recompute import CheckpointedForward


class Block(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(torch.tanh(self.linear(x)))


class Net(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(dropout), Block(dropout)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class RecomputeRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(24, 4, generator=generator), torch.arange(24) % 3)
        torch.manual_seed(0)  # the same model on every rank
        self.model = Net(0.0 if self.config.get("compile") else 0.2)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.gradients: list[list[torch.Tensor]] = []

    def optimizer_step(self) -> None:
        grads = [parameter.grad for parameter in self.unwrap(self.model).parameters()]
        self.gradients.append([g.full_tensor() if hasattr(g, "full_tensor") else g.clone() for g in grads])
        super().optimizer_step()


def run(out_dir: str, name: str, **config: Any) -> dict:
    settings = {"dir": os.path.join(out_dir, name), "log": False, "epoch_end": 1, "seed": 1}
    settings.update(dataloader={"batch_size": 2}, **config)
    runner = RecomputeRunner(settings)
    runner.train()
    model = runner.unwrap(runner.model)
    wrapped = sum(isinstance(module.__dict__.get("forward"), CheckpointedForward) for module in model.modules())
    report = {"gradients": runner.gradients, "wrapped_blocks": wrapped, "keys": list(runner.state_dict()["model"])}
    runner.close()
    return report


def main() -> None:
    out_dir = sys.argv[1]
    report = {}
    compiled = {"compile": True, "compile_options": {"backend": "aot_eager"}}
    fsdp = {"strategy": "fsdp"}
    runs = {"ddp": {}, "fsdp": fsdp, "ddp-compiled": compiled, "fsdp-compiled": {**fsdp, **compiled}}
    for name, config in runs.items():
        report[name] = run(out_dir, name, **config)
        report[f"{name}-recompute"] = run(out_dir, f"{name}-recompute", activation_checkpointing=True, **config)
    if dist.get_rank() == 0:
        torch.save(report, os.path.join(out_dir, "report.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
