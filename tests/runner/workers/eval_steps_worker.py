"""
Two-process DDP worker for `tests/runner/distributed/test_eval_steps.py`: step evaluations (`eval_steps`) under DDP.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/runner/workers/eval_steps_worker.py OUT_DIR

Trains 2 epochs of 5 optimizer steps (40 samples, 2 ranks x batch 4) evaluating every 2 steps (13 val samples:
uneven shards), saving a mid-epoch checkpoint every 3 steps; then resumes a new runner from the mid-epoch
checkpoint of step 3. Each rank writes `OUT_DIR/rank{RANK}.json`: the records of both runs, the steps each
evaluated at, and, on rank 0, the val loss of the final weights computed by hand over the whole val set.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator))


class Runner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(40, 0)
        self.datasets.val = make_data(13, 1)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)


class Evaluations(dl.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_evaluate_end(self, runner: Any, split: str, result: Any) -> None:
        self.steps.append(runner.steps)


def records(runner: dl.TorchRunner) -> list[dict[str, Any]]:
    return [
        {"epoch": r["epoch"], "step": r["step"], **{s: {"loss": r[s]["loss"]} for s in ("train", "val") if s in r}}
        for r in runner.results.values()
    ]


def main(out_dir: str) -> None:
    base = {"log": False, "seed": 1, "epoch_end": 2, "eval_steps": 2, "save_steps": 3, "keep_checkpoints": 10}
    base["dataloader"] = {"batch_size": 4}
    base["dir"] = os.path.join(out_dir, "straight")
    evaluations = Evaluations()
    straight = Runner(dict(base), callbacks=[evaluations])
    straight.train()
    report: dict[str, Any] = {"records": records(straight), "evaluated": evaluations.steps}
    if dist.get_rank() == 0:
        val = straight.datasets.val.tensors
        model = straight.unwrap(straight.model)
        with torch.no_grad():
            report["final_val_loss"] = nn.functional.cross_entropy(model(val[0]), val[1]).item()
    checkpoint = os.path.join(straight.checkpoint_dir, "step-3.pth")
    dist.barrier()
    resumed_evaluations = Evaluations()
    resumed = Runner(
        {**base, "dir": os.path.join(out_dir, "resumed"), "checkpoint": checkpoint}, callbacks=[resumed_evaluations]
    )
    report["resumed_from"] = resumed.steps
    resumed.train()
    report["resumed_records"], report["resumed_evaluated"] = records(resumed), resumed_evaluations.steps
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as file:
        json.dump(report, file)
    straight.close()
    resumed.close()


if __name__ == "__main__":
    main(sys.argv[1])
    dist.destroy_process_group()
