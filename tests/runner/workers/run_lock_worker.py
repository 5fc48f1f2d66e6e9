"""
A launch of a run for `tests/runner/rundir/test_run_lock.py`, in a process of its own.

    python run_lock_worker.py hold DIR          # start a run writing into DIR, save once, print "ready", sleep
    python run_lock_worker.py launch DIR [auto] # start a run writing into DIR (auto: with auto_resume), print "started"
    python run_lock_worker.py first-save ROOT   # a run under project_root ROOT whose first save stalls after writing
                                                # its temporary file; prints "writing" (a test then kills it)

A launch refused by the run directory's lock exits with status 1 and the error on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing import TorchFileFormat


class LockRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = nn.Linear(4, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def config_of(directory: str, **extra: Any) -> dict[str, Any]:
    return {"dir": directory, "name": "locked", "device": "cpu", "log": True, **extra}


def first_save_config(root: str) -> dict[str, Any]:
    # No `dir`: every launch gets a directory of its own under `root/{name}-{id}/`. A fixed experiment id keeps the
    # run's id when the repository's HEAD moves between launches.
    return {"project_root": root, "name": "first-save", "experiment_id": "lock-test", "device": "cpu", "log": False}


def stall_after_writing() -> None:
    write = TorchFileFormat.write

    def stalled(self: TorchFileFormat, state: Any, path: str) -> None:
        write(self, state, path)
        print("writing", flush=True)
        time.sleep(600)  # the temporary file is complete but not yet renamed: a kill now leaves it behind

    TorchFileFormat.write = stalled  # type: ignore[method-assign]


def main() -> None:
    mode, target, *flags = sys.argv[1:]
    if mode == "hold":
        runner = LockRunner(config_of(target))
        runner.save_checkpoint()
        print("ready", flush=True)
        time.sleep(600)
    elif mode == "launch":
        LockRunner(config_of(target, auto_resume="auto" in flags))
        print("started", flush=True)
    elif mode == "first-save":
        stall_after_writing()
        runner = LockRunner(first_save_config(target))
        runner.save_checkpoint()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
