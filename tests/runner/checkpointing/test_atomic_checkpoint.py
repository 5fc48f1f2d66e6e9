"""
Checkpoints of `TorchRunner`: atomic under SIGKILL, failing loudly, `best`/`epoch-N` copies, and their contents.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing import find_resumable, verify_checkpoint
from danling.runner.checkpointing.files import find_latest_checkpoint

from ..conftest import killed_save_dirs, make_regression_data

WORKERS = Path(__file__).parents[1] / "workers"
TEMPORARY = re.compile(r"\.(latest|best|step-\d+)\.pth(\.manifest\.json)?\..+\.tmp")
VISIBLE = re.compile(r"(latest|best|step-\d+)\.pth(\.manifest\.json)?")
CHECKPOINT_KEYS = {"runner", "model", "optimizer", "scheduler", "rng", "results", "position"}


class CheckpointRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_regression_data(16, 0)
        self.datasets.val = make_regression_data(8, 1)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2)


def make_runner(tmp_path: Path, name: str = "run", **config: Any) -> CheckpointRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / name), "log": False, "seed": 0, "epoch_end": 1}
    settings["dataloader"] = {"batch_size": 8}
    settings.update(config)
    return CheckpointRunner(settings)


def model_state(runner: dl.TorchRunner) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in runner.unwrap(runner.model).state_dict().items()}


def assert_plain(obj: Any, path: str) -> None:
    if isinstance(obj, dict):
        assert type(obj) is dict, f"{path} is a {type(obj).__name__}"
        for key, value in obj.items():
            assert isinstance(key, (str, int)), f"{path} has a key of type {type(key).__name__}"
            assert_plain(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            assert_plain(value, f"{path}[{index}]")
    else:
        assert type(obj) in (str, int, float, bool, type(None)), f"{path} is a {type(obj).__name__}"


# Kills


def check_killed_checkpoint_dir(checkpoint_dir: Path, shapes: dict[str, torch.Size]) -> int:
    latest = checkpoint_dir / "latest.pth"
    names = os.listdir(checkpoint_dir)
    visible = sorted(name for name in names if not name.startswith("."))
    assert all(VISIBLE.fullmatch(name) for name in visible), visible
    assert "latest.pth" in visible
    verify_checkpoint(latest)  # a kill at any instant leaves a file its manifest accepts
    for name in names:
        if name.startswith("."):
            assert TEMPORARY.fullmatch(name), name  # hidden leftovers of the interrupted write only
    assert find_latest_checkpoint(str(checkpoint_dir)) == str(latest)
    state = torch.load(latest, weights_only=True)
    assert CHECKPOINT_KEYS - {"scheduler"} <= set(state)
    assert {key: value.shape for key, value in state["model"].items()} == shapes
    counter = state["runner"]["steps"]
    # Written as one unit: every weight holds the counter the config says.
    for key, value in state["model"].items():
        assert torch.all(value == counter), f"{key} does not hold {counter}"
    if "best.pth" in visible:
        assert set(torch.load(checkpoint_dir / "best.pth", weights_only=True)["model"]) == set(shapes)
    return counter


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the saver forks and is killed with SIGKILL")
def test_sigkill_during_saves_never_tears_latest(tmp_path):
    spec = importlib.util.spec_from_file_location("checkpoint_saver", WORKERS / "checkpoint_saver.py")
    saver_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(saver_module)
    SaverRunner, build_model = saver_module.SaverRunner, saver_module.build_model
    shapes = {key: value.shape for key, value in build_model().state_dict().items()}
    counters = [
        check_killed_checkpoint_dir(checkpoint_dir, shapes)
        for checkpoint_dir in killed_save_dirs(tmp_path, 6, 20240601, 0.5)
    ]
    assert max(counters) > 1, f"the kills never interrupted a rewrite of latest.pth: {counters}"
    # auto_resume's search finds a valid checkpoint in every killed directory.
    for kill in range(6):
        found = find_resumable([str(tmp_path / f"kill{kill}" / "checkpoints")])
        assert found is not None
        verify_checkpoint(found)
    # A fresh runner resumes from what a killed process left.
    runner = SaverRunner({"dir": str(tmp_path / "resume"), "log": False})
    runner.load_checkpoint(str(tmp_path / "kill5" / "checkpoints" / "latest.pth"))
    assert runner.steps == counters[-1]
    assert all(torch.all(p == counters[-1]) for p in runner.model.parameters())
    # The next save in a killed directory removes the temporary files the kills left.
    leftovers = [name for kill in range(6) for name in os.listdir(tmp_path / f"kill{kill}" / "checkpoints")]
    for kill in range(6):
        SaverRunner({"dir": str(tmp_path / f"kill{kill}"), "log": False}).save_checkpoint()
        names = os.listdir(tmp_path / f"kill{kill}" / "checkpoints")
        assert not [name for name in names if name.startswith(".")], names
    print(f"hidden leftovers before the next save: {sum(name.startswith('.') for name in leftovers)}")


# Failures


def test_failed_save_raises_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    runner = make_runner(tmp_path)
    runner.save_checkpoint()
    checkpoint_dir = Path(runner.checkpoint_dir)
    before = model_state(runner)
    with torch.no_grad():
        for parameter in runner.model.parameters():
            parameter.add_(1.0)

    def failing_save(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left") as raised:
        runner.save_checkpoint()
    assert str(checkpoint_dir / "latest.pth") in str(raised.value)
    assert "MiB free" in str(raised.value)
    monkeypatch.undo()
    names = sorted(os.listdir(checkpoint_dir))
    assert [name for name in names if name.endswith(".pth")] == ["best.pth", "latest.pth", "step-0.pth"], names
    assert not [name for name in names if name.startswith(".")], names  # the temporary file is removed
    for name in ("latest.pth", "best.pth"):
        saved = torch.load(checkpoint_dir / name, weights_only=True)["model"]
        assert saved.keys() == before.keys()
        for key, value in before.items():
            assert torch.equal(saved[key], value), f"{name}: {key} changed"


# best.pth and epoch-N.pth


@pytest.mark.parametrize(
    ("save_interval", "kept"),
    [(None, []), (0, []), (1, [0, 1, 2, 3]), (2, [1, 3]), (3, [2])],
)
def test_save_interval_keeps_epoch_checkpoints(tmp_path, save_interval, kept):
    runner = make_runner(tmp_path, epoch_end=4, save_interval=save_interval)
    runner.train()
    names = os.listdir(runner.checkpoint_dir)
    epochs = sorted(int(m.group(1)) for name in names if (m := re.fullmatch(r"epoch-(\d+)\.pth", name)))
    assert epochs == kept
    assert "latest.pth" in names
    for epoch in kept:
        state = torch.load(os.path.join(runner.checkpoint_dir, f"epoch-{epoch}.pth"), weights_only=True)
        assert state["runner"]["epochs"] == epoch
        assert sorted(state["results"]) == list(range(epoch + 1))


def test_best_checkpoint_follows_the_best_score(tmp_path):
    runner = make_runner(tmp_path)
    checkpoint_dir = runner.checkpoint_dir

    def saved_epochs(name: str) -> int:
        return torch.load(os.path.join(checkpoint_dir, name), weights_only=True)["runner"]["epochs"]

    for epoch, loss in enumerate([1.0, 2.0, 0.5, 0.7]):
        runner.epochs = epoch
        runner.append_result({"val": {"loss": loss}}, index=epoch)
        runner.save_checkpoint()
        assert saved_epochs("latest.pth") == epoch
        assert saved_epochs("best.pth") == {0: 0, 1: 0, 2: 2, 3: 2}[epoch]
    runner.epochs = 4
    runner.append_result({"val": {"loss": 0.1}}, index=4)
    runner.save_checkpoint(save_best=False)
    assert saved_epochs("latest.pth") == 4
    assert saved_epochs("best.pth") == 2


def test_named_checkpoint_is_not_latest(tmp_path):
    runner = make_runner(tmp_path)
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    runner.save_checkpoint(name="manual", save_best=False)
    assert sorted(os.listdir(runner.checkpoint_dir)) == ["manual.pth", "manual.pth.manifest.json"]


# Contents


@pytest.mark.parametrize("precision", [None, "bf16", "fp16"])
def test_checkpoint_holds_every_part_and_loads_weights_only(tmp_path, precision):
    runner = make_runner(tmp_path, precision=precision)
    runner.train()
    state = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    expected = CHECKPOINT_KEYS | ({"scaler"} if precision == "fp16" else set())
    assert set(state) == expected
    model = model_state(runner)
    assert state["model"].keys() == model.keys()
    assert all(torch.equal(state["model"][key], value) for key, value in model.items())
    assert state["optimizer"]["state"], "momentum buffers are missing"
    assert state["scheduler"]["last_epoch"] == runner.steps == 2
    assert len(state["rng"]) == 1
    assert state["runner"]["steps"] == 2
    assert state["runner"]["precision"] == precision
    assert sorted(state["results"]) == [0]
    if precision == "fp16":
        assert state["scaler"]["scale"] == runner.scaler.get_scale()


def test_runner_config_in_checkpoint_is_plain(tmp_path):
    runner = make_runner(tmp_path, betas=(0.9, 0.999), groups={"a": {"ids": [1, 2]}}, tags=("x", "y"))
    runner.train()
    state = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert_plain(state["runner"], "runner")
    assert_plain(state["results"], "results")
    assert state["runner"]["betas"] == [0.9, 0.999]
    assert state["runner"]["groups"] == {"a": {"ids": [1, 2]}}


def test_path_valued_config_still_loads_weights_only(tmp_path):
    runner = CheckpointRunner({"dir": tmp_path / "run", "log": False, "dataloader": {"batch_size": 8}})
    runner.save_checkpoint()
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pth", weights_only=True)
    assert state["runner"]["dir"] == str(tmp_path / "run")
    assert_plain(state["runner"], "runner")
