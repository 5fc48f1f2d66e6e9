"""
A training job whose records (`metrics.jsonl`, the trackers) are checked across kills, for
`tests/runner/reporting/test_metrics_file.py` and `tests/runner/reporting/test_trackers.py`.

    python recorded_job.py OUT_DIR [--kill-at STEP [--kill-batch B]] [--signal KILL|TERM] [--checkpoint PATH]
        [--no-auto-resume] [--accum-steps N] [--log-interval N] [--trackers NAME ...]

It trains 3 epochs of 5 batches (and evaluates 3 batches of `val` after each) under `OUT_DIR/experiments`, with a
log line every 2 batches (`--log-interval`) and a checkpoint every 3 optimizer steps. `--kill-at` sends the process
`--signal` right after the first training log line of that optimizer step (of batch `--kill-batch` of its epoch,
when given) is recorded: SIGKILL dies on the spot, SIGTERM saves at the next optimizer step and exits 143.
Launched again (with `auto_resume`, or `--checkpoint`), it continues the run.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


class RecordedRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(20, 0)
        self.datasets.val = make_data(10, 1)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


class KillAt(dl.Callback):
    r"""Sends this process `signum` once the training log line of optimizer step `step` (and `batch`) is recorded."""

    def __init__(self, step: int, signum: int, batch: int | None = None) -> None:
        self.step, self.signum, self.batch = step, signum, batch

    def on_log(self, runner: Any, split: str, result: Any) -> None:
        if runner.mode != "train" or runner.steps != self.step:
            return
        if self.batch is None or runner.log_position[0] == self.batch:
            self.step = -1
            os.kill(os.getpid(), self.signum)


def job_config(out_dir: str, **changes: Any) -> dict[str, Any]:
    r"""The job's config under `out_dir/experiments`."""
    config = {
        "project_root": os.path.join(out_dir, "experiments"),
        "auto_resume": True,
        "seed": 3,
        "epoch_end": 3,
        "save_steps": 3,
        "log_interval": 2,
        "dataloader": {"batch_size": 4, "val": {"shuffle": False}},
    }
    return {**config, **changes}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-batch", type=int)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM"])
    parser.add_argument("--checkpoint")
    parser.add_argument("--no-auto-resume", action="store_true")
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=2)
    parser.add_argument("--trackers", nargs="*", default=[])
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    changes: dict[str, Any] = {"accum_steps": args.accum_steps, "log_interval": args.log_interval}
    changes["trackers"] = args.trackers
    if args.no_auto_resume:
        changes["auto_resume"] = False
    if args.checkpoint is not None:
        changes["checkpoint"] = args.checkpoint
    runner = RecordedRunner(job_config(args.out_dir, **changes))
    if args.kill_at is not None:
        runner.add_callback(KillAt(args.kill_at, getattr(signal, f"SIG{args.signal}"), args.kill_batch))
    print(f"run directory: {runner.dir}", flush=True)
    runner.train()


if __name__ == "__main__":
    main()
