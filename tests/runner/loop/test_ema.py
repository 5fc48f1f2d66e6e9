"""`ExponentialMovingAverage`: the average it keeps, its buffers, and its place in the runner and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danling.runner import ExponentialMovingAverage

from ..conftest import ClassifierRunner


def test_average_follows_the_textbook_recurrence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ExponentialMovingAverage(model, decay=0.8)
    reference = [parameter.detach().clone() for parameter in model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(6, 3))  # moves the batch-norm running statistics
        ema.update_parameters(model)
        reference = [0.8 * r + 0.2 * p.detach() for r, p in zip(reference, model.parameters())]
    for average, expected in zip(ema.module.parameters(), reference):
        torch.testing.assert_close(average, expected)
    for average, buffer in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(average, buffer)
    assert not any(parameter.requires_grad for parameter in ema.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.0, 2])
def test_decay_outside_the_unit_interval_is_rejected(decay):
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(nn.Linear(1, 1), decay=decay)


def test_runner_updates_saves_and_restores_the_average(make_runner):
    class EMARunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.ema = ExponentialMovingAverage(self.model, decay=0.5)

    runner = make_runner(EMARunner, epoch_end=1)
    initial = [parameter.clone() for parameter in runner.ema.parameters()]
    runner.train()
    trained = [parameter.clone() for parameter in runner.ema.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(initial, trained))
    restored = make_runner(EMARunner, epoch_end=1)
    restored.load_checkpoint(runner.checkpoint_dir + "/latest.pth")
    for parameter, expected in zip(restored.ema.parameters(), trained):
        assert torch.equal(parameter, expected)
