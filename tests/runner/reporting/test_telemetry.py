"""Telemetry: throughput, time waiting for data versus computing, tokens and peak memory, in the epoch result."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import danling as dl
from danling.runner.reporting.telemetry import Telemetry, format_step_values, step_view

DATA_DELAY = 0.01  # seconds per sample fetched
COMPUTE_DELAY = 0.03  # seconds per forward pass


class SlowDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        time.sleep(DATA_DELAY)
        return {"input": self.x[index], "target": self.x[index, :1], "num_tokens": 3}


class SlowModel(nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        time.sleep(COMPUTE_DELAY)
        return super().forward(input)


class SlowRunner(dl.TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.datasets.train = SlowDataset(15)  # a short last batch
        self.datasets.val = SlowDataset(8)
        self.model = SlowModel(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)


def test_epoch_result_splits_data_wait_from_compute(tmp_path):
    config = {"dir": str(tmp_path / "run"), "log": False, "epoch_end": 1, "dataloader": {"batch_size": 4}}
    runner = SlowRunner({**config, "device": "cpu"})  # on CPU even where a GPU is present
    result = runner.train()[0]
    train, val = result["train"], result["val"]
    # 15 samples in 4 batches: at least 15 fetch delays waiting for data and 4 forward delays computing.
    assert train["data_time"] >= 15 * DATA_DELAY
    assert train["compute_time"] >= 4 * COMPUTE_DELAY
    assert train["data_time"] + train["compute_time"] == pytest.approx(train["epoch_time"])
    assert train["samples_per_s"] * train["epoch_time"] == pytest.approx(15)
    assert train["tokens_per_s"] * train["epoch_time"] == pytest.approx(15 * 3)
    assert val["samples_per_s"] * val["epoch_time"] == pytest.approx(8)
    assert val["data_time"] >= 8 * DATA_DELAY
    assert "peak_memory_mib" not in train  # CPU: no device memory to report
    assert train["lr"] == pytest.approx(1e-3)
    assert "lr" not in val


def test_step_rates_cover_the_batches_since_the_last_log():
    telemetry = Telemetry(torch.device("cpu"), world_size=2)
    telemetry.start_epoch("train", steps=0)
    batches = iter(telemetry.iterate([torch.zeros(4, 1)] * 6))
    for _ in range(3):
        next(batches)
    time.sleep(0.05)
    first = telemetry.step_stats(steps=3)
    for _ in range(3):
        next(batches)
    second = telemetry.step_stats(steps=4)  # one optimizer step for three batches (accumulation)
    assert first["samples_per_s"] <= 3 * 4 * 2 / 0.05  # both ranks' samples over at least the sleep
    assert first["time"] >= 0.05 / 3
    assert second["time"] > 0
    stats = telemetry.epoch_stats()
    assert telemetry.run_batches == {"train": 6}
    # Epoch numbers are exact: summed over the processes of a process group (here: none, this process only).
    assert stats["samples_per_s"] * stats["epoch_time"] == pytest.approx(6 * 4)


def test_step_lines_format():
    view = step_view({"loss": 0.1, "auroc": 0.9, "auprc": 0.8, "acc": 0.5, "lr": 3.2e-4, "time": 0.5})
    assert format_step_values(view) == "loss: 0.1000\tacc: 0.5000\tlr: 3.2e-04\ttime: 0.500 s/step"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_on_cuda(tmp_path):
    runner = SlowRunner({"dir": str(tmp_path / "run"), "log": False, "epoch_end": 1, "dataloader": {"batch_size": 4}})
    result = runner.train()[0]
    assert result["train"]["peak_memory_mib"] > 0


class CountingRunner(dl.TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        n = self.config.n
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1))
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)


def reads_of_tensor_values(tmp_path, monkeypatch, n: int) -> int:
    runner = CountingRunner(
        {"n": n, "dir": str(tmp_path / f"run{n}"), "log": True, "tensorboard": True, "epoch_end": 1}
        | {"log_interval": 1000, "dataloader": {"batch_size": 4}}
    )
    calls = []
    for name in ("item", "__float__", "__bool__", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    runner.train_epoch("train")
    monkeypatch.undo()
    runner.close()
    return len(calls)


def test_no_reads_of_tensor_values_per_step(tmp_path, monkeypatch):
    # A host-device sync reads a tensor's value: as many reads for 16 batches as for 4 means none per step.
    assert reads_of_tensor_values(tmp_path, monkeypatch, 16) == reads_of_tensor_values(tmp_path, monkeypatch, 64)
