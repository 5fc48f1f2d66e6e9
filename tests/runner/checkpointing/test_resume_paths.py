"""Resuming what a user points at, extending a finished run, evaluating from a checkpoint, a run already complete."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing import ShardedCheckpointManager
from danling.runner.checkpointing.replan import replan

from ..conftest import make_data


class ScheduledRunner(dl.TorchRunner):
    """A classifier whose cosine scheduler is built, as users do, for the run's `total_steps`."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.datasets.train = make_data(32, seed=0)
        self.datasets.val = make_data(16, seed=1)
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = dl.optim.SCHEDULERS.build(self.optimizer, total_steps=self.total_steps, type="cosine")


def config(tmp_path: Path, name: str, **extra) -> dict:
    base = {"log": False, "dir": str(tmp_path / name), "epoch_end": 3, "seed": 1, "dataloader": {"batch_size": 8}}
    return {**base, **extra}


def fresh_lr(total_steps: int, steps: int) -> float:
    # The lr of a scheduler built for `total_steps` and advanced `steps` steps, as the user's code builds it.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = dl.optim.SCHEDULERS.build(optimizer, total_steps=total_steps, type="cosine")
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


@pytest.fixture
def finished(tmp_path) -> Path:
    runner = ScheduledRunner(config(tmp_path, "first"))
    runner.train()
    assert runner.steps == 12
    return Path(runner.dir)


@pytest.mark.parametrize("where", ["file", "checkpoints", "run"])
def test_checkpoint_accepts_a_file_a_checkpoint_directory_and_a_run_directory(tmp_path, finished, where):
    target = {
        "file": finished / "checkpoints" / "latest.pth",
        "checkpoints": finished / "checkpoints",
        "run": finished,
    }[where]
    runner = ScheduledRunner(config(tmp_path, f"again-{where}", checkpoint=str(target)))
    assert runner.steps == 12
    assert runner.config.checkpoint == str(finished / "checkpoints" / "latest.pth")
    expected = torch.load(finished / "checkpoints" / "latest.pth", weights_only=True)["model"]
    assert torch.equal(runner.model.weight, expected["weight"])


def test_a_directory_skips_a_corrupt_newest_checkpoint_without_moving_it(tmp_path, finished):
    latest = finished / "checkpoints" / "latest.pth"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flip the manifest's digest catches
    latest.write_bytes(bytes(data))  # in place: step-12.pth, the same file, is flipped too
    runner = ScheduledRunner(config(tmp_path, "again", checkpoint=str(finished)))
    assert runner.config.checkpoint == str(finished / "checkpoints" / "step-8.pth")
    assert runner.steps == 8
    assert latest.exists()  # a directory the user named: skipped, not quarantined


def test_a_directory_without_checkpoints_names_no_path_that_does_not_exist(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        ScheduledRunner(config(tmp_path, "x", checkpoint=str(empty)))
    quoted = list(str(error.value).split("'")[1::2])
    assert quoted
    assert all(os.path.exists(path) for path in quoted)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ScheduledRunner(config(tmp_path, "y", checkpoint=str(tmp_path / "missing")))


def test_a_sharded_checkpoint_directory_resumes(tmp_path, finished):
    saved = torch.load(finished / "checkpoints" / "latest.pth", weights_only=True)
    manager = ShardedCheckpointManager(str(tmp_path / "sharded"))
    path = manager.save(saved, steps=12, keep=0)
    assert path.endswith("latest.dcp")
    runner = ScheduledRunner(config(tmp_path, "from-dcp", checkpoint=path))
    assert runner.steps == 12
    assert runner.epoch_begin == 3
    assert torch.equal(runner.model.weight, saved["model"]["weight"])
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(saved["optimizer"]["param_groups"][0]["lr"])
    # The run directory around the sharded checkpoint is accepted too.
    again = ScheduledRunner(config(tmp_path, "from-dcp-dir", checkpoint=str(tmp_path / "sharded")))
    assert again.config.checkpoint == path
    assert again.steps == 12


def test_extending_a_finished_run_follows_the_new_plan(tmp_path, finished):
    latest = str(finished / "checkpoints" / "latest.pth")
    runner = ScheduledRunner(config(tmp_path, "longer", checkpoint=latest, epoch_end=5, log=True))
    # Its lr at the restored step is that of a fresh scheduler built for the new plan (20 steps) at step 12.
    assert runner.scheduler.last_epoch == 12
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(fresh_lr(20, 12), rel=1e-12)
    assert runner.optimizer.param_groups[0]["lr"] > 1e-5  # not the 1e-9 floor of the old plan
    before = [p.detach().clone() for p in runner.model.parameters()]
    runner.train()
    assert runner.steps == 20
    assert any(not torch.equal(a, b) for a, b in zip(before, runner.model.parameters()))  # it learned
    text = Path(runner.log_file).read_text()
    assert "12 -> 20 total steps" in text
    assert "continues at step 12 of 20" in text
    # The start banner names both plans.
    banner = text.split("differs from the defaults")[0]
    assert "learning-rate schedule rebuilt for the new plan: 12 -> 20 total steps" in banner


def test_resume_schedule_keep_keeps_the_saved_schedule(tmp_path, finished):
    latest = str(finished / "checkpoints" / "latest.pth")
    saved = torch.load(latest, weights_only=True)["scheduler"]
    with pytest.warns(RuntimeWarning, match="keeps the state it was saved with"):
        runner = ScheduledRunner(config(tmp_path, "keep", checkpoint=latest, epoch_end=5, resume_schedule="keep"))
    assert runner.scheduler.state_dict()["total_steps"] == saved["total_steps"] == 12
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-9)


