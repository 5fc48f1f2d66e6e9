"""
Sharded checkpoints under a 2-rank gloo `torchrun`, for `tests/runner/checkpointing/test_sharded.py`.

    torchrun --nproc_per_node=2 sharded_worker.py save OUT_DIR
    torchrun --nproc_per_node=2 sharded_worker.py load OUT_DIR

`save`: a `fully_shard`ed MLP trains 5 Adam steps (each rank half of the batch), saving `ckpt/` at steps 3 and 5;
rank 0 writes the full model and optimizer state at step 5 (`reference.pt`) and `model.pth` is exported.
`load`: an FSDP2 model loads `single/latest.dcp` (saved by one process at step 5) and must equal the reference;
a DDP model loads `ckpt/step-3.dcp`, trains steps 3 and 4, and must equal it too. Rank 0 writes `report-load.json`.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from danling.runner.checkpointing import ShardedCheckpointManager, export_model, load_sharded, sharded_state

BATCH = 8


def build() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 4, generator=generator), torch.randn(BATCH, 3, generator=generator)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, rank: int, world: int) -> None:
    for step in steps:
        x, y = batch(step)
        share = BATCH // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optimizer": optimizer_state}


def max_difference(got: dict, expected: dict) -> float:
    worst = 0.0
    for key, value in expected["model"].items():
        worst = max(worst, (got["model"][key] - value).abs().max().item())
    for name, state in expected["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            worst = max(worst, (got["optimizer"]["state"][name][key] - state[key]).abs().max().item())
    return worst


def sharded_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model, _ = build()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def save(out: str, rank: int, world: int) -> None:
    model, optimizer = sharded_model()
    manager = ShardedCheckpointManager(os.path.join(out, "ckpt"))
    for done in (3, 5):
        train(model, optimizer, range(done - 2 if done == 5 else 0, done), rank, world)
        extra = {"runner": {"steps": done}} if rank == 0 else {}
        manager.save(sharded_state(model, optimizer, **extra), steps=done, keep=2)
    reference = full_state(model, optimizer)
    export_model(model, os.path.join(out, "model.pth"))
    if rank == 0:
        torch.save(reference, os.path.join(out, "reference.pt"))


def load(out: str, rank: int, world: int) -> None:
    reference = torch.load(os.path.join(out, "reference.pt"), weights_only=True)
    model, optimizer = sharded_model()
    extra = load_sharded(os.path.join(out, "single", "latest.dcp"), model, optimizer)
    fsdp_state = full_state(model, optimizer)  # collective; complete on rank 0 only
    plain, _ = build()
    ddp = DistributedDataParallel(plain)
    ddp_optimizer = torch.optim.Adam(ddp.parameters(), lr=0.01)
    ddp_extra = load_sharded(os.path.join(out, "ckpt", "step-3.dcp"), ddp, ddp_optimizer)
    train(ddp, ddp_optimizer, range(3, 5), rank, world)
    ddp_state = full_state(ddp, ddp_optimizer)
    if rank == 0:
        fsdp_difference, ddp_difference = max_difference(fsdp_state, reference), max_difference(ddp_state, reference)
        report = {"fsdp": fsdp_difference, "ddp": ddp_difference, "extra": extra, "ddp_extra": ddp_extra}
        with open(os.path.join(out, "report-load.json"), "w", encoding="utf-8") as fp:
            json.dump(report, fp)


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        (save if mode == "save" else load)(out, rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
