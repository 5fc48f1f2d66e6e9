from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from danling.runner import BaseRunner
from danling.runner.checkpointing import files as ckpt

MakeRunner = Callable[..., BaseRunner]
Step = Callable[[BaseRunner], None]


@pytest.fixture
def runner(new_runner: MakeRunner, model_runner_cls: type[BaseRunner]) -> BaseRunner:
    return new_runner({"lr": 0.1}, cls=model_runner_cls)


def checkpoint_files(directory: str) -> list[str]:
    """Checkpoint files of a directory (their manifests left out)."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".pth"))


def saved(runner: BaseRunner, step: Step) -> str:
    step(runner)
    runner.steps = 5
    runner.epochs = 2
    runner.append_result({"val": {"loss": 0.5}}, index=2)
    runner.save_checkpoint()
    return os.path.join(runner.checkpoint_dir, "latest.pth")


def test_save_checkpoint_writes_latest_and_best(runner: BaseRunner) -> None:
    runner.save_checkpoint()
    assert checkpoint_files(runner.checkpoint_dir) == ["best.pth", "latest.pth", "step-0.pth"]
    assert ckpt.read_checkpoint(os.path.join(runner.checkpoint_dir, "latest.pth"))["runner"]["lr"] == 0.1


def test_checkpoint_loads_with_weights_only(runner: BaseRunner, step: Step) -> None:
    path = saved(runner, step)
    state = torch.load(path, weights_only=True)
    assert {"runner", "model", "optimizer", "results"} <= set(state)
    assert state["runner"]["lr"] == 0.1
    assert state["runner"]["steps"] == 5
    assert torch.equal(state["model"]["weight"], runner.model.weight)
    assert state["results"] == {2: {"val": {"loss": 0.5}}}


def test_no_best_copy_when_not_best(runner: BaseRunner) -> None:
    runner.append_result({"val": {"loss": 0.5}}, index=0)
    runner.append_result({"val": {"loss": 0.9}}, index=1)
    runner.save_checkpoint()
    assert checkpoint_files(runner.checkpoint_dir) == ["latest.pth", "step-0.pth"]
    runner.save_checkpoint(name="other", save_best=False)
    assert checkpoint_files(runner.checkpoint_dir) == ["latest.pth", "other.pth", "step-0.pth"]


def test_best_copy_keeps_the_best_state(runner: BaseRunner) -> None:
    runner.append_result({"val": {"loss": 0.5}}, index=0)
    runner.save_checkpoint()
    best_weight = runner.model.weight.detach().clone()
    with torch.no_grad():
        runner.model.weight.add_(1)
    runner.append_result({"val": {"loss": 0.9}}, index=1)
    runner.save_checkpoint()
    best = torch.load(os.path.join(runner.checkpoint_dir, "best.pth"), weights_only=True)
    latest = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert torch.equal(best["model"]["weight"], best_weight)
    assert torch.equal(latest["model"]["weight"], runner.model.weight)


@pytest.mark.parametrize("save_interval", [1, 2, 3])
def test_save_interval(runner: BaseRunner, save_interval: int) -> None:
    runner.config.save_interval = save_interval
    for epoch in range(6):
        runner.epochs = epoch
        runner.save_checkpoint(save_best=False)
    expected = {f"epoch-{epoch}.pth" for epoch in range(6) if (epoch + 1) % save_interval == 0}
    assert set(checkpoint_files(runner.checkpoint_dir)) == expected | {"latest.pth", "step-0.pth"}


def test_save_checkpoint_epochs_argument(runner: BaseRunner) -> None:
    runner.config.save_interval = 5
    runner.save_checkpoint(epochs=9, save_best=False)
    assert checkpoint_files(runner.checkpoint_dir) == ["epoch-9.pth", "latest.pth", "step-0.pth"]


def test_checkpoint_of_a_config_holding_paths_loads_with_weights_only(
    tmp_path: Path, model_runner_cls: type[BaseRunner]
) -> None:
    runner = model_runner_cls({"log": False, "dir": tmp_path / "run"})
    runner.save_checkpoint()
    state = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert state["runner"]["dir"] == str(tmp_path / "run")


def test_load_checkpoint_restores_everything(
    runner: BaseRunner, step: Step, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    path = saved(runner, step)
    other = new_runner(cls=model_runner_cls)
    assert not torch.equal(other.model.weight, runner.model.weight)
    other.load_checkpoint(path)
    assert torch.equal(other.model.weight, runner.model.weight)
    assert other.optimizer.state_dict()["state"].keys() == runner.optimizer.state_dict()["state"].keys()
    momentum = other.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, runner.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert other.results.dict() == {2: {"val": {"loss": 0.5}}}
    assert other.steps == 5
    assert other.epochs == 2
    assert other.epoch_begin == 3
    assert other.config.lr == 0.1
    assert other.config.checkpoint == path


def test_load_checkpoint_restores_the_scheduler(
    new_runner: MakeRunner, model_runner_cls: type[BaseRunner], step: Step
) -> None:
    source = new_runner(cls=model_runner_cls)
    source.scheduler = torch.optim.lr_scheduler.StepLR(source.optimizer, step_size=1, gamma=0.5)
    step(source)
    source.scheduler.step()
    source.save_checkpoint()
    target = new_runner(cls=model_runner_cls)
    target.scheduler = torch.optim.lr_scheduler.StepLR(target.optimizer, step_size=1, gamma=0.5)
    target.load_checkpoint(os.path.join(source.checkpoint_dir, "latest.pth"))
    assert target.scheduler.state_dict() == source.scheduler.state_dict()
    assert target.scheduler.get_last_lr() == pytest.approx([0.05])


def test_load_checkpoint_warns_about_missing_optimizer_and_scheduler(
    runner: BaseRunner, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    target = new_runner(cls=model_runner_cls)
    target.scheduler = torch.optim.lr_scheduler.StepLR(target.optimizer, step_size=1)
    state = {"model": runner.model.state_dict()}
    with pytest.warns(RuntimeWarning) as record:
        target.load_checkpoint(state)
    messages = " ".join(str(warning.message) for warning in record)
    assert "optimizer" in messages
    assert "scheduler" in messages
    assert torch.equal(target.model.weight, runner.model.weight)


def test_load_checkpoint_needs_a_model(runner: BaseRunner, new_runner: MakeRunner) -> None:
    with pytest.raises(ValueError, match="model"):
        new_runner().load_checkpoint({"model": runner.model.state_dict()})


def test_load_checkpoint_missing_file(runner: BaseRunner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        runner.load_checkpoint(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("checkpoint", [42, 1.5, None, ["model"]])
def test_load_checkpoint_wrong_type(runner: BaseRunner, checkpoint: object) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        runner.load_checkpoint(checkpoint)


def test_load_checkpoint_file_holding_a_non_mapping(runner: BaseRunner, tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="mapping"):
        runner.load_checkpoint(str(path))


def test_load_checkpoint_accepts_path_objects(runner: BaseRunner, step: Step, tmp_path: Path) -> None:
    path = Path(saved(runner, step))
    runner.load_checkpoint(path)
    assert runner.steps == 5


def test_load_config(runner: BaseRunner, step: Step, new_runner: MakeRunner) -> None:
    path = saved(runner, step)
    other = new_runner(lr=0.7)
    other.load_config(path)
    assert other.config.lr == 0.7  # existing keys are kept by default
    assert other.steps == 5
    assert other.epochs == 2
    other.load_config(path, overwrite=True)
    assert other.config.lr == 0.1


def test_from_checkpoint(runner: BaseRunner, step: Step, model_runner_cls: type[BaseRunner]) -> None:
    path = saved(runner, step)
    restored = model_runner_cls.from_checkpoint(path)
    assert type(restored) is model_runner_cls
    assert torch.equal(restored.model.weight, runner.model.weight)
    assert restored.config.lr == 0.1
    assert restored.steps == 5
    assert restored.results.dict() == runner.results.dict()
    assert restored.id == runner.id


def test_from_checkpoint_needs_a_runner_config(model_runner_cls: type[BaseRunner]) -> None:
    with pytest.raises(ValueError, match="runner"):
        model_runner_cls.from_checkpoint({"model": {}})


def test_load_pretrained_loads_only_the_model(
    runner: BaseRunner, step: Step, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    path = saved(runner, step)
    other = new_runner(cls=model_runner_cls)
    optimizer_state = other.optimizer.state_dict()
    other.load_pretrained(path)
    assert torch.equal(other.model.weight, runner.model.weight)
    assert other.optimizer.state_dict() == optimizer_state
    assert other.steps == 0
    assert not other.results
    assert "lr" not in other.config


@pytest.mark.parametrize("nested", [False, True])
def test_load_pretrained_accepts_ddp_prefixes(
    runner: BaseRunner, new_runner: MakeRunner, model_runner_cls: type[BaseRunner], nested: bool
) -> None:
    state = {f"module.{key}": value + 1 for key, value in runner.model.state_dict().items()}
    other = new_runner(cls=model_runner_cls)
    other.load_pretrained({"model": state} if nested else state)
    assert torch.equal(other.model.weight, runner.model.weight + 1)


def test_load_pretrained_errors(runner: BaseRunner, new_runner: MakeRunner, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model"):
        new_runner().load_pretrained({"weight": torch.zeros(2, 2)})
    with pytest.raises(FileNotFoundError):
        runner.load_pretrained(str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match="pretrained"):
        runner.load_pretrained(3)


def test_pretrained_in_config_is_loaded_at_construction(
    runner: BaseRunner, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    path = os.path.join(runner.dir, "weights.pth")
    torch.save(runner.model.state_dict(), path)
    other = new_runner(cls=model_runner_cls, pretrained=path)
    assert torch.equal(other.model.weight, runner.model.weight)


def test_resume_from_config_checkpoint(
    runner: BaseRunner, step: Step, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    path = saved(runner, step)
    resumed = new_runner(cls=model_runner_cls, checkpoint=path)
    assert torch.equal(resumed.model.weight, runner.model.weight)
    momentum = resumed.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, runner.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert resumed.results.dict() == runner.results.dict()
    assert resumed.config.lr == 0.1
    assert resumed.steps == 5
    assert resumed.step_begin == 5
    assert resumed.epochs == 2
    assert resumed.epoch_begin == 3


def test_resume_progress_is_visible_in_the_subclass_init(runner: BaseRunner, step: Step, tmp_path: Path) -> None:
    path = saved(runner, step)
    seen = {}

    class Runner(BaseRunner):
        def __init__(self, config: dict) -> None:
            super().__init__(config)
            seen["epoch_begin"] = self.epoch_begin
            self.model = torch.nn.Linear(2, 2)

    Runner({"log": False, "dir": str(tmp_path / "r"), "checkpoint": path})
    assert seen["epoch_begin"] == 3


def test_resume_from_config_checkpoint_keeps_the_run_id(
    runner: BaseRunner, step: Step, new_runner: MakeRunner, model_runner_cls: type[BaseRunner]
) -> None:
    path = saved(runner, step)
    resumed = new_runner(cls=model_runner_cls, checkpoint=path)
    assert resumed.config.run_id == runner.config.run_id
    assert resumed.id == runner.id


def test_resume_with_a_missing_checkpoint_fails(new_runner: MakeRunner, model_runner_cls: type[BaseRunner]) -> None:
    with pytest.raises(FileNotFoundError):
        new_runner(cls=model_runner_cls, checkpoint="missing.pth")


# Module functions


def test_find_latest_checkpoint(tmp_path: Path) -> None:
    assert ckpt.find_latest_checkpoint(str(tmp_path / "none")) is None
    for name in ("epoch-2.pth", "epoch-10.pth", "epoch-9.pth"):
        (tmp_path / name).write_bytes(b"")
    assert ckpt.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "epoch-10.pth")
    (tmp_path / "latest.pth").write_bytes(b"")
    assert ckpt.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "latest.pth")


def test_extract_model_state() -> None:
    assert ckpt.extract_model_state({"runner": {}, "model": {"module.weight": 1}}) == {"weight": 1}
    assert ckpt.extract_model_state({"weight": 1}) == {"weight": 1}
    assert ckpt.extract_model_state({"module": {"weight": 1}}) == {"weight": 1}
