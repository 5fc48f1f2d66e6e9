"""
Worker for `tests/runner/distributed/test_multinode.py`: one process per "node", two nodes on loopback.

    python -m torch.distributed.run --nnodes=2 --node_rank=N --nproc_per_node=1 \
        --master_addr=127.0.0.1 --master_port=PORT tests/runner/workers/multinode_worker.py OUT_DIR

Each process prepares its node's data once (on the node's main process, `is_local_main_process`), trains a small
DDP runner, and writes `OUT_DIR/rank{RANK}.json`; only the global main process writes the run's files. The same
script runs unchanged in a single process (`python multinode_worker.py OUT_DIR`).
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
from danling.runner import on_local_main_process
from danling.utils.distributed import barrier
from danling.utils.io import to_plain


class MultiNodeRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.node_dir = os.path.join(self.config.out_dir, f"node{os.environ.get('GROUP_RANK', '0')}")
        self.prepare_data()  # once per node, before anyone reads it
        barrier()  # a no-op in a single process
        x, y = torch.load(os.path.join(self.node_dir, "data.pt"), weights_only=True)
        self.datasets.train = TensorDataset(x, y)
        self.model = nn.Linear(3, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)

    @on_local_main_process
    def prepare_data(self) -> None:
        os.makedirs(self.node_dir, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 3, generator=generator)
        torch.save((x, x.sum(1, keepdim=True)), os.path.join(self.node_dir, "data.pt"))
        with open(os.path.join(self.node_dir, "prepared_by.txt"), "a", encoding="utf-8") as fp:
            fp.write(f"{self.rank}\n")


def main() -> None:
    out_dir = sys.argv[1]
    config = {"dir": os.path.join(out_dir, "run"), "out_dir": out_dir, "seed": 3, "epoch_end": 2, "log": True}
    config["dataloader"] = {"batch_size": 4}
    runner = MultiNodeRunner(config)
    results = runner.train()
    report = {
        "rank": runner.rank,
        "local_rank": runner.local_rank,
        "world_size": runner.world_size,
        "node_rank": int(os.environ.get("GROUP_RANK", "0")),
        "is_main_process": runner.is_main_process,
        "is_local_main_process": runner.is_local_main_process,
        "logger_is_none": runner.logger is None,
        "wrapped": type(runner.model).__name__,
        "results": to_plain(results),
        "parameters": [p.detach().flatten().tolist() for p in runner.unwrap(runner.model).parameters()],
        "run_dir": runner.dir,
    }
    runner.close()
    with open(os.path.join(out_dir, f"rank{runner.rank}.json"), "w", encoding="utf-8") as fp:
        json.dump(report, fp)
    barrier()


if __name__ == "__main__":
    main()
