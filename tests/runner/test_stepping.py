"""`config.steps` is the single source of truth for the step count, and the hot loop never writes the config."""

from __future__ import annotations

import torch

from danling.runner import Config
from danling.runner.stepping import clear_gradients

from .conftest import ClassifierRunner


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


def test_the_hot_loop_never_writes_the_config(make_runner, monkeypatch):
    runner = make_runner(epoch_end=1)
    writes = []
    original = Config.set

    def counting_set(self, name, value, *args, **kwargs):
        writes.append(name)
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(Config, "set", counting_set)
    runner.train_epoch("train")
    assert runner.steps == 5
    assert "steps" not in writes


def test_setting_steps_sets_every_view(make_runner):
    runner = make_runner()
    runner.steps = 11
    assert runner.config.steps == runner.dict()["steps"] == 11
    runner.config.steps = 4
    assert runner.steps == 4
    runner.config["steps"] = 7
    assert runner.steps == 7


def two_group_optimizer() -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    parameters = [torch.ones(3, requires_grad=True) for _ in range(3)]
    optimizer = torch.optim.SGD([{"params": parameters[:2]}, {"params": parameters[2:], "lr": 0.5}], lr=0.1)
    sum(parameter.sum() for parameter in parameters).backward()
    return optimizer, parameters


def test_clear_gradients_sets_every_gradient_of_every_group_to_none():
    optimizer, parameters = two_group_optimizer()
    assert all(parameter.grad is not None for parameter in parameters)
    clear_gradients(optimizer)
    assert all(parameter.grad is None for parameter in parameters)
    clear_gradients(optimizer)  # nothing to clear: still fine
    assert all(parameter.grad is None for parameter in parameters)


def test_clear_gradients_leaves_an_optimizer_with_its_own_zero_grad_to_it():
    class KeepsGradients(torch.optim.SGD):
        calls: list = []

        def zero_grad(self, set_to_none: bool = True) -> None:
            self.calls.append(set_to_none)  # e.g. an optimizer that must zero buffers of its own

    parameter = torch.ones(2, requires_grad=True)
    optimizer = KeepsGradients([parameter], lr=0.1)
    parameter.sum().backward()
    clear_gradients(optimizer)
    assert KeepsGradients.calls == [True]
    assert parameter.grad is not None  # its zero_grad decided to keep them


def test_clear_gradients_calls_a_zero_grad_set_on_the_optimizer_object():
    optimizer, parameters = two_group_optimizer()
    calls = []
    optimizer.zero_grad = lambda set_to_none=True: calls.append(set_to_none)  # e.g. patched by another library
    clear_gradients(optimizer)
    assert calls == [True]
    assert all(parameter.grad is not None for parameter in parameters)


def test_clear_gradients_keeps_the_profiler_range_while_a_profiler_records():
    optimizer, parameters = two_group_optimizer()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        clear_gradients(optimizer)
    assert all(parameter.grad is None for parameter in parameters)
    names = {event.key for event in profiler.key_averages()}
    assert "Optimizer.zero_grad#SGD.zero_grad" in names


def test_training_clears_the_gradients_after_each_optimizer_step(make_runner):
    runner = make_runner(ClassifierRunner, epoch_end=1)
    runner.train()
    assert runner.steps > 0
    assert all(parameter.grad is None for parameter in runner.model.parameters())
