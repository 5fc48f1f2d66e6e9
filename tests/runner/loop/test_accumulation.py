"""Gradient accumulation, clipping, scheduler and EMA stepping in TorchRunner.advance."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.loop.accumulation import AccumulationWindows

from ..conftest import ClassifierRunner, parameters_of


class RegressionRunner(dl.TorchRunner):
    """Linear regression with plain SGD: one accumulated window must equal one large-batch step."""

    def __init__(self, config):
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        size = self.config.get("train_size", 16)
        self.datasets.train = TensorDataset(torch.randn(size, 3, generator=generator), torch.randn(size, 1))
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)


def large_batch_step(runner: dl.TorchRunner) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = runner.datasets.train.tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    return [p.detach() for p in model.parameters()]


def count_optimizer_steps(runner: dl.TorchRunner) -> list[int]:
    calls = [0]
    step = runner.optimizer.step

    def counting_step(*args, **kwargs):
        calls[0] += 1
        return step(*args, **kwargs)

    runner.optimizer.step = counting_step
    return calls


@pytest.mark.parametrize(("accum_steps", "expected_per_epoch"), [(1, 5), (2, 3), (3, 2), (5, 1), (8, 1)])
def test_one_optimizer_step_per_window_and_a_short_last_window(make_runner, accum_steps, expected_per_epoch):
    runner = make_runner(accum_steps=accum_steps, epoch_end=2)  # 5 micro-batches per epoch
    calls = count_optimizer_steps(runner)
    runner.train(evaluate_splits=[])
    assert calls[0] == 2 * expected_per_epoch
    assert runner.steps == 2 * expected_per_epoch


@pytest.mark.parametrize(("train_size", "accum_steps"), [(16, 4), (12, 4), (8, 2)])
def test_accumulated_window_equals_one_large_batch_step(make_runner, train_size, accum_steps):
    # batch 4: 16 samples with accum 4 is one full window; 12 samples with accum 4 is one short window of 3.
    runner = make_runner(
        RegressionRunner, train_size=train_size, accum_steps=accum_steps, epoch_end=1, dataloader={"batch_size": 4}
    )
    runner.train(evaluate_splits=[])
    for ours, reference in zip(parameters_of(runner), large_batch_step(runner)):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


class UnsizedLoader:
    """A loader without `__len__`: the runner cannot know where the last window ends."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size

    def __iter__(self):
        return iter(self.loader)


def test_window_cut_short_by_an_unsized_loader_is_rescaled(make_runner):
    runner = make_runner(RegressionRunner, train_size=12, accum_steps=4, epoch_end=1, dataloader={"batch_size": 4})
    runner.dataloaders.train = UnsizedLoader(runner.dataloaders.train)
    runner.dataloaders.train.loader.sampler.generator = None
    runner.train(evaluate_splits=[])
    assert runner.steps == 1
    for ours, reference in zip(parameters_of(runner), large_batch_step(runner)):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_total_steps_counts_optimizer_steps(make_runner):
    runner = make_runner(accum_steps=2, epoch_end=3)
    assert runner.total_steps == 3 * 3
    runner.train(evaluate_splits=[])
    assert runner.steps == runner.total_steps


def test_scheduler_steps_once_per_optimizer_step(make_runner):
    class ScheduledRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    runner = make_runner(ScheduledRunner, accum_steps=2, epoch_end=2)
    runner.train(evaluate_splits=[])
    assert runner.scheduler.last_epoch == runner.steps == 6
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)


