"""`config.steps` is the single source of truth for the step count, and the hot loop never writes the config."""

from __future__ import annotations

import torch

from danling.runner import Config

from ..conftest import ClassifierRunner


class SpyRunner(ClassifierRunner):
    """Records every view of the step count after each training step, as a hook would see it."""

    def __init__(self, config):
        super().__init__(config)
        self.views: list[tuple] = []

    def train_step(self, data):
        output = super().train_step(data)
        self.views.append((self.steps, self.config.steps, self.config["steps"], self.dict()["steps"]))
        return output


def test_every_view_of_the_step_count_agrees_during_an_epoch(make_runner):
    runner = make_runner(SpyRunner, epoch_end=2, accum_steps=2)  # 5 batches: 3 steps per epoch
    runner.train()
    assert [view[0] for view in runner.views] == [0, 1, 1, 2, 3, 3, 4, 4, 5, 6]
    for view in runner.views:
        assert len(set(view)) == 1, view
    assert runner.config.steps == runner.steps == 6
    checkpoint = torch.load(f"{runner.checkpoint_dir}/latest.pth", weights_only=True)
    assert checkpoint["runner"]["steps"] == 6


def test_the_step_count_is_written_through_the_config_once_per_step(make_runner, monkeypatch):
    # No writes into chanfig's internals: each optimizer step is one ordinary config write.
    runner = make_runner(epoch_end=1)
    writes = []
    original = Config.set

    def counting_set(self, name, value, *args, **kwargs):
        writes.append(name)
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(Config, "set", counting_set)
    runner.train_epoch("train")
    assert runner.steps == 5
    assert writes.count("steps") == 5


def test_setting_steps_sets_every_view(make_runner):
    runner = make_runner()
    runner.steps = 11
    assert runner.config.steps == runner.dict()["steps"] == 11
    runner.config.steps = 4
    assert runner.steps == 4
    runner.config["steps"] = 7
    assert runner.steps == 7


def test_each_optimizer_step_clears_the_gradients_through_the_optimizers_zero_grad(make_runner):
    runner = make_runner(ClassifierRunner, epoch_end=1, accum_steps=2)  # 5 batches: 3 optimizer steps
    calls = []
    zero_grad = runner.optimizer.zero_grad

    def counting_zero_grad(set_to_none: bool = True) -> None:  # e.g. set on the object by another library
        calls.append(set_to_none)
        zero_grad(set_to_none=set_to_none)

    runner.optimizer.zero_grad = counting_zero_grad
    runner.train_epoch("train")
    assert calls == [True] * runner.steps == [True] * 3


def test_training_clears_the_gradients_after_each_optimizer_step(make_runner):
    runner = make_runner(ClassifierRunner, epoch_end=1)
    runner.train()
    assert runner.steps > 0
    assert all(parameter.grad is None for parameter in runner.model.parameters())
