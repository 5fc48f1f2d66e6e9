"""TensorBoard in `TorchRunner`: event files with the step scalars when enabled, nothing when not, lazy import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import LinearRegressionRunner

EVENTS = "events.out.tfevents.*"


def make_runner(tmp_path: Path, **config: Any) -> LinearRegressionRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / "run"), "log": False, "seed": 0, "epoch_end": 2}
    settings["dataloader"] = {"batch_size": 8}
    settings.update(config)
    return LinearRegressionRunner(settings)


def test_tensorboard_writes_step_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = make_runner(tmp_path, tensorboard=True)
    assert runner.writer is not None
    assert runner.log_interval == 1
    runner.train()
    run_dir = Path(runner.dir)
    assert len(list(run_dir.glob(EVENTS))) == 1
    runner.close()
    assert runner.writer is None
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr"} <= set(tags)
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == list(range(1, 11))  # one per optimizer step, 5 per epoch
    assert all(torch.isfinite(torch.tensor(event.value)) for event in losses)
    assert [event.value for event in events.Scalars("train/lr")] == pytest.approx([0.05] * 10)
    # Only the step results of training are written, and only under the split's name.
    assert all(tag.startswith("train/") for tag in tags)


@pytest.mark.parametrize("tensorboard", [False, None])
def test_no_tensorboard_no_writer_no_events(tmp_path, tensorboard):
    config = {} if tensorboard is None else {"tensorboard": tensorboard}
    runner = make_runner(tmp_path, **config)
    assert runner.writer is None
    runner.train()
    assert runner.writer is None
    assert list(Path(runner.dir).rglob(EVENTS)) == []
    assert (Path(runner.dir) / "results.json").is_file()  # the run did write its other files


def test_import_danling_does_not_import_tensorboard(tmp_path):
    script = f"""
import json, sys
import torch
from torch.utils.data import TensorDataset
import danling as dl

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard" or m == "torch.utils.tensorboard")

after_import = loaded()
runner = dl.TorchRunner({{"dir": {str(tmp_path / "run")!r}, "log": True}})
runner.datasets.val = TensorDataset(torch.randn(5, 2), torch.randn(5, 1))
runner.model = torch.nn.Linear(2, 1)
runner.criterion = torch.nn.MSELoss()
runner.build_dataloaders()
runner.evaluate(["val"])
print(json.dumps({{"after_import": after_import, "after_evaluate": loaded()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"after_import": [], "after_evaluate": []}