def test_resume_schedule_rejects_an_unknown_value(tmp_path, finished):
    latest = str(finished / "checkpoints" / "latest.pth")
    with pytest.raises(ValueError, match="resume_schedule is 'again', but it must be one of"):
        ScheduledRunner(config(tmp_path, "bad", checkpoint=latest, epoch_end=5, resume_schedule="again"))


def test_the_same_plan_restores_the_scheduler_as_saved(tmp_path, finished):
    # A mid-run checkpoint resumed with the same plan: the saved scheduler state, bit for bit.
    epoch_one = str(finished / "checkpoints" / "step-8.pth")
    runner = ScheduledRunner(config(tmp_path, "same", checkpoint=epoch_one))
    saved = torch.load(epoch_one, weights_only=True)["scheduler"]
    assert runner.scheduler.state_dict() == saved


def test_replan_continues_at_the_same_fraction_when_the_global_batch_changes():
    saved = {"total_steps": 30, "global_batch": 16, "epoch_end": 3, "step_end": None, "train_lengths": {"train": 80}}
    current = {**saved, "total_steps": 60, "global_batch": 8}
    change = replan(saved, current, 20)
    assert change is not None
    assert change.position == 40
    assert math.isclose(change.position / 60, 20 / 30)


def test_evaluating_from_a_checkpoint_changes_nothing_in_the_training_run(tmp_path, finished):
    before = {path: path.stat().st_mtime_ns for path in finished.rglob("*")}
    latest = finished / "checkpoints" / "latest.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "resuming ... world_size" or other warning
        runner = ScheduledRunner.from_checkpoint(str(latest), overrides={"log": False, "auto_resume": True})
        result = runner.evaluate(["val"])
        predictions = runner.infer("val")
    assert predictions.shape == (16, 3)
    assert result["val"]["loss"] == pytest.approx(torch.load(latest, weights_only=True)["results"][2]["val"]["loss"])
    after = {path: path.stat().st_mtime_ns for path in finished.rglob("*")}
    assert after == before
    assert not Path(runner.config.get("project_root", "experiments")).joinpath(f"{runner.name}-{runner.id}").exists()


def test_evaluating_a_checkpoint_of_another_world_size_does_not_warn(tmp_path, finished):
    latest = finished / "checkpoints" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    state["position"]["world_size"] = 2
    state["rng"] = state["rng"] * 2
    other = tmp_path / "two-ranks.pth"
    torch.save(state, other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner = ScheduledRunner.from_checkpoint(str(other), overrides={"log": False})
        runner.evaluate(["val"])
    longer = ScheduledRunner.from_checkpoint(str(other), overrides={"log": False, "epoch_end": 4})
    with pytest.warns(RuntimeWarning, match="world_size 2 on world_size 1"):
        longer.train()  # training it is resuming: now it says so
    assert longer.steps == 16


def test_auto_resume_of_a_complete_run_returns_its_results(tmp_path):
    settings = {"project_root": str(tmp_path / "runs"), "auto_resume": True, "log": True}
    first = ScheduledRunner(config(tmp_path, "unused", **settings) | {"dir": None})
    first.train()
    results_file = Path(first.dir) / "results.json"
    saved = json.loads(results_file.read_text())
    again = ScheduledRunner(config(tmp_path, "unused", **settings) | {"dir": None})
    assert again.dir == first.dir
    weights = again.model.weight.detach().clone()
    results = again.train()
    assert list(results.keys()) == [0, 1, 2]
    assert torch.equal(again.model.weight, weights)
    assert again.steps == 12
    assert json.loads(results_file.read_text()) == saved
    assert "the run is already complete (epoch_end 3 reached)" in Path(again.log_file).read_text()