class NoSyncProbe(nn.Module):
    """Stands in for a DDP-wrapped model: records which micro-steps ran under `no_sync`."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.in_no_sync = False
        self.forward_under_no_sync: list[bool] = []
        self.backward_under_no_sync: list[bool] = []
        self.linear.weight.register_hook(self._record_backward)

    def _record_backward(self, grad: torch.Tensor) -> torch.Tensor:
        self.backward_under_no_sync.append(self.in_no_sync)
        return grad

    @contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_under_no_sync.append(self.in_no_sync)
        return self.linear(x)


def test_no_sync_covers_forward_and_backward_of_all_but_the_last_micro_step(make_runner):
    class ProbeRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = NoSyncProbe()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    runner = make_runner(ProbeRunner, accum_steps=2, epoch_end=1)
    runner.train(evaluate_splits=[])
    expected = [True, False, True, False, False]  # windows [0, 1], [2, 3], [4]
    assert runner.model.forward_under_no_sync == expected
    assert runner.model.backward_under_no_sync == expected


def test_accumulate_on_an_unwrapped_model_is_a_no_op(make_runner):
    runner = make_runner(accum_steps=4)
    assert not hasattr(runner.model, "no_sync")
    with runner.accumulate():
        loss = runner.criterion(runner.model(torch.randn(2, 4)), torch.tensor([0, 1]))
        runner.advance(loss)
    assert runner.steps == 0  # first of four micro-steps: no optimizer step yet


class PlainSGDRunner(ClassifierRunner):
    def __init__(self, config):
        super().__init__(config)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)


@pytest.mark.parametrize(("option", "bound"), [("max_grad_norm", 1e-3), ("max_grad_value", 1e-4)])
def test_clipping_bounds_the_update(make_runner, option, bound):
    runner = make_runner(PlainSGDRunner, train_size=8, **{option: bound})
    before = parameters_of(runner)
    runner.train_epoch("train")
    delta = torch.cat([(a - b).flatten() for a, b in zip(parameters_of(runner), before)])
    assert runner.steps == 1
    size = delta.norm() if option == "max_grad_norm" else delta.abs().max()  # lr = 1: the update is the gradient
    assert size.item() == pytest.approx(bound, rel=1e-3)


def test_ema_is_updated_once_per_optimizer_step(make_runner):
    class EMARunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
            )

    runner = make_runner(EMARunner, accum_steps=2, epoch_end=1)
    runner.train(evaluate_splits=[])
    assert int(runner.ema.n_averaged) == runner.steps == 3
    assert not torch.equal(runner.ema.module[0].weight, runner.model[0].weight)


def test_has_nan_inf_grad():
    model = nn.Linear(2, 1)
    assert dl.TorchRunner.has_nan_inf_grad(model) is False
    model(torch.ones(1, 2)).sum().backward()
    assert dl.TorchRunner.has_nan_inf_grad(model) is False
    model.weight.grad[0, 0] = float("inf")
    assert dl.TorchRunner.has_nan_inf_grad(model) is True


def test_windows_past_the_epoch_length_are_full_windows_from_the_length_on():
    windows = AccumulationWindows(accum_steps=3, length=4)  # windows [0, 3), [3, 4), then [4, 7), [7, 10)
    sizes, closes = [], []
    for _ in range(10):
        sizes.append(windows.size())
        closes.append(windows.advance())
    assert sizes == [3, 3, 3, 1, 3, 3, 3, 3, 3, 3]
    assert closes == [False, False, True, True, False, False, True, False, False, True]


def test_a_loop_of_its_own_that_runs_past_the_epoch_length_keeps_dividing_by_real_window_sizes(make_runner):
    # A ported `train_epoch` that calls `train_step` itself, more times than the epoch the windows were set up for.
    runner = make_runner(accum_steps=2, epoch_end=1)
    runner.train(evaluate_splits=[])  # sets the windows up for an epoch of 5 micro-batches
    batch = next(iter(runner.dataloaders.train))
    calls = count_optimizer_steps(runner)
    losses = [runner.train_step(batch)[1] for _ in range(6)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert calls[0] == 3  # micro-steps 5 to 10 of the epoch: windows [5, 7), [7, 9), [9, 11) close at 6, 8 and 10


def _reference_window(micro_step: int, accum_steps: int, length: int | None) -> tuple[int, int]:
    # Written from the documented rule, independently of the class: windows of `accum_steps` from 0; the one
    # that holds the epoch's last micro-step ends with it; past the length, windows of `accum_steps` from it.
    if length is not None and micro_step >= length:
        start = length + (micro_step - length) // accum_steps * accum_steps
        return start, start + accum_steps
    start = micro_step // accum_steps * accum_steps
    return start, min(start + accum_steps, length) if length is not None else start + accum_steps


@pytest.mark.parametrize("accum_steps", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [None, 1, 5, 8, 9])
def test_windows_agree_with_the_rule_at_every_micro_step_also_after_a_resume_jump(accum_steps, length):
    # A resumed epoch sets `micro_step` from outside (forwards), and a new window object starts at 0: the cached
    # window must follow both.
    for resume_at in (0, 1, 3, 6):
        windows = AccumulationWindows(accum_steps, length)
        windows.size()  # locate the first window before the jump
        windows.micro_step = resume_at
        for micro_step in range(resume_at, resume_at + 14):
            start, end = _reference_window(micro_step, accum_steps, length)
            assert (windows.start(), windows.end(), windows.size()) == (start, end, end - start), micro_step
            assert windows.is_last() == (micro_step + 1 >= end)
            assert windows.advance() == (micro_step + 1 >= end)
