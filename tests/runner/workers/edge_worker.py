"""
Two-process DDP worker for `tests/runner/distributed/test_distributed_edge_cases.py`: data edge cases under DDP.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/runner/workers/edge_worker.py OUT_DIR

Each rank writes `OUT_DIR/rank{RANK}.pt`: the parameters after an epoch whose length is not a multiple of
`accum_steps` (map-style and iterable data), the evaluation of the train split, `infer` outputs, the
error each rank raised when one rank's loss went NaN, and the step and epoch results of meters that one rank, or
no rank, updated.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

import danling as dl

FEATURES = 3
BATCH_SIZE = 4


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + torch.randn(n, 1, generator=generator))


class RankStream(IterableDataset):
    """Streams this rank's contiguous half of a dataset; no `__len__`."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __iter__(self):
        half = len(self.base) // dist.get_world_size()
        start = dist.get_rank() * half
        return (self.base[index] for index in range(start, start + half))


class Runner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        train = make_data(self.config.train_size, 0)
        self.datasets.train = RankStream(train) if self.config.get("stream") else train
        # Not seeded: the ranks start apart unless DDP broadcasts rank 0's weights.
        self.model = nn.Linear(FEATURES, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def parameters(runner: dl.TorchRunner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]


def short_window(out_dir: str, stream: bool) -> list[torch.Tensor]:
    # 40 samples, 20 per rank, batches of 4: 5 micro-steps per epoch in windows of 2, 2 and 1.
    config = {"dir": os.path.join(out_dir, f"window-{stream}"), "log": False, "epoch_end": 1, "accum_steps": 2}
    config.update(train_size=40, stream=stream, dataloader={"batch_size": BATCH_SIZE})
    runner = Runner(config)
    runner.train(evaluate_splits=[])
    assert runner.steps == 3, runner.steps
    return parameters(runner)


def evaluate_train(out_dir: str) -> dict[str, Any]:
    # 37 samples: DistributedSampler pads the shards to 19 + 19; evaluation must count 37.
    config = {"dir": os.path.join(out_dir, "evaluate"), "log": False, "epoch_end": 1, "train_size": 37}
    config["dataloader"] = {"batch_size": BATCH_SIZE}
    runner = Runner(config)
    runner.train(evaluate_splits=[])
    loss = runner.evaluate(["train"])["train"]["loss"]
    x, y = runner.datasets.train.tensors
    with torch.no_grad():
        expected = nn.functional.mse_loss(runner.unwrap(runner.model)(x), y).item()
    count = torch.tensor(float(runner.meters.loss.count))
    dist.all_reduce(count)
    # Infer on one sample (rank 1's shard is empty) and on a tensor of 7 rows.
    single = runner.infer(x[:1])
    rows = runner.infer(x[:7])
    with torch.no_grad():
        expected_rows = runner.unwrap(runner.model)(x[:7])
    return {
        "loss": loss,
        "expected_loss": expected,
        "count": float(count),
        "single": single,
        "rows": rows,
        "expected_rows": expected_rows,
    }


class PoisonedRunner(Runner):
    """Rank 1's loss of batch 1 is NaN; rank 0's losses stay finite until the NaN reaches the weights."""

    def advance(self, loss: torch.Tensor) -> None:
        if dist.get_rank() == 1 and self._stepper.windows.micro_step == 1:
            loss = loss * float("nan")
        super().advance(loss)


def nan_on_one_rank(out_dir: str) -> str:
    # The check at the log step after batch 1 is collective: both ranks stop there together.
    config = {"dir": os.path.join(out_dir, "nan"), "log": False, "epoch_end": 1, "train_size": 40}
    config.update(log_interval=2, dataloader={"batch_size": BATCH_SIZE})
    runner = PoisonedRunner(config)
    try:
        runner.train(evaluate_splits=[])
    except FloatingPointError as error:
        return str(error)
    return "no error"


class MeterRunner(Runner):
    """Resets `meters.time` every step and never updates it; only rank 0 updates `meters.rare` (at batch 2)."""

    def train_step(self, data: Any) -> Any:
        self.meters.time.reset()
        if dist.get_rank() == 0 and self._stepper.windows.micro_step == 2:
            self.meters.rare.update(1.0)
        return super().train_step(data)

    def step_log(self, split: str, iteration: int, length: int | None = None) -> Any:
        result = super().step_log(split, iteration, length)
        self.step_results.append(result.dict())
        return result


def meters_updated_on_one_rank(out_dir: str) -> dict[str, Any]:
    # Step results are reduced across ranks: both ranks must keep the same meters, whichever rank updated them.
    config = {"dir": os.path.join(out_dir, "meters"), "log": False, "epoch_end": 1, "train_size": 40}
    config.update(log_interval=1, dataloader={"batch_size": BATCH_SIZE})
    runner = MeterRunner(config)
    runner.step_results = []
    result = runner.train(evaluate_splits=[])[0]["train"]
    return {"steps": runner.step_results, "epoch": result.dict()}


def main() -> None:
    out_dir = sys.argv[1]
    report = {
        "map_window": short_window(out_dir, stream=False),
        "stream_window": short_window(out_dir, stream=True),
        "evaluate": evaluate_train(out_dir),
        "nan": nan_on_one_rank(out_dir),
        "meters": meters_updated_on_one_rank(out_dir),
    }
    torch.save(report, os.path.join(out_dir, f"rank{dist.get_rank()}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
