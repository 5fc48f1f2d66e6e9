"""
A training job that can be preempted, requeued, or hang, for `tests/runner/distributed/test_preemption.py`.

    python preemptible.py OUT_DIR [--signal-at STEP] [--signal-rank R] [--hang-at STEP] [--dist-timeout S]
        [--check-steps N] [--own-channel]
    python -m torch.distributed.run --nproc_per_node=2 ... preemptible.py OUT_DIR ...

The job trains with `auto_resume=True` under `OUT_DIR/experiments`, so launching the same command again continues
it. `--signal-at` makes rank R (default 0) send itself SIGTERM when it reaches that optimizer step (the signal
reaches that rank only); `--hang-at` makes rank 1 sleep at that step, as a hung rank would. Under `torchrun`,
rank 0 first calls `save_checkpoint` alone, as code decorated to run on the main process does. Each rank writes
`OUT_DIR/report-{launch}-rank{R}.json` on its way out, however it ends. `--check-steps` sets
`preemption_check_steps` (the ranks agree on signals every that many steps); `--own-channel` makes them agree over
a `gloo` group of their own, as under `nccl`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.distributed import consensus


def make_data(n: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


class JobRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(48)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.actions: dict[int, Any] = {}

    def optimizer_step(self) -> None:
        super().optimizer_step()
        action = self.actions.get(self.steps)
        if action is not None:
            action()


def job_config(out_dir: str, **changes: Any) -> dict[str, Any]:
    r"""The job's config under `out_dir/experiments` (a requeue with `changes` is the same run, launched again)."""
    config = {
        "project_root": os.path.join(out_dir, "experiments"),
        "auto_resume": True,
        "seed": 5,
        "epoch_end": 3,
        "save_steps": 4,
        "save_interval": 1,
        "log": True,
        "dataloader": {"batch_size": 4},
    }
    return {**config, **changes}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--signal-at", type=int)
    parser.add_argument("--signal-rank", type=int, default=0)
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--dist-timeout", type=float)
    parser.add_argument("--launch", default="0")
    parser.add_argument("--check-steps", type=int)
    parser.add_argument("--own-channel", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    config = job_config(args.out_dir)
    if args.dist_timeout is not None:
        config["dist_timeout"] = args.dist_timeout
    if args.check_steps is not None:
        config["preemption_check_steps"] = args.check_steps
    if args.own_channel:  # as under nccl: the default group is taken as one that cannot carry CPU tensors
        consensus.carries_cpu = lambda backend: False
    report: dict[str, Any] = {"outcome": "running"}
    runner = JobRunner(config)
    rank = runner.rank
    path = os.path.join(args.out_dir, f"report-{args.launch}-rank{rank}.json")
    report.update(rank=rank, start_steps=runner.steps, dir=runner.dir, resumed_from=runner.config.get("checkpoint"))
    if args.signal_at is not None and rank == args.signal_rank:
        runner.actions[args.signal_at] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    if args.hang_at is not None and rank == 1:
        runner.actions[args.hang_at] = lambda: time.sleep(300)
    try:
        if runner.distributed:
            if rank == 0:  # rank 0 alone: must not wait for the other ranks
                runner.save_checkpoint(name="rank0-only", save_best=False)
            report["rank0_only_save"] = "done"
            dist.barrier()
        report["started"] = time.time()
        runner.train()
        report["outcome"] = "finished"
    except SystemExit as exit:
        report["outcome"] = f"exit {exit.code}"
        raise
    except BaseException as error:
        report["outcome"] = f"{type(error).__name__}: {error}"[:2000]
        raise
    finally:
        report["ended"] = time.time()
        report["steps"] = runner.steps
        report["epochs"] = runner.epochs
        report["parameters"] = [p.detach().flatten().tolist() for p in runner.unwrap(runner.model).parameters()]
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(report, fp)


if __name__ == "__main__":
    main()
