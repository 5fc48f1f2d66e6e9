"""
Failures on rank 0 only, under a 2-rank gloo `torchrun`, for `tests/runner/test_rank_failure.py`.

    torchrun --nproc_per_node=2 rank_failure_worker.py OUT_DIR

`dist_timeout` is 120 s. Each case trains a fresh runner (in the same process group) with a real fault on rank 0:
its checkpoint directory under a regular file (`ENOTDIR`), or its checkpoint writer (or its half of a sharded
commit) raising `ENOSPC` / `EIO`. Every rank must raise `RankFailedError` naming rank 0 and its problem within
seconds, and the process group stays usable for the next case. The last case is left uncaught, so both ranks exit
non-zero. Each rank writes `OUT_DIR/rank{R}.json`: per case, the error's type and message, the steps reached and
the seconds the case took.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.checkpointing import formats, sharded
from danling.runner.distributed.consensus import RankFailedError


class Job(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(
            torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)
        )
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_step(self, data: Any) -> Any:
        if self.config.get("step_sleep") is not None:  # slow steps: a background save fails in mid-epoch
            time.sleep(self.config["step_sleep"])
        return super().train_step(data)


@contextmanager
def patched(owner: Any, name: str, replacement: Callable, active: bool) -> Iterator[None]:
    original = getattr(owner, name)
    if active:
        setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def disk_full(original: Callable) -> Callable:
    def write(self: Any, state: Any, path: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def failing_swap(original: Callable) -> Callable:
    def swap(temporary: str, target: str) -> None:
        raise OSError(errno.EIO, f"Input/output error renaming {temporary!r} to {target!r}")

    return swap


def run_case(out: str, name: str, rank: int, config: dict, fault: Callable[[], Any], reports: dict) -> None:
    settings = {"seed": 1, "log": True, "dir": os.path.join(out, name, f"rank{rank}"), "epoch_end": 2}
    settings.update(dist_timeout=120, dataloader={"batch_size": 4}, **config)
    runner = Job(settings)
    report: dict[str, Any] = {"outcome": "finished", "started": time.time()}
    reports[name] = report
    try:
        with fault():
            runner.train()
    except RankFailedError as error:
        report.update(outcome="RankFailedError", message=str(error), failed_rank=error.rank)
        report["cause"] = None if error.__cause__ is None else f"{type(error.__cause__).__name__}: {error.__cause__}"
        raise
    except BaseException as error:
        report.update(outcome=type(error).__name__, message=str(error)[:2000])
        raise
    finally:
        report.update(ended=time.time(), steps=runner.steps, epochs=runner.epochs)
        report["seconds"] = report["ended"] - report["started"]
        runner.close()


def cases(out: str, rank: int) -> list[tuple[str, dict, Callable[[], Any]]]:
    blocker = os.path.join(out, "blocker")  # a regular file: no directory can be made under it
    with open(blocker, "w", encoding="utf-8") as fp:
        fp.write("not a directory")
    unwritable = os.path.join(blocker, "checkpoints") if rank == 0 else os.path.join(out, "unused")
    writer = formats.TorchFileFormat
    return [
        (
            "sync_mid_epoch",
            {"save_steps": 3, "preemption_signals": []},
            lambda: patched(writer, "write", disk_full, rank == 0),
        ),
        (
            "async_in_epoch",
            # The failure rides on the preemption all-reduce, every 2 steps: found at step 6, before the epoch's end.
            {"async_save": True, "step_sleep": 0.1, "preemption_check_steps": 2},
            lambda: patched(writer, "write", disk_full, rank == 0),
        ),
        (
            "async_no_signals",
            # No signals: the failures still get their all-reduce, every 2 steps.
            {"async_save": True, "preemption_signals": [], "step_sleep": 0.1, "preemption_check_steps": 2},
            lambda: patched(writer, "write", disk_full, rank == 0),
        ),
        (
            "async_last_save",
            {"async_save": True, "epoch_end": 1},
            lambda: patched(writer, "write", disk_full, rank == 0),
        ),
        ("sharded_commit", {"strategy": "fsdp"}, lambda: patched(sharded, "swap_into_place", failing_swap, rank == 0)),
        ("sync_epoch_end", {"checkpoint_dir": unwritable}, lambda: patched(writer, "write", disk_full, False)),
    ]


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    reports: dict[str, Any] = {}
    path = os.path.join(out, f"rank{rank}.json")
    try:
        for name, config, fault in cases(out, rank):
            try:
                run_case(out, name, rank, config, fault, reports)
            except RankFailedError:
                if name == "sync_epoch_end":
                    raise  # the last case: uncaught, so both ranks exit non-zero
    finally:
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(reports, fp)


if __name__ == "__main__":
    main()
