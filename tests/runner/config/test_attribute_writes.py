"""Writing a config key through the runner: it updates the config, takes effect, and never replaces a method."""

from __future__ import annotations

import pytest
import torch

from ..conftest import ClassifierRunner


def test_assigning_a_value_to_a_method_name_writes_the_config_key(make_runner):
    runner = make_runner(log=False)
    runner.log = True
    assert runner.config.log is True
    assert callable(runner.log)  # still the method
    runner.log("still logs")  # no TypeError: 'bool' object is not callable


def test_assigning_a_value_to_a_method_that_is_no_config_key_raises(make_runner):
    runner = make_runner()
    with pytest.raises(AttributeError, match="cannot assign 3 to 'train_epoch': it is a method"):
        runner.train_epoch = 3
    assert callable(runner.train_epoch)


class ClippedLaterRunner(ClassifierRunner):
    """Plain SGD with lr 1: each step moves the weights by exactly the (clipped) gradient."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.moves: list[float] = []

    def train_step(self, data):
        if self.steps == 2:
            self.max_grad_norm = 1e-3  # mid-epoch, through the runner
        before = [p.detach().clone() for p in self.model.parameters()]
        result = super().train_step(data)
        moved = sum(((a - p.detach()) ** 2).sum() for a, p in zip(before, self.model.parameters()))
        self.moves.append(float(torch.sqrt(moved)))
        return result


def test_max_grad_norm_set_through_the_runner_takes_effect_at_the_next_step(make_runner):
    runner = make_runner(ClippedLaterRunner, epoch_end=1)  # 5 steps
    runner.train()
    assert runner.config.max_grad_norm == 1e-3
    assert min(runner.moves[:2]) > 1e-2  # unclipped
    assert max(runner.moves[2:]) <= 1e-3 * (1 + 1e-4)  # clipped from the next optimizer step on


def test_state_dict_has_no_side_effects(make_runner):
    runner = make_runner(epoch_end=2)
    runner.train()
    first, second = runner.state_dict(), runner.state_dict()
    assert first.keys() == second.keys()
    assert len(first["rng"]) == len(second["rng"])
    for a, b in zip(first["rng"], second["rng"]):
        assert torch.equal(a["torch"], b["torch"])
    assert first["position"] == second["position"]
    assert first["runner"] == second["runner"]
