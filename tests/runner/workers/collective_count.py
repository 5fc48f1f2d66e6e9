"""
Counting the runner's Python-level collectives and host reads in every part of a 2-rank DDP training loop, for
`tests/runner/loop/test_host_sync.py`.

    python -m torch.distributed.run --nproc_per_node=2 ... collective_count.py OUT_DIR [--check-steps N] [--own-channel]
        [--loss-normalization tokens] [--skip-nonfinite-steps]

One epoch of 32 optimizer steps with the default config (`--check-steps` sets `preemption_check_steps`). Every
public collective of `torch.distributed` is wrapped to record the part of the loop that called it: `step`
(`train_step`: forward, backward, optimizer), `boundary` (the runner's work at each optimizer-step boundary:
preemption, `save_steps`), `log` (log steps), `epoch` (the rest of `train_epoch`: its end) or `outside`
(`train()` around the epochs: the epoch's checkpoint and agreement). DDP's own gradient all-reduce runs in C++
and is not seen. In `step` and `boundary` a [`HostSyncCounter`][] also records reads of tensor values on the host.
`--own-channel` makes the ranks agree over a `gloo` group of their own, as they do when the default backend is
`nccl`. `--loss-normalization tokens` and `--skip-nonfinite-steps` train in those modes (the criterion then sums).
A collective started with `async_op=True` is recorded with `(async)` after its name. Each rank writes
`OUT_DIR/rank{R}.json`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from host_sync import HostSyncCounter  # this directory, first on the path of a script it runs
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.distributed import consensus

STEPS = 32
BATCH_SIZE = 4
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
)


class CountingRunner(dl.TorchRunner):
    """A small regression model; records the phase of every collective and host read."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        size = STEPS * BATCH_SIZE * self.world_size
        self.datasets.train = TensorDataset(torch.randn(size, 4, generator=generator), torch.randn(size, 1))
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss(reduction="sum" if self.config.get("loss_normalization") == "tokens" else "mean")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.phase = "outside"
        self.collectives: dict[str, Counter] = {}
        self.host_reads: dict[str, Counter] = {}
        self.boundaries = 0
        self.boundary_steps: list[int] = []
        self.boundary_groups: list[str] = []
        self.counter = HostSyncCounter()
        hook = self._recovery.boundary_hook
        self._recovery.boundary_hook = lambda runner: self._wrap_hook(hook(runner))

    @contextmanager
    def counting(self, phase: str, host_reads: bool = False) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        self.counter.enabled = host_reads
        try:
            yield
        finally:
            self.counter.enabled = False
            for name, _ in self.counter.calls:
                self.host_reads.setdefault(phase, Counter())[name] += 1
            self.counter.calls.clear()
            self.phase = previous

    def record_collective(self, name: str, group: Any) -> None:
        self.collectives.setdefault(self.phase, Counter())[name] += 1
        if self.phase == "boundary":
            self.boundary_steps.append(self.steps)
            self.boundary_groups.append("default" if group in (None, dist.group.WORLD) else "own")

    def train_epoch(self, split: str = "train") -> Any:
        with self.counting("epoch"):
            return super().train_epoch(split)

    def train_step(self, data: Any) -> Any:
        with self.counting("step", host_reads=True):
            return super().train_step(data)

    def _log_step(self, split: str, iteration: int, length: int | None) -> None:
        with self.counting("log"):
            super()._log_step(split, iteration, length)

    def _wrap_hook(self, hook: Any) -> Any:
        if hook is None:
            return None

        def at_boundary(*args: Any) -> None:
            self.boundaries += 1
            with self.counting("boundary", host_reads=True):
                hook(*args)

        return at_boundary


def count_collectives(runner: CountingRunner) -> None:
    # `torch.distributed.<name>` is what library code calls (`dist.all_reduce`); torch's own helpers call the
    # module-level functions of `distributed_c10d`, so a collective built on another is counted once.
    for name in COLLECTIVES:
        function = getattr(dist, name, None)
        if function is None:
            continue

        def counted(*args: Any, _name: str = name, _function: Any = function, **kwargs: Any) -> Any:
            runner.record_collective(f"{_name}(async)" if kwargs.get("async_op") else _name, kwargs.get("group"))
            return _function(*args, **kwargs)

        setattr(dist, name, counted)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--check-steps", type=int)
    parser.add_argument("--own-channel", action="store_true", help="agree over a gloo group of its own")
    parser.add_argument("--loss-normalization", default="batch")
    parser.add_argument("--skip-nonfinite-steps", action="store_true")
    args = parser.parse_args()
    if args.own_channel:  # as under nccl: the default group is taken as one that cannot carry CPU tensors
        consensus.carries_cpu = lambda backend: False
    torch.set_num_threads(1)
    config: dict[str, Any] = {"dir": os.path.join(args.out_dir, "run"), "epoch_end": 1}
    config["dataloader"] = {"batch_size": BATCH_SIZE}
    config["loss_normalization"] = args.loss_normalization
    config["skip_nonfinite_steps"] = args.skip_nonfinite_steps
    if args.check_steps is not None:
        config["preemption_check_steps"] = args.check_steps
    runner = CountingRunner(config)
    count_collectives(runner)
    with runner.counter:
        runner.train()
    report = {
        "steps": runner.steps,
        "boundaries": runner.boundaries,
        "boundary_steps": runner.boundary_steps,
        "boundary_groups": sorted(set(runner.boundary_groups)),
        "backend": dist.get_backend() if runner.distributed else None,
        "collectives": {phase: dict(counts) for phase, counts in runner.collectives.items()},
        "host_reads": {phase: dict(counts) for phase, counts in runner.host_reads.items()},
    }
    with open(os.path.join(args.out_dir, f"rank{runner.rank}.json"), "w", encoding="utf-8") as fp:
        json.dump(report, fp)


if __name__ == "__main__":
    main()
