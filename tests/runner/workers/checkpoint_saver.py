"""
Checkpoint writer that a test kills with SIGKILL, for `tests/runner/checkpointing/test_atomic_checkpoint.py`.

    python checkpoint_saver.py [async]

Reads one directory per line on stdin. For each, it forks a child that builds a runner with a model of a few MB
writing into that directory and calls `save_checkpoint()` forever; before save `k` every weight is set to `k`
and `steps` to `k`, so a checkpoint is consistent when all its weights equal its `runner.steps`. The parent
prints the child's pid, waits for it and prints its exit code (`-9` when killed). An empty line ends it. With
`async`, saves run with `async_save=True` (the weights change while the previous save is written in the
background).
Forking saves importing torch once per kill.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import torch
from torch import nn

import danling as dl

IN_FEATURES, HIDDEN = 256, 1024  # ~2.6 MB of float32 weights


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Linear(HIDDEN, IN_FEATURES))


class SaverRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = build_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def save_forever(directory: str, async_save: bool = False) -> None:
    runner = SaverRunner({"dir": directory, "log": False, "async_save": async_save})
    for counter in itertools.count(1):
        with torch.no_grad():
            for parameter in runner.model.parameters():
                parameter.fill_(counter)
        runner.steps = counter
        runner.save_checkpoint()


def main() -> None:
    torch.set_num_threads(1)
    # Build one optimizer before forking: the first one imports torch._dynamo, which takes seconds.
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for line in sys.stdin:
        directory = line.strip()
        if not directory:
            break
        pid = os.fork()
        if pid == 0:  # the child saves until it is killed
            try:
                save_forever(directory, async_save="async" in sys.argv[1:])
            finally:
                os._exit(1)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    main()
