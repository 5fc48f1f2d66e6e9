"""Seeding and determinism of TorchRunner."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import danling as dl

from .checkpointing.test_resume import DropoutRunner
from .conftest import parameters_of


@pytest.mark.parametrize("num_workers", [0, 1])
def test_same_seed_gives_bit_identical_parameters(make_runner, num_workers):
    config = {"seed": 3, "epoch_end": 2, "dataloader": {"batch_size": 8, "num_workers": num_workers}}
    first = make_runner(DropoutRunner, **config)
    first.train()
    torch.manual_seed(12345)  # disturb the global generator between the runs
    second = make_runner(DropoutRunner, **config)
    second.train()
    for a, b in zip(parameters_of(first), parameters_of(second)):
        assert torch.equal(a, b)


class UnseededModelRunner(dl.TorchRunner):
    """Builds its model without seeding torch itself: the config's seed must decide the initial weights."""

    def __init__(self, config):
        super().__init__(config)
        self.model = torch.nn.Linear(4, 3)


def test_config_seed_decides_the_initial_weights(make_runner):
    first = make_runner(UnseededModelRunner, seed=11)
    second = make_runner(UnseededModelRunner, seed=11)
    third = make_runner(UnseededModelRunner, seed=12)
    assert torch.equal(first.model.weight, second.model.weight)
    assert not torch.equal(first.model.weight, third.model.weight)


def test_different_seeds_give_different_parameters(make_runner):
    first = make_runner(DropoutRunner, seed=3)
    first.train()
    second = make_runner(DropoutRunner, seed=4)
    second.train()
    assert not all(torch.equal(a, b) for a, b in zip(parameters_of(first), parameters_of(second)))


def test_set_seed_seeds_every_generator(make_runner):
    runner = make_runner()
    assert runner.set_seed(5) == 5
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    runner.set_seed(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_explicit_seed_wins_over_config_and_bias_false_adds_nothing(make_runner):
    runner = make_runner(seed=100)
    assert runner.set_seed(5) == 5
    assert runner.set_seed() == 100
    assert runner.set_seed(5, bias=False) == 5
    assert runner.set_seed(5, bias=3) == 8


@pytest.fixture
def restore_determinism():
    algorithms = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(algorithms)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def test_deterministic_mode(make_runner, restore_determinism):
    make_runner(deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
