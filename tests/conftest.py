"""Shared fixtures: every test runs in its own directory, with a clean environment and builtins put back."""

from __future__ import annotations

import builtins
import itertools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import distributed as dist

from danling.runner import BaseRunner

# Environment variables set by `torchrun`; a test that inherits them would think it runs distributed.
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    r"""
    Run each test in `tmp_path` outside any process group, then restore `print`, the process group and loggers.
    """
    monkeypatch.chdir(tmp_path)
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)
    original_print = builtins.print
    yield
    builtins.print = original_print
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("danling.runner.") and isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()


class ModelRunner(BaseRunner):
    r"""
    A tiny runner with a model and an optimizer, as a training script would define one.
    """

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.model = torch.nn.Linear(2, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture
def model_runner_cls() -> type[BaseRunner]:
    r"""The [`ModelRunner`][] class (a fixture, so test modules need not import conftest)."""
    return ModelRunner


@pytest.fixture
def new_runner(tmp_path: Path) -> Callable[..., BaseRunner]:
    r"""
    Factory of fresh runners writing into their own directory under `tmp_path`, with logging off by default.
    """
    counter = itertools.count()

    def factory(config: Mapping | None = None, cls: type[BaseRunner] = BaseRunner, **kwargs: Any) -> BaseRunner:
        settings: dict[str, Any] = {"log": False, "dir": str(tmp_path / f"run{next(counter)}")}
        settings.update(config or {})
        settings.update(kwargs)
        return cls(settings)

    return factory


def train_one_step(runner: BaseRunner) -> None:
    r"""Change the weights and the optimizer state of a [`ModelRunner`][] by one SGD step."""
    loss = runner.model(torch.ones(4, 2)).pow(2).sum()
    loss.backward()
    runner.optimizer.step()
    runner.optimizer.zero_grad()


@pytest.fixture
def step() -> Callable[[BaseRunner], None]:
    r"""[`train_one_step`][] as a fixture."""
    return train_one_step
