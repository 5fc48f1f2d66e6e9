"""
`grad_norm` in training step results: the total norm, before clipping, of the accumulated gradients at the latest
optimizer step, computed only for steps a log line reports.

The reference is computed by hand in an `optimizer_step` override (the gradients as the optimizer step receives
them, before clipping): `sqrt(sum(g ** 2))` in float64, divided by the loss scale under fp16. The 2-rank DDP and
FSDP2 cases run in `workers/grad_norm_worker.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import danling as dl

from ..conftest import make_data

WORKERS = Path(__file__).parents[1] / "workers"


class NormRunner(dl.TorchRunner):
    """A classifier that records the norm of its gradients at every optimizer step, and every step result."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(40, seed=0)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.reference: list[float] = []  # the hand-computed norm of every optimizer step
        self.logged: list[tuple[int, float | None]] = []  # (steps, grad_norm) of every training log line

    def optimizer_step(self) -> None:
        grads = [p.grad.double() for p in self.unwrap(self.model).parameters() if p.grad is not None]
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0  # fp16: the gradients are scaled here
        self.reference.append(float(torch.sqrt(sum((grad**2).sum() for grad in grads))) / scale)
        super().optimizer_step()


class Recorder(dl.Callback):
    def on_log(self, runner: Any, split: str, result: Any) -> None:
        if str(runner.mode) == "train":
            runner.logged.append((runner.steps, result.get("grad_norm")))


def train(tmp_path: Path, **config: Any) -> NormRunner:
    settings = {"dir": str(tmp_path / "run"), "log": False, "epoch_end": 2, "device": "cpu"}
    settings.update(dataloader={"batch_size": 4}, **config)
    runner = NormRunner(settings, callbacks=[Recorder()])
    runner.train()
    return runner


@pytest.mark.parametrize(
    "config",
    [
        {"log_interval": 3},
        {"log_interval": 2, "accum_steps": 3},  # windows of 3, 3, 3 and 1 per epoch of 10 batches
        {"log_interval": 4, "accum_steps": 3, "max_grad_norm": 0.05},
        {"log_interval": 5, "accum_steps": 2, "max_grad_value": 0.01},
        {"log_interval": 3, "max_grad_norm": 0.05, "max_grad_value": 0.01},
        {"log_interval": 1, "accum_steps": 4},  # log lines before the first step of the run have none
        {"log_interval": 3, "accum_steps": 2, "precision": "fp16"},  # the norm of the unscaled gradients
        {"log_interval": 3, "precision": "fp16", "max_grad_norm": 0.05},
    ],
)
def test_grad_norm_is_the_norm_before_clipping_of_the_latest_step(tmp_path, config):
    runner = train(tmp_path, **config)
    assert runner.logged
    for steps, grad_norm in runner.logged:
        if steps == 0:
            assert grad_norm is None
            continue
        assert grad_norm == pytest.approx(runner.reference[steps - 1], rel=1e-5)


def test_norm_is_computed_only_for_steps_a_log_line_reports(tmp_path, monkeypatch):
    calls = []
    original = torch.nn.utils.get_total_norm

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)
    runner = train(tmp_path, log_interval=5, epoch_end=1)  # 10 optimizer steps, log lines after steps 5 and 10
    assert len(runner.reference) == 10
    assert len(calls) == 2
    assert [steps for steps, _ in runner.logged] == [5, 10]


def test_grad_norm_reaches_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = train(tmp_path, log_interval=5, epoch_end=1, tensorboard=True)
    runner.close()
    events = EventAccumulator(runner.dir)
    events.Reload()
    scalars = events.Scalars("train/step/grad_norm")
    assert [event.step for event in scalars] == [5, 10]
    assert [event.value for event in scalars] == pytest.approx([runner.reference[4], runner.reference[9]], rel=1e-5)


@pytest.mark.distributed
def test_grad_norm_under_ddp_and_fsdp(tmp_path, torchrun):
    torchrun(WORKERS / "grad_norm_worker.py", str(tmp_path), timeout=300)
    report = torch.load(tmp_path / "report.pt", weights_only=False)
    for name in ("ddp", "ddp-clip", "fsdp", "fsdp-clip"):
        runs = report[name]
        assert runs[0]["logged"] == runs[1]["logged"]  # every rank reports the same norm
        logged, reference = runs[0]["logged"], runs[0]["reference"]
        assert [steps for steps, _ in logged] == [1, 2, 3, 4, 5, 6], name
        for steps, grad_norm in logged:
            assert grad_norm == pytest.approx(reference[steps - 1], rel=1e-5), name
    for clip in ("", "-clip"):  # sharded gradients have the norm of the whole ones
        ddp, fsdp = report[f"ddp{clip}"][0]["logged"], report[f"fsdp{clip}"][0]["logged"]
        assert [norm for _, norm in fsdp] == pytest.approx([norm for _, norm in ddp], rel=1e-5)
