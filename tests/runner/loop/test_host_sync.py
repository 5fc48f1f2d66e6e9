"""
Contract: a training step that is not a log step makes no host-device sync, and under DDP the loop body makes no
per-step collective.

Every `train_step` (forward, loss, meters, metrics, backward, clipping, optimizer, EMA and scheduler step) runs
under a `TorchFunctionMode` that records calls reading a tensor's value on the host (`item`, `tolist`,
`__bool__`, `cpu`, `numpy`, ...). Logging happens between steps and may sync; the steps themselves must not.
Under 2-rank DDP (gloo) the whole loop body is watched: every Python-level collective of `torch.distributed`,
and host reads in the steps and at the optimizer-step boundaries (see `workers/collective_count.py`).

Two opt-in modes have a documented cost: `loss_normalization: tokens` adds, under DDP only, one asynchronous
`all_reduce` of the window's token count per optimizer step (no host read); `skip_nonfinite_steps: true` reads one
flag per optimizer step on the host (after an `all_reduce` of it under DDP).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import ExponentialMovingAverage

_spec = importlib.util.spec_from_file_location("host_sync", Path(__file__).parents[1] / "workers" / "host_sync.py")
host_sync = sys.modules.setdefault("host_sync", importlib.util.module_from_spec(_spec))  # Dynamo imports it by name
_spec.loader.exec_module(host_sync)
HostSyncCounter = host_sync.HostSyncCounter
COLLECTIVE_WORKER = Path(__file__).parents[1] / "workers" / "collective_count.py"


class CountingRunner(dl.TorchRunner):
    """Classifier with SGD, a scheduler, EMA and metrics; counts host syncs inside every training step."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(44, 4, generator=generator), torch.randint(0, 3, (44,)))
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        tokens = self.config.get("loss_normalization") == "tokens"
        self.criterion = nn.CrossEntropyLoss(reduction="sum" if tokens else "mean")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.ema = ExponentialMovingAverage(self.model, decay=0.9)
        if self.config.get("with_metrics", True):
            self.metrics = dl.metrics.multiclass_metrics(num_classes=3)
        self.counter = HostSyncCounter()
        self.counted_steps = 0

    def train_step(self, data: Any) -> Any:
        self.counted_steps += 1
        return self._counted(super().train_step, data)

    def optimizer_step(self) -> None:
        # Also covers the step of a window cut short at the end of an epoch.
        self._counted(super().optimizer_step)

    def _counted(self, function: Any, *args: Any) -> Any:
        previous = self.counter.enabled
        self.counter.enabled = True
        try:
            return function(*args)
        finally:
            self.counter.enabled = previous


def train_counting(make_config: Any, **config: Any) -> CountingRunner:
    runner = CountingRunner(make_config(**config))
    with runner.counter:
        runner.train()
    return runner


@pytest.fixture
def make_config(tmp_path):
    counter = iter(range(100))

    def factory(**config: Any) -> dict:
        settings = {"log": True, "log_interval": 2, "epoch_end": 2, "dataloader": {"batch_size": 8}}
        settings["dir"] = str(tmp_path / f"run{next(counter)}")
        return {**settings, **config}

    return factory


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="fp32"),
        pytest.param({"precision": "bf16"}, id="bf16"),
        pytest.param({"accum_steps": 4}, id="accumulation"),  # 6 batches: windows of 4 and 2
        pytest.param({"max_grad_norm": 0.5, "max_grad_value": 0.1}, id="clipping"),
        pytest.param({"precision": "bf16", "accum_steps": 3, "max_grad_norm": 0.5}, id="bf16-accumulation-clip"),
        pytest.param({"loss_normalization": "tokens"}, id="tokens"),
        pytest.param(
            {"loss_normalization": "tokens", "accum_steps": 4, "max_grad_norm": 0.5}, id="tokens-accumulation"
        ),
    ],
)
def test_training_steps_make_no_host_sync(make_config, config):
    runner = train_counting(make_config, **config)
    assert runner.counted_steps == 12  # 2 epochs of 6 batches, all counted, logging every 2
    assert runner.steps > 0
    assert runner.counter.calls == [], runner.counter.report()
    assert (Path(runner.dir) / "run.log").read_text().count("train") > 2  # the log steps did run


