"""TensorBoard in `TorchRunner`: event files with the step scalars when enabled, nothing when not, lazy import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import danling as dl

from ..conftest import ClassifierRunner, LinearRegressionRunner

EVENTS = "events.out.tfevents.*"


def make_runner(tmp_path: Path, runner_class: type = LinearRegressionRunner, **config: Any) -> LinearRegressionRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / "run"), "log": False, "seed": 0, "epoch_end": 2}
    settings["dataloader"] = {"batch_size": 8}
    settings.update(config)
    return runner_class(settings)


class ClassifierWithMetrics(ClassifierRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3)


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def test_tensorboard_writes_epoch_and_step_scalars(tmp_path):
    runner = make_runner(tmp_path, tensorboard=True, runner_class=ClassifierWithMetrics)
    assert runner.writer is not None
    assert runner.log_interval == 1
    runner.train()
    run_dir = Path(runner.dir)
    assert len(list(run_dir.glob(EVENTS))) == 1
    runner.close()
    assert runner.writer is None
    events = read_events(run_dir)
    tags = set(events.Tags()["scalars"])
    # Per-epoch scalars of every split and metric, at the global step after the epoch (5 optimizer steps each).
    for split, metric in [("train", "loss"), ("train", "acc"), ("val", "loss"), ("val", "acc"), ("val", "auroc")]:
        scalars = events.Scalars(f"{split}/{metric}")
        assert [event.step for event in scalars] == [5, 10]
        expected = [runner.results[epoch][split][metric] for epoch in (0, 1)]
        assert [event.value for event in scalars] == pytest.approx(expected, rel=1e-6)
    assert [event.value for event in events.Scalars("train/lr")] == pytest.approx([0.1, 0.1])
    assert {"train/samples_per_s", "train/data_time", "train/compute_time", "val/samples_per_s"} <= tags
    # Step scalars at every log step (log_interval 1: each batch), on the same x-axis, without dataset-level metrics.
    losses = events.Scalars("train/step/loss")
    assert [event.step for event in losses] == list(range(1, 11))
    assert all(torch.isfinite(torch.tensor(event.value)) for event in losses)
    assert [event.value for event in events.Scalars("train/step/lr")] == pytest.approx([0.1] * 10)
    assert "train/step/samples_per_s" in tags
    assert "train/step/acc" in tags
    assert not any(tag.endswith(("auroc", "auprc")) and "/step/" in tag for tag in tags)
    assert not any(tag.startswith("val/step/") for tag in tags)  # evaluation writes epoch scalars only


def test_step_scalars_when_log_interval_exceeds_the_epoch(tmp_path):
    runner = make_runner(tmp_path, tensorboard=True, log_interval=7, epoch_end=3)  # 5 batches an epoch
    runner.train()
    runner.close()
    events = read_events(Path(runner.dir))
    assert [event.step for event in events.Scalars("train/step/loss")] == [7, 14]
    assert [event.step for event in events.Scalars("val/loss")] == [5, 10, 15]


def test_hparams_hold_the_config_and_the_best_score(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    runner = make_runner(tmp_path, tensorboard=True, optim={"lr": 0.05}, runner_class=ClassifierWithMetrics)
    runner.train()
    runner.close()
    events = read_events(Path(runner.dir))
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["epoch_end"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["hparams/best_loss"]
    best = events.Scalars("hparams/best_loss")
    assert [event.value for event in best] == pytest.approx([runner.best_score])
    assert runner.best_score == min(result["val"]["loss"] for result in runner.results.values())


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
runner = dl.TorchRunner({{"dir": {str(tmp_path / "run")!r}, "log": True, "device": "cpu"}})
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
