"""
Two-process DDP worker for `tests/runner/distributed/test_distributed.py`.

    python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=PORT \
        tests/runner/workers/ddp_worker.py OUT_DIR

Every rank trains a small `TorchRunner` and writes what it saw to `OUT_DIR/rank{RANK}.json` (numbers) and
`OUT_DIR/rank{RANK}.pt` (tensors); the test compares the ranks. The run directory is `OUT_DIR/run`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import base_runner
from danling.runner.checkpointing import files as ckpt
from danling.runner.checkpointing import manager as checkpoint_manager
from danling.utils import io as dl_io
from danling.utils.io import to_plain

TRAIN_SIZE = 64
VAL_SIZE = 37  # odd: the two evaluation shards differ in length
BATCH_SIZE = 4
LR = 0.05
FEATURES = 3


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y)


class LinearRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(TRAIN_SIZE, 0)
        self.datasets.val = make_data(VAL_SIZE, 1)
        # Not seeded: the ranks start from different weights unless DDP broadcasts rank 0's.
        self.model = nn.Linear(FEATURES, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)


def record_writes(run_dir: str) -> list[str]:
    # Every file the library writes goes through `io._write` (atomic save), the checkpoint manager's
    # `write_atomically` (checkpoints and manifests) or `link_or_copy`.
    writes: list[str] = []
    write, link, atomic = dl_io._write, ckpt.link_or_copy, checkpoint_manager.write_atomically

    def recording_write(file: str, writer: Any) -> None:
        writes.append(os.path.relpath(file, run_dir))
        write(file, writer)

    def recording_atomic(file: str, writer: Any) -> None:
        if not file.endswith(".manifest.json"):
            writes.append(os.path.relpath(file, run_dir))
        atomic(file, writer)

    def recording_link(source: str, destination: str) -> None:
        writes.append(os.path.relpath(destination, run_dir))
        link(source, destination)

    dl_io._write = recording_write
    checkpoint_manager.write_atomically = recording_atomic
    ckpt.link_or_copy = recording_link
    return writes


def train_main_runner(out_dir: str, rank: int, report: dict, tensors: dict) -> None:
    run_dir = os.path.join(out_dir, "run")
    writes = record_writes(run_dir)
    config = {"dir": run_dir, "seed": 1, "epoch_end": 2, "log": True, "tensorboard": True}
    config["dataloader"] = {"batch_size": BATCH_SIZE}
    get_time_str = base_runner.get_time_str
    if rank == 1:
        # Rank 1 starts with another timestamp, seed and config (hence run_id): the runner must adopt rank 0's.
        config.update(seed=2, note="rank 1 differs")
        base_runner.get_time_str = lambda: "999999999999"
    runner = LinearRunner(config)
    base_runner.get_time_str = get_time_str
    report.update(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        backend=str(dist.get_backend()),
        runner_rank=runner.rank,
        runner_world_size=runner.world_size,
        id=runner.id,
        timestamp=runner.timestamp,
        seed=runner.config.seed,
        wrapped=type(runner.model).__name__,
        logger_is_none=runner.logger is None,
        writer_is_none=runner.writer is None,
    )
    tensors["initial"] = [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]
    results = runner.train()
    model = runner.unwrap(runner.model)
    tensors["final"] = [p.detach().clone() for p in model.parameters()]
    x_val, y_val = runner.datasets.val.tensors
    with torch.no_grad():
        expected_pred = model(x_val)
        report["expected_val_loss"] = float(runner.criterion(expected_pred, y_val))
    report["results"] = to_plain(results)
    report["evaluate_val_loss"] = float(runner.evaluate(["val"])["val"]["loss"])
    report["val_shard_length"] = len(runner.datasamplers.val)
    predictions = runner.infer("val")
    tensors["infer"] = predictions
    tensors["expected_infer"] = expected_pred
    report["writes"] = sorted(writes)
    report["run_dir"] = runner.dir
    runner.close()


def reference_accumulation(initial: list[torch.Tensor], dataset: TensorDataset, epochs: int) -> list[torch.Tensor]:
    # Unshuffled DistributedSampler: rank r gets samples r, r + 2, ...; with batch 4 and 2 ranks, micro-step j
    # covers samples 8j..8j+7 and an optimizer step (2 micro-steps) covers 16 consecutive samples.
    model = nn.Linear(FEATURES, 1)
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), initial):
            parameter.copy_(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = dataset.tensors
    window = 2 * BATCH_SIZE * 2
    for _ in range(epochs):
        for start in range(0, len(x), window):
            loss = nn.functional.mse_loss(model(x[start : start + window]), y[start : start + window])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def train_accumulating_runner(out_dir: str, report: dict, tensors: dict) -> None:
    config = {
        "dir": os.path.join(out_dir, "accum"),
        "seed": 1,
        "epoch_end": 2,
        "accum_steps": 2,
        "log": False,
        "dataloader": {"batch_size": BATCH_SIZE, "train": {"shuffle": False}},
    }
    runner = LinearRunner(config)
    counts = {"optimizer_step": 0, "allreduce": 0}
    step = runner.optimizer.step

    def counting_step(*args: Any, **kwargs: Any) -> Any:
        counts["optimizer_step"] += 1
        return step(*args, **kwargs)

    runner.optimizer.step = counting_step

    def counting_hook(state, bucket):  # DDP rejects hooks whose annotations are not its own types
        counts["allreduce"] += 1
        return default_hooks.allreduce_hook(state, bucket)

    runner.model.register_comm_hook(None, counting_hook)
    initial = [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]
    runner.train(evaluate_splits=[])
    report["accum"] = {
        "steps": runner.steps,
        "micro_steps_per_epoch": len(runner.dataloaders.train),
        **counts,
    }
    tensors["accum_final"] = [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]
    tensors["accum_reference"] = reference_accumulation(initial, runner.datasets.train, 2)
    runner.close()


def draw_seed(out_dir: str, report: dict) -> None:
    # No seed in the config: the seed set_seed() draws must still be the same on every rank.
    runner = dl.TorchRunner({"dir": os.path.join(out_dir, "seedless"), "log": False})
    report["drawn_seed"] = runner.set_seed(bias=False)
    report["drawn_config_seed"] = runner.config.seed


def main() -> None:
    out_dir = sys.argv[1]
    rank = int(os.environ["RANK"])
    report: dict = {"env_world_size": int(os.environ["WORLD_SIZE"])}
    tensors: dict = {}
    train_main_runner(out_dir, rank, report, tensors)
    train_accumulating_runner(out_dir, report, tensors)
    draw_seed(out_dir, report)
    torch.save(tensors, os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as fp:
        json.dump(report, fp)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
