"""The runner is a façade over composed parts: no mixins, no part that keeps the runner, no private reach-backs."""

from __future__ import annotations

import gc
import re
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl

RUNNER_DIR = Path(dl.__file__).parent / "runner"
FACADES = {"base_runner.py", "torch_runner.py"}
PRIVATE_REACH = re.compile(r"\brunner\._[a-z]")


class SmallRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(32, 4, generator=generator), torch.randn(32, 1))
        self.datasets.val = TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1))
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


def test_the_runner_classes_have_no_mixins():
    assert dl.TorchRunner.__mro__ == (dl.TorchRunner, dl.BaseRunner, object)


def test_no_module_outside_the_runner_classes_reaches_into_the_runner():
    sources = [path for path in RUNNER_DIR.rglob("*.py") if path.name not in FACADES]
    assert len(sources) > 30
    found = [
        f"{path.relative_to(RUNNER_DIR)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_REACH.search(line)
    ]
    assert not found, "\n".join(found)


def parts_holding(runner: dl.TorchRunner) -> list[str]:
    # The parts (objects in the runner's attributes) with an attribute that is the runner itself.
    held = []
    for part in vars(runner).values():
        if hasattr(part, "__dict__") and part is not runner:
            held.extend(f"{type(part).__name__}.{name}" for name, value in vars(part).items() if value is runner)
    return held


def referrers_of(target: object) -> list[str]:
    # What refers to `target` besides frames and its own attribute dict (after a collection).
    # (No comprehension here names `target`: its closure cell would refer to it.)
    gc.collect()
    own, found = vars(target), gc.get_referrers(target)
    return [type(item).__name__ for item in found if not isinstance(item, types.FrameType) and item is not own]


def test_no_part_keeps_a_reference_to_the_runner(tmp_path):
    config = {"epoch_end": 2, "dir": str(tmp_path), "dataloader": {"batch_size": 8}, "tensorboard": True}
    runner = SmallRunner({**config, "save_steps": 2, "eval_steps": 2, "async_save": True})
    runner.train()
    assert len(vars(runner)) > 10
    assert parts_holding(runner) == []
    assert referrers_of(runner) == []
    runner.close()
