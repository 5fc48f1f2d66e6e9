"""What a run leaves on disk at start-up: `config.yaml` to rerun it, nothing when the start fails, and a new
directory when a trained run is evaluated from its checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

import danling as dl
from danling.runner.rundir.startup import RunDirGuard, write_config_file

from ..conftest import ClassifierRunner

EVENTS = "events.out.tfevents.*"


class RecipeConfig(dl.Config):
    epoch_end: int = 2
    seed: int = 3

    def __init__(self) -> None:
        super().__init__()
        self.dataloader.batch_size = 8
        self.network.width = 8

    def post(self) -> None:
        super().post()
        self.run_name = f"width{self.network.width}"


def test_config_yaml_reruns_the_same_run(tmp_path):
    config = RecipeConfig().parse(["--network.width", "16", "--accum_steps", "2", "--log", "false"])
    runner = ClassifierRunner(config)
    runner.train()
    path = Path(runner.dir) / "config.yaml"
    with path.open() as fp:
        content = yaml.safe_load(fp)  # plain YAML, no Python tags
    assert content["network"] == {"width": 16}
    assert content["accum_steps"] == 2
    assert "steps" not in content
    assert "epochs" not in content

    rerun = RecipeConfig().parse(["--config", str(path)])
    assert rerun.run_id == runner.config.run_id
    assert rerun.run_name == "width16"
    assert rerun.network.width == 16
    assert rerun.accum_steps == 2
    again = ClassifierRunner(rerun)
    assert again.id == runner.id
    assert again.steps == 0  # a fresh start, not a resume


def test_config_yaml_is_written_once_at_start(make_runner):
    runner = make_runner(epoch_end=1)
    runner.train()
    path = Path(runner.dir) / "config.yaml"
    first = path.stat().st_mtime_ns
    runner.train()  # already finished: nothing to train, the file is rewritten with the same content
    assert yaml.safe_load(path.read_text())["epoch_end"] == 1
    assert path.stat().st_mtime_ns >= first


def test_write_config_file_is_atomic(tmp_path, monkeypatch):
    target = write_config_file({"a": 1}, str(tmp_path))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", fail)
    with pytest.raises(OSError, match="disk full"):
        write_config_file({"a": 2}, str(tmp_path))
    assert yaml.safe_load(Path(target).read_text()) == {"a": 1}  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]  # no temporary file left


class PretrainedRunner(ClassifierRunner):
    pass


@pytest.mark.parametrize("explicit_dir", [False, True])
def test_missing_pretrained_leaves_no_run_directory(tmp_path, explicit_dir):
    config = {"log": True, "tensorboard": True, "pretrained": str(tmp_path / "missing.pth")}
    if explicit_dir:
        config["dir"] = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        PretrainedRunner(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bad_config_leaves_no_run_directory(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        ClassifierRunner({"log": True, "tensorboard": True, "precision": "fp8"})
    assert list(tmp_path.iterdir()) == []


def test_a_failure_in_setup_leaves_no_run_directory(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        ClassifierRunner({"log": True, "tensorboard": True, "dataloader": {"batch_size": 0}})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_keeps_a_directory_that_existed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        PretrainedRunner({"log": True, "dir": str(run_dir), "pretrained": str(tmp_path / "missing.pth")})
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_run_dir_guard_keeps_a_parent_with_other_runs(tmp_path):
    (tmp_path / "name-id" / "older").mkdir(parents=True)
    guard = RunDirGuard(str(tmp_path / "name-id" / "newer"))
    (tmp_path / "name-id" / "newer").mkdir()
    guard.discard()
    assert [p.name for p in (tmp_path / "name-id").iterdir()] == ["older"]


@pytest.mark.parametrize("how", ["from_checkpoint", "config.checkpoint"])
def test_evaluating_a_checkpoint_writes_a_new_directory(tmp_path, how):
    trained = ClassifierRunner({"dir": str(tmp_path / "train"), "epoch_end": 2, "tensorboard": True, "log": True})
    trained.train()
    trained.close()
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "train").rglob("*"))
    best = os.path.join(trained.checkpoint_dir, "best.pth")
    if how == "from_checkpoint":
        evaluator = ClassifierRunner.from_checkpoint(best)
    else:
        evaluator = ClassifierRunner({"checkpoint": best, "tensorboard": True, "log": True})
    result = evaluator.evaluate(["val"])
    evaluator.close()
    assert result["val"]["loss"] == pytest.approx(trained.best_result["val"]["loss"], rel=1e-5)
    after = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "train").rglob("*"))
    assert after == before  # nothing new in the training run's folder
    assert Path(evaluator.dir) != Path(trained.dir)
    assert len(list(Path(evaluator.dir).glob(EVENTS))) == 1
    assert (Path(evaluator.dir) / "config.yaml").is_file()
    assert f"evaluating {best}, saved at epoch" in (Path(evaluator.dir) / "run.log").read_text()


def test_evaluating_with_log_and_tensorboard_off_writes_nothing(tmp_path):
    trained = ClassifierRunner({"dir": str(tmp_path / "train"), "epoch_end": 1, "log": False})
    trained.train()
    best = os.path.join(trained.checkpoint_dir, "best.pth")
    before = set(tmp_path.rglob("*"))
    evaluator = ClassifierRunner.from_checkpoint(best)
    evaluator.config.log = False
    evaluator.evaluate(["val"])
    assert set(tmp_path.rglob("*")) == before
    assert torch.isfinite(torch.tensor(evaluator.evaluate(["val"])["val"]["loss"]))
