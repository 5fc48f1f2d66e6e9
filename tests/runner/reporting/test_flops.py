"""
FLOPs per sample, achieved TFLOP/s and MFU: counted once during the first training batch without disturbing
training, reported in epoch results, step lines, the log and TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.reporting.flops import peak_tflops_of
from danling.runner.reporting.telemetry import without_telemetry

WIDTH, DEPTH = 64, 16


class LinearStack(nn.Sequential):
    def __init__(self, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for _ in range(DEPTH):
            layers += [nn.Linear(WIDTH, WIDTH), nn.Dropout(dropout)]
        super().__init__(*layers)


class StackRunner(dl.TorchRunner):
    """A stack of linear layers regressing random targets: 48 samples, batches of 8."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, WIDTH, generator=generator), torch.randn(48, WIDTH, generator=generator)
        self.datasets.train = TensorDataset(x, y)
        torch.manual_seed(0)
        self.model = LinearStack(self.config.get("dropout", 0.0))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


def train(tmp_path: Path, name: str = "run", **config: Any) -> StackRunner:
    settings = {"dir": str(tmp_path / name), "log": False, "epoch_end": 1, "device": "cpu", "seed": 0}
    settings.update(dataloader={"batch_size": 8}, **config)
    runner = StackRunner(settings)
    runner.train()
    return runner


def test_counted_training_flops_of_a_linear_stack_are_six_times_the_parameters(tmp_path):
    runner = train(tmp_path)
    parameters = sum(parameter.numel() for parameter in runner.model.parameters())
    # Forward 2 FLOPs per weight, backward 4 (input and weight gradients); the first layer needs no input gradient.
    assert runner.telemetry.flops.per_sample == pytest.approx(6 * parameters, rel=0.05)


def test_counting_disturbs_nothing(tmp_path):
    # With dropout the random state matters: a counted run and one given `flops_per_sample` train alike.
    counted = train(tmp_path, "counted", dropout=0.2, epoch_end=2)
    counted_rng = torch.get_rng_state()
    given = train(tmp_path, "given", dropout=0.2, epoch_end=2, flops_per_sample=1e6)
    assert counted.telemetry.flops.per_sample != given.telemetry.flops.per_sample == 1e6
    assert counted.steps == given.steps == 12
    for mine, theirs in zip(counted.model.parameters(), given.model.parameters()):
        assert torch.equal(mine, theirs)
    assert torch.equal(counted_rng, torch.get_rng_state())
    assert without_telemetry(counted.results) == without_telemetry(given.results)


def test_epoch_results_report_tflops_and_mfu(tmp_path):
    runner = train(tmp_path, epoch_end=2, peak_tflops=0.5, log=True, tensorboard=True)
    runner.close()
    per_sample = runner.telemetry.flops.per_sample
    for epoch in (0, 1):
        result = runner.results[epoch]["train"]
        assert result["tflops"] == pytest.approx(per_sample * result["samples_per_s"] / 1e12, rel=1e-9)
        assert result["mfu"] == pytest.approx(result["tflops"] / 0.5, rel=1e-9)
    log = Path(runner.log_file).read_text()
    assert "TFLOP/s: " in log
    assert "mfu: " in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(runner.dir)
    events.Reload()
    scalars = events.Scalars("train/tflops")
    assert [event.value for event in scalars] == pytest.approx([runner.results[e]["train"]["tflops"] for e in (0, 1)])
    assert {"train/mfu", "train/step/tflops", "train/step/mfu"} <= set(events.Tags()["scalars"])


def test_no_mfu_without_a_known_peak(tmp_path):
    result = train(tmp_path).results[0]["train"]  # on CPU the peak is unknown
    assert result["tflops"] > 0
    assert "mfu" not in result


def test_evaluation_reports_no_training_flops(tmp_path):
    runner = train(tmp_path)
    runner.datasets.val = runner.datasets.train
    assert "tflops" not in runner.evaluate(["val"])["val"]


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100-PCIE-40GB", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("AMD Instinct MI300X", 1307.0),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_of_common_devices(name, peak):
    assert peak_tflops_of(name) == peak


@pytest.mark.parametrize("key", ["flops_per_sample", "peak_tflops"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_flops_keys_must_be_positive(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"{key}: got {value!r}; accepted values are numbers > 0"):
        StackRunner({"dir": str(tmp_path), "log": False, key: value})
