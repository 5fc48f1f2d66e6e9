"""TorchRunner on CUDA: real autocast, gradient scaling, device placement, no host syncs, exact resume.

Skipped on machines without a GPU; run them where one is available with `python -m pytest -m cuda`.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from .checkpointing.test_resume import Crash, CrashingRunner, DropoutRunner
from .conftest import ClassifierRunner, parameters_of
from .distributed.test_parallel import WORKERS, assert_fsdp_matches_ddp, assert_states_close
from .loop.test_precision import ProbeRunner

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


# The suite's child processes see no GPU unless they are given this environment.
WITH_GPUS = {
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
}


@pytest.fixture
def make_runner(make_runner):
    # The suite's runners default to the CPU; these run on the GPU.
    def factory(*args, **config):
        return make_runner(*args, **{"device": "cuda", **config})

    return factory


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


def test_an_epoch_may_start_before_cuda_is_initialised(tmp_path, subprocess_run):
    # Nothing has touched CUDA yet (no model was moved there): resetting the peak-memory statistics must not raise.
    script = f"""
import torch
import danling as dl
runner = dl.TorchRunner({{"dir": {str(tmp_path / "run")!r}, "log": False, "device": "cuda"}})
assert not torch.cuda.is_initialized()
runner.telemetry.start_epoch("evaluate")
print(runner.telemetry.epoch_stats()["peak_memory_mib"])
"""
    result = subprocess_run([sys.executable, "-c", script], timeout=120, env=WITH_GPUS)
    assert result.returncode == 0, result.stderr[-4000:]
    assert float(result.stdout.strip().splitlines()[-1]) >= 0


# NCCL refuses two ranks on one GPU, and in one process nothing is sharded: FSDP2 on CUDA needs two GPUs.
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2 over NCCL needs 2 GPUs")


@pytest.fixture(scope="module")
def nccl_report(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict:
    # The 2-rank worker of `test_parallel.py` (gloo on CPU), here on NCCL and two GPUs.
    out_dir = tmp_path_factory.mktemp("nccl")
    torchrun(WORKERS / "parallel_worker.py", str(out_dir), nproc=2, timeout=300, env=WITH_GPUS)
    return torch.load(out_dir / "report.pt", weights_only=False)


@needs_two_gpus
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_and_ddp_on_nccl_reach_the_same_parameters(nccl_report, precision):
    ddp, fsdp = nccl_report[f"ddp-{precision}"], nccl_report[f"fsdp-{precision}"]
    assert (ddp["backend"], ddp["device"], fsdp["device"]) == ("nccl", "cuda:0", "cuda:0")
    assert_fsdp_matches_ddp(ddp, fsdp, precision)


@needs_two_gpus
@pytest.mark.parametrize("run", ["ddp-fp32", "fsdp-fp32", "ddp-bf16", "fsdp-bf16", "fsdp-compiled"])
def test_steps_on_nccl_pass_sync_debug_mode_error(nccl_report, run):
    # Every training step ran under `set_sync_debug_mode("error")` (a sync would have failed the worker) and the
    # counter saw no value read on the host either.
    assert nccl_report[run]["device"] == "cuda:0"  # rank 0's report
    assert nccl_report[run]["syncs"] == []


@needs_two_gpus
def test_fsdp_checkpoint_on_cuda_reloads_exactly(nccl_report):
    assert sorted(os.listdir(nccl_report["checkpoint"])) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    for part in ("model", "ema"):
        assert_states_close(nccl_report["reloaded"][part], nccl_report["fsdp-fp32"][part], 0)
    assert_states_close(nccl_report["pretrained"], nccl_report["fsdp-fp32"]["model"], 0)
    compiled = nccl_report["fsdp-compiled"]
    assert compiled["wrapped"] == "OptimizedModule"
    assert_states_close(compiled["model"], nccl_report["ddp-fp32"]["model"], 1e-5)
