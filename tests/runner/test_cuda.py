"""TorchRunner on CUDA: real autocast, gradient scaling, device placement, no host syncs, exact resume.

Skipped on machines without a GPU; run them where one is available with `python -m pytest -m cuda`.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from .conftest import ClassifierRunner, parameters_of
from .test_precision import ProbeRunner
from .test_resume import Crash, CrashingRunner, DropoutRunner

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


class DeviceProbe(nn.Module):
    """Records the device and dtype of its inputs and hidden activations."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)
        self.seen: list[tuple[torch.device, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(x)
        self.seen.append((x.device, hidden.dtype))
        return self.out(hidden)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cuda_autocast_in_training_and_evaluation(make_runner, precision, dtype):
    runner = make_runner(ProbeRunner, precision=precision, epoch_end=1)
    assert runner.device.type == "cuda"
    runner.train()
    assert set(runner.model.dtypes) == {dtype}
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in runner.model.parameters())


def test_batches_reach_the_model_on_cuda_from_pinned_memory(make_runner):
    class Runner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = DeviceProbe()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    runner = make_runner(Runner, epoch_end=1)
    assert runner.dataloaders.train.pin_memory is True
    runner.train()
    assert {device.type for device, _ in runner.model.seen} == {"cuda"}
    assert runner.infer("val").device.type == "cpu"


def test_fp16_scaler_skips_overflowing_steps_on_cuda(make_runner):
    runner = make_runner(precision="fp16")
    assert runner.scaler.is_enabled()
    before = parameters_of(runner)
    scale = runner.scaler.get_scale()
    loss = runner.model(torch.randn(2, 4, device="cuda")).sum() * float("inf")
    runner.advance(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters_of(runner)))
    assert runner.scaler.get_scale() < scale


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_training_steps_do_not_synchronise_with_the_host(make_runner, precision):
    runner = make_runner(precision=precision, epoch_end=1, log_interval=10**9, train_size=64)
    runner.train_epoch("train")  # warm up the CUDA context and allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loader = runner.dataloaders.train
        runner._start_epoch("train", runner.mode)
        runner._begin_accumulation(len(loader))
        for data in loader:
            runner.train_step(runner.to_device(data))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert runner.steps > 0


def test_two_plus_two_epochs_equal_four_straight_on_cuda(make_runner):
    straight = make_runner(DropoutRunner, seed=7, epoch_end=4, precision="bf16")
    straight.train()
    first = make_runner(CrashingRunner, seed=7, epoch_end=4, precision="bf16", crash_after=1)
    with pytest.raises(Crash):
        first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    assert "cuda" in torch.load(latest, weights_only=True)["rng"][0]
    resumed = make_runner(DropoutRunner, seed=7, epoch_end=4, precision="bf16", checkpoint=latest)
    resumed.train()
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
