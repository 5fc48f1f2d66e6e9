"""
Two-process worker for `tests/runner/distributed/test_process_group_exit.py`: a script that never destroys its process
group.

    python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=PORT \
        tests/runner/workers/exit_worker.py OUT_DIR [destroy]

Each rank trains one short epoch with a `TorchRunner` (which initialises gloo) and returns, leaving behind a
reference cycle that holds the group (as a runner and its DDP model do), with automatic garbage collection off. An
exit handler registered before the runner runs after the runner's own, and records in `OUT_DIR/exit-rank{RANK}.json`
whether the group still existed then and whether the cycle had been collected. With `destroy`, the script destroys
the group itself before it returns, as many scripts do; the cycle still holds the group's C++ side.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import weakref

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class GroupHolder:
    def __init__(self, group) -> None:
        self.group = group
        self.cycle = self


def record_at_exit(path: str, holder: weakref.ref) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        json.dump({"initialized_at_exit": dist.is_initialized(), "cycle_collected_at_exit": holder() is None}, fp)


class ExitRunner(dl.TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=generator)
        self.datasets.train = TensorDataset(x, (x.sum(1) > 0).long())
        self.model = nn.Linear(4, 2)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def main() -> None:
    out_dir = sys.argv[1]
    holder = GroupHolder(None)
    # Exit handlers run last-registered first: this one runs after the one the runner registers.
    atexit.register(record_at_exit, os.path.join(out_dir, f"exit-rank{os.environ['RANK']}.json"), weakref.ref(holder))
    runner = ExitRunner({"dir": os.path.join(out_dir, "run"), "epoch_end": 1, "dataloader": {"batch_size": 4}})
    runner.train()
    assert dist.is_initialized()  # still there when the script ends, unless it destroys it below
    gc.disable()  # from here only an explicit collection frees the cycle: the one the exit handler must run
    holder.group = dist.group.WORLD
    del holder
    if sys.argv[2:] == ["destroy"]:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
