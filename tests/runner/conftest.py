"""Small runners and data shared by the TorchRunner tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import danling as dl


def make_data(n: int, seed: int, features: int = 4, classes: int = 3) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return TensorDataset(x, y)


def make_regression_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


class LinearRegressionRunner(dl.TorchRunner):
    """Linear regression on synthetic data: 40 train samples (5 batches of 8), 13 val samples (2 batches)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.datasets.train = make_regression_data(40, 0)
        self.datasets.val = make_regression_data(13, 1)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


class DictDataset(Dataset):
    """Yields mappings with `input` and `target`, to check mapping batches."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        x, y = self.base[index]
        return {"input": x, "target": y}


class ClassifierRunner(dl.TorchRunner):
    """A linear classifier on synthetic data: 40 train, 13 val samples unless the config says otherwise."""

    def __init__(self, config) -> None:
        super().__init__(config)
        train_size = self.config.get("train_size", 40)
        self.datasets.train = make_data(train_size, seed=0)
        self.datasets.val = make_data(self.config.get("val_size", 13), seed=1)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.get("lr", 0.1), momentum=0.9)


@pytest.fixture
def make_runner(tmp_path) -> Callable[..., ClassifierRunner]:
    """Build a fresh ClassifierRunner (or another class) writing into its own directory under tmp_path."""
    counter = iter(range(1000))

    def factory(runner_class: type = ClassifierRunner, **config) -> dl.TorchRunner:
        # On CPU unless a test asks for a device: the suite then means the same on a machine with a GPU.
        config.setdefault("device", "cpu")
        config.setdefault("log", False)
        config.setdefault("dir", str(tmp_path / f"run{next(counter)}"))
        config.setdefault("epoch_end", 2)
        config.setdefault("dataloader", {"batch_size": 8})
        return runner_class(config)

    return factory


def parameters_of(runner: dl.TorchRunner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]


def killed_save_dirs(tmp_path: Path, kills: int, seed: int, max_delay: float, *worker_args: str) -> Iterator[Path]:
    r"""
    Run `workers/checkpoint_saver.py` (which forks a process that saves checkpoints in a loop, per directory read
    from its stdin) and SIGKILL each saving process at a random instant after its first `latest.pth`; yield the
    checkpoint directory each killed process left behind.
    """
    saver = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "workers" / "checkpoint_saver.py"), *worker_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
    )
    rng = random.Random(seed)
    try:
        for kill in range(kills):
            checkpoint_dir = tmp_path / f"kill{kill}" / "checkpoints"
            saver.stdin.write(f"{tmp_path / f'kill{kill}'}\n")
            saver.stdin.flush()
            pid = int(saver.stdout.readline())
            deadline = time.monotonic() + 60
            while not (checkpoint_dir / "latest.pth").exists():
                assert time.monotonic() < deadline, "the saver never wrote latest.pth"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.05, max_delay))
            os.kill(pid, signal.SIGKILL)
            assert saver.stdout.readline().strip() == str(-signal.SIGKILL)
            yield checkpoint_dir
    finally:
        saver.stdin.close()
        saver.wait(timeout=30)


@pytest.fixture(scope="session")
def killed_saves() -> Callable[..., Iterator[Path]]:
    r"""[`killed_save_dirs`][] as a fixture (test modules in subfolders need not import conftest)."""
    return killed_save_dirs