@pytest.mark.parametrize(("accum_steps", "steps"), [(1, 12), (4, 4)])
def test_skip_nonfinite_steps_reads_one_flag_per_optimizer_step(make_config, accum_steps, steps):
    # The price of `skip_nonfinite_steps: true`, and all of it: one `item` per optimizer step, none per micro-step.
    runner = train_counting(make_config, skip_nonfinite_steps=True, accum_steps=accum_steps)
    assert runner.steps == steps
    assert [name for name, _ in runner.counter.calls] == ["item"] * steps, runner.counter.report()


def test_counter_sees_a_sync_inside_a_step(make_config):
    # The control: the same run with one `.item()` per loss is caught, once per training step.
    class ItemLoss(nn.CrossEntropyLoss):
        def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            loss = super().forward(input, target)
            loss.item()
            return loss

    runner = CountingRunner(make_config(epoch_end=1, with_metrics=False))
    runner.criterion = ItemLoss()
    with runner.counter:
        runner.train()
    assert [name for name, _ in runner.counter.calls] == ["item"] * 6


def test_averaged_model_would_sync_where_ours_does_not(make_config):
    # Why the EMA helper exists: torch's AveragedModel tests its update count on the host every step.
    runner = CountingRunner(make_config(epoch_end=1, with_metrics=False))
    runner.ema = torch.optim.swa_utils.AveragedModel(runner.unwrap(runner.model))
    with runner.counter:
        runner.train()
    assert len(runner.counter.calls) >= 6
    assert {name for name, _ in runner.counter.calls} <= {"__bool__", "item", "is_nonzero"}


@pytest.mark.parametrize(
    ("args", "checks", "group"),
    [
        pytest.param((), [16, 32], "default", id="default"),  # preemption_check_steps: 16
        # The control: a check every step is seen at every step; over a gloo group of its own, as under nccl.
        pytest.param(("--check-steps", "1", "--own-channel"), list(range(1, 33)), "own", id="every-step"),
    ],
)
def test_ddp_loop_body_makes_no_per_step_collective(tmp_path, torchrun, args, checks, group):
    # 32 optimizer steps on 2 ranks with the default config: the preemption agreement (signals and failures of
    # one rank) runs every `preemption_check_steps` steps on a CPU tensor, nowhere else in the loop body.
    torchrun(COLLECTIVE_WORKER, str(tmp_path), *args)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["backend"] == "gloo"
        assert (report["steps"], report["boundaries"]) == (32, 32)
        assert "step" not in report["collectives"], report  # DDP's gradient all-reduce runs in C++, unseen
        assert "step" not in report["host_reads"], report
        assert report["collectives"]["boundary"] == {"all_reduce": len(checks)}, report
        assert report["boundary_steps"] == checks
        assert report["boundary_groups"] == [group]
        # Each check reads its flags from a CPU tensor: counted here, but no wait for a device.
        assert report["host_reads"]["boundary"] == {"tolist": len(checks)}, report


@pytest.mark.parametrize(
    ("args", "step_collectives", "step_reads"),
    [
        # One asynchronous all-reduce of the token count per optimizer step, waited for without a host read.
        pytest.param(("--loss-normalization", "tokens"), {"all_reduce(async)": 32}, {}, id="tokens"),
        # One all-reduce of the non-finite flag per optimizer step, read on the host.
        pytest.param(("--skip-nonfinite-steps",), {"all_reduce": 32}, {"item": 32}, id="skip-nonfinite"),
    ],
)
def test_ddp_opt_in_modes_add_one_collective_per_step(tmp_path, torchrun, args, step_collectives, step_reads):
    torchrun(COLLECTIVE_WORKER, str(tmp_path), *args)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["steps"] == 32
        assert report["collectives"]["step"] == step_collectives, report
        assert report["host_reads"].get("step", {}) == step_reads, report
        assert report["collectives"]["boundary"] == {"all_reduce": 2}, report  # the preemption agreement, unchanged


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"precision": "bf16", "accum_steps": 4, "max_grad_norm": 0.5},
        {"loss_normalization": "tokens", "accum_steps": 4, "max_grad_norm": 0.5},
    ],
)
def test_cuda_training_steps_pass_sync_debug_mode_error(make_config, config):
    # On CUDA, torch itself raises on every synchronising call made while the debug mode is "error".
    class StrictRunner(CountingRunner):
        def _counted(self, function: Any, *args: Any) -> Any:
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return super()._counted(function, *args)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

    runner = StrictRunner(make_config(device="cuda", **config))
    with runner.counter:
        runner.train()
    assert runner.counted_steps == 12
    assert runner.counter.calls == [], runner.counter.report()
