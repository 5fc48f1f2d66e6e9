"""
`config.compile`: training, evaluation and inference all run the compiled model; checkpoints keep clean names.

One run with the default backend (inductor, which needs a C++ compiler: skipped cleanly without one) covers it all;
an eager run of the same seed is the reference.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl

_spec = importlib.util.spec_from_file_location("host_sync", Path(__file__).parent / "workers" / "host_sync.py")
host_sync = sys.modules.setdefault("host_sync", importlib.util.module_from_spec(_spec))  # Dynamo imports it by name
_spec.loader.exec_module(host_sync)

C_COMPILERS = ("cc", "gcc", "g++", "clang", "clang++")


class TracedNet(nn.Module):
    """Records, for every forward, whether it ran inside a compiled graph (a list mutation Dynamo replays)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.compiled_calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.compiled_calls.append(torch.compiler.is_compiling())
        return self.linear(x)


class CompileRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, 4, generator=generator), torch.randint(0, 3, (48,), generator=generator)
        self.datasets.train = TensorDataset(x[:32], y[:32])  # 4 batches of 8
        self.datasets.val = TensorDataset(x[32:], y[32:])  # 2 batches of 8
        torch.manual_seed(0)
        self.model = TracedNet()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.counter = host_sync.HostSyncCounter()

    def train_step(self, data: Any) -> Any:
        self.counter.enabled = True
        try:
            return super().train_step(data)
        finally:
            self.counter.enabled = False


def run(tmp_path: Path, name: str, **config: Any) -> tuple[CompileRunner, Any, torch.Tensor]:
    settings = {"log": False, "dir": str(tmp_path / name), "epoch_end": 1, "seed": 0, "dataloader": {"batch_size": 8}}
    runner = CompileRunner({**settings, **config})
    with runner.counter:
        results = runner.train()
    return runner, results, runner.infer("val")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompileRunner, Any, torch.Tensor]:
    if not any(shutil.which(name) for name in C_COMPILERS):
        pytest.skip("torch.compile's default backend needs a C++ compiler; none is installed")
    try:
        return run(tmp_path_factory.mktemp("compile"), "compiled", compile=True)
    except Exception as error:  # a broken toolchain, not a bug of ours
        if "CppCompileError" in repr(error) or "C++ compile error" in str(error):
            pytest.skip(f"the C++ compiler does not work: {error!r}"[:500])
        raise


def test_compiled_model_trains_evaluates_and_infers_compiled(compiled, tmp_path):
    runner, results, predictions = compiled
    assert hasattr(runner.model, "_orig_mod")  # torch.compile's wrapper
    calls = runner.unwrap(runner.model).compiled_calls
    assert len(calls) == 4 + 2 + 2  # train batches, evaluation batches, inference batches
    # The first training batch counts the model's FLOPs, with compile set aside; every later one is compiled.
    assert calls[0] is False, calls
    assert all(calls[1:]), calls
    assert runner.telemetry.flops.per_sample > 0
    eager, eager_results, eager_predictions = run(tmp_path, "eager")
    assert not any(eager.model.compiled_calls)
    assert results[0]["train"]["loss"] == pytest.approx(eager_results[0]["train"]["loss"], rel=1e-5)
    assert results[0]["val"]["loss"] == pytest.approx(eager_results[0]["val"]["loss"], rel=1e-5)
    torch.testing.assert_close(predictions, eager_predictions, rtol=1e-5, atol=1e-6)


def test_compiled_training_steps_make_no_host_sync(compiled):
    runner = compiled[0]
    assert runner.counter.calls == [], runner.counter.report()


def test_checkpoint_of_a_compiled_model_has_clean_names_and_loads_anywhere(compiled, tmp_path):
    runner = compiled[0]
    checkpoint = torch.load(Path(runner.checkpoint_dir) / "latest.pth", weights_only=True)
    assert sorted(checkpoint["model"]) == ["linear.bias", "linear.weight"]
    eager = CompileRunner({"log": False, "dir": str(tmp_path / "load"), "epoch_end": 1})
    eager.load_checkpoint(Path(runner.checkpoint_dir) / "latest.pth")
    for loaded, trained in zip(eager.model.parameters(), runner.unwrap(runner.model).parameters()):
        assert torch.equal(loaded, trained)
