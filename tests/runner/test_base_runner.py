from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable
from uuid import UUID

import numpy as np
import pytest
import torch
from chanfig import FlatDict, NestedDict
from torch.utils.data import DataLoader, TensorDataset

import danling as dl
from danling.runner import BaseRunner, Config, RunnerMode

MakeRunner = Callable[..., BaseRunner]


def dataset(length: int, **attributes: object) -> TensorDataset:
    data = TensorDataset(torch.zeros(length, 2))
    for name, value in attributes.items():
        setattr(data, name, value)
    return data


# Construction and RunnerMeta


def test_accepts_a_config_or_any_mapping(tmp_path: Path) -> None:
    config = Config({"log": False, "dir": str(tmp_path / "a"), "lr": 0.1})
    runner = BaseRunner(config)
    assert runner.config is config
    runner = BaseRunner({"log": False, "dir": str(tmp_path / "b"), "lr": 0.1})
    assert isinstance(runner.config, Config)
    assert runner.config.lr == 0.1
    assert runner.config.run_name == "Run"


def test_post_init_runs_once_after_the_subclass_init(new_runner: MakeRunner) -> None:
    calls: list[str] = []

    class Runner(BaseRunner):
        def __init__(self, config: Mapping) -> None:
            super().__init__(config)
            calls.append("init")

        def __post_init__(self) -> None:
            calls.append("post_init")
            super().__post_init__()

    class Child(Runner):
        def __init__(self, config: Mapping) -> None:
            super().__init__(config)
            calls.append("child")

    new_runner(cls=Runner)
    assert calls == ["init", "post_init"]
    calls.clear()
    new_runner(cls=Child)
    assert calls == ["init", "child", "post_init"]


def test_post_init_sees_what_the_subclass_set(new_runner: MakeRunner) -> None:
    seen: dict[str, object] = {}

    class Runner(BaseRunner):
        def __init__(self, config: Mapping) -> None:
            super().__init__(config)
            self.model = torch.nn.Linear(1, 1)

        def setup(self) -> None:
            seen["model"] = self.model

    runner = new_runner(cls=Runner)
    assert seen["model"] is runner.model


def test_fresh_containers_per_runner(new_runner: MakeRunner) -> None:
    first, second = new_runner(), new_runner()
    for name in ("datasets", "datasamplers", "dataloaders"):
        assert isinstance(getattr(first, name), FlatDict)
        assert getattr(first, name) is not getattr(second, name)
    assert isinstance(first.results, NestedDict)
    assert first.results is not second.results
    first.datasets.train = [1]
    assert "train" not in second.datasets


def test_doc_example(new_runner: MakeRunner) -> None:
    runner = new_runner(lr=0.1)
    assert (runner.lr, runner.mode, runner.is_best) == (0.1, RunnerMode.train, True)
    runner.append_result({"val": {"loss": 0.5}}, index=0)
    runner.append_result({"val": {"loss": 0.4}}, index=1)
    assert (runner.best_score, runner.best_index) == (0.4, 1)


# Config passthrough


def test_reads_fall_through_to_config(new_runner: MakeRunner) -> None:
    runner = new_runner(lr=0.1, optim={"type": "adamw"})
    assert runner.lr == 0.1
    assert runner.optim.type == "adamw"
    assert runner.optim is runner.config.optim
    assert "lr" in runner


def test_writes_to_existing_config_keys_go_to_config(new_runner: MakeRunner) -> None:
    runner = new_runner(lr=0.1, optim={"type": "adamw"})
    runner.lr = 0.2
    assert runner.config.lr == 0.2
    assert "lr" not in runner.__dict__
    runner.optim.lr = 1e-3
    assert runner.config.optim.lr == 1e-3


def test_progress_counters_live_in_config(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.steps = 7
    runner.epochs = 3
    assert runner.config.steps == 7
    assert runner.config.epochs == 3
    runner.config.steps = 9
    assert runner.steps == 9


def test_new_attributes_stay_on_the_runner(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.fresh = 1
    assert runner.fresh == 1
    assert "fresh" not in runner.config


def test_class_attributes_win_over_config_keys(new_runner: MakeRunner) -> None:
    runner = new_runner(model="resnet18", criterion="ce")
    model = torch.nn.Linear(1, 1)
    runner.model = model
    runner.criterion = torch.nn.MSELoss()
    assert runner.model is model
    assert runner.config.model == "resnet18"
    assert runner.config.criterion == "ce"


def test_instance_attributes_win_over_config_keys(new_runner: MakeRunner) -> None:
    class Runner(BaseRunner):
        def __init__(self, config: Mapping) -> None:
            super().__init__(config)
            self.width = 3  # `width` is not a config key yet: a runner attribute

    runner = new_runner(cls=Runner)
    runner.config.width = 5
    runner.width = 7
    assert runner.width == 7
    assert runner.config.width == 5


def test_unknown_attribute_names_close_config_keys(new_runner: MakeRunner) -> None:
    runner = new_runner(learning_rate=0.1)
    with pytest.raises(AttributeError, match="learning_rat") as error:
        runner.learning_rat
    assert "'learning_rate'" in str(error.value)
    assert not hasattr(runner, "no_such_key")


# Identity


def test_name_and_ids(new_runner: MakeRunner) -> None:
    runner = new_runner(experiment_name="exp", run_name="run")
    assert runner.name == "exp-run"
    assert runner.id == runner.config.experiment_id[:8] + runner.config.run_id[:8]
    assert isinstance(runner.uuid, UUID)
    assert new_runner(name="custom").name == "custom"


def test_same_hyper_parameters_same_id(new_runner: MakeRunner) -> None:
    first = new_runner(lr=0.1, steps=3)
    second = new_runner(lr=0.1, log_interval=10)
    third = new_runner(lr=0.2)
    assert first.id == second.id
    assert first.uuid == second.uuid
    assert first.id != third.id
    assert first.uuid != third.uuid


def test_timestamp_format(new_runner: MakeRunner) -> None:
    # Reference: week, weekday, hour, minute, second and milliseconds.
    assert re.fullmatch(r"\d{12}", new_runner().timestamp)


# Directories


def test_config_dir_is_honoured_and_created(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "run"
    runner = BaseRunner({"log": False, "dir": str(target)})
    assert not target.exists()
    assert runner.dir == str(target)
    assert target.is_dir()


def test_default_dir_layout(tmp_path: Path) -> None:
    runner = BaseRunner({"log": False, "project_root": str(tmp_path / "exp")})
    expected = tmp_path / "exp" / f"{runner.name}-{runner.id}" / runner.timestamp
    assert runner.dir == str(expected)
    assert expected.is_dir()


def test_default_project_root_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    runner = BaseRunner({"log": False})
    assert Path(runner.dir).is_relative_to(tmp_path / "experiments")


def test_checkpoint_dir_and_log_file_are_created_on_access(new_runner: MakeRunner) -> None:
    runner = new_runner(checkpoint_dir_name="ckpts")
    assert runner.checkpoint_dir == os.path.join(runner.dir, "ckpts")
    assert os.path.isdir(runner.checkpoint_dir)
    assert runner.log_file == os.path.join(runner.dir, "run.log")
    assert os.path.isdir(os.path.dirname(runner.log_file))


def test_explicit_checkpoint_dir_and_log_file(new_runner: MakeRunner, tmp_path: Path) -> None:
    runner = new_runner(checkpoint_dir=str(tmp_path / "c"), log_file=str(tmp_path / "logs" / "x.log"))
    assert runner.checkpoint_dir == str(tmp_path / "c")
    assert (tmp_path / "c").is_dir()
    assert runner.log_file == str(tmp_path / "logs" / "x.log")
    assert (tmp_path / "logs").is_dir()


def test_check_dir_on_an_empty_dir(new_runner: MakeRunner) -> None:
    runner = new_runner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runner.check_dir() is True
        assert runner.check_dir("raise") is True


def test_check_dir_warn(new_runner: MakeRunner) -> None:
    runner = new_runner()
    Path(runner.dir, "file").write_text("x")
    with pytest.warns(RuntimeWarning, match="not empty"):
        assert runner.check_dir() is False
    with pytest.warns(RuntimeWarning, match="not empty"):
        assert runner.check_dir("warn") is False


def test_check_dir_raise(new_runner: MakeRunner) -> None:
    runner = new_runner()
    Path(runner.dir, "file").write_text("x")
    with pytest.raises(RuntimeError, match="not empty"):
        runner.check_dir("raise")


def test_check_dir_ignore(new_runner: MakeRunner) -> None:
    runner = new_runner()
    Path(runner.dir, "file").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runner.check_dir("ignore") is False


def test_check_dir_rejects_unknown_actions(new_runner: MakeRunner) -> None:
    runner = new_runner()
    with pytest.raises(ValueError, match="warn") as error:
        runner.check_dir("explode")
    message = str(error.value)
    assert "raise" in message
    assert "ignore" in message
    assert "explode" in message


# JSON / YAML


def test_json_round_trip(new_runner: MakeRunner, tmp_path: Path) -> None:
    runner = new_runner(lr=0.1, seed=3)
    path = tmp_path / "config.json"
    runner.json(str(path))
    restored = BaseRunner.from_json(str(path))
    assert restored.config.lr == 0.1
    assert restored.config.seed == 3
    assert restored.id == runner.id
    assert restored.dict() == runner.dict()


def test_yaml_round_trip(new_runner: MakeRunner, tmp_path: Path) -> None:
    runner = new_runner(lr=0.1)
    path = tmp_path / "config.yaml"
    runner.yaml(str(path))
    restored = BaseRunner.from_yaml(str(path))
    assert restored.config.lr == 0.1
    assert restored.id == runner.id
    assert restored.dict() == runner.dict()


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_string_round_trips(new_runner: MakeRunner, fmt: str) -> None:
    runner = new_runner(lr=0.1)
    string = runner.jsons() if fmt == "json" else runner.yamls()
    assert isinstance(string, str)
    restored = BaseRunner.from_jsons(string) if fmt == "json" else BaseRunner.from_yamls(string)
    assert restored.config.lr == 0.1
    assert restored.id == runner.id


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_string_round_trips_keep_nested_sections(new_runner: MakeRunner, fmt: str) -> None:
    runner = new_runner(optim={"lr": 0.1})
    string = runner.jsons() if fmt == "json" else runner.yamls()
    restored = BaseRunner.from_jsons(string) if fmt == "json" else BaseRunner.from_yamls(string)
    assert restored.dict() == runner.dict()


def test_dict_of_a_flat_config(new_runner: MakeRunner) -> None:
    runner = new_runner(lr=0.1)
    result = runner.dict()
    assert isinstance(result, dict)
    assert result["lr"] == 0.1
    assert result["run_id"] == runner.config.run_id


def test_dict_keeps_nested_sections(new_runner: MakeRunner) -> None:
    from collections import OrderedDict

    runner = new_runner(lr=0.1, optim={"type": "sgd"})
    result = runner.dict()
    assert result["optim"] == {"type": "sgd"}
    assert result == runner.config.dict()
    assert type(runner.dict(OrderedDict)) is OrderedDict


def test_save_and_load(new_runner: MakeRunner, tmp_path: Path) -> None:
    runner = new_runner()
    path = str(tmp_path / "obj.json")
    assert runner.save({"a": 1}, path) == path
    assert runner.load(path) == {"a": 1}


# Seeding


def test_set_seed_doc_examples(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.set_seed(42) == 42
    assert runner.set_seed(42, bias=10) == 52
    assert runner.set_seed(42, bias=False) == 42


@pytest.mark.parametrize(("bias", "expected"), [(None, 42), (False, 42), (0, 42), (10, 52)])
def test_set_seed_bias(new_runner: MakeRunner, bias: object, expected: int) -> None:
    assert new_runner().set_seed(42, bias=bias) == expected


def test_explicit_seed_is_not_overwritten_by_config(new_runner: MakeRunner) -> None:
    runner = new_runner(seed=1)
    assert runner.set_seed(42, bias=False) == 42
    assert runner.set_seed(bias=False) == 1


def test_set_seed_without_any_seed_draws_and_records_one(new_runner: MakeRunner) -> None:
    runner = new_runner()
    seed = runner.set_seed(bias=False)
    assert isinstance(seed, int)
    assert runner.config.seed == seed


def test_set_seed_makes_python_and_numpy_draws_repeat(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.set_seed(123)
    first = (random.random(), np.random.rand())
    runner.set_seed(123)
    assert (random.random(), np.random.rand()) == first
    runner.set_seed(124)
    assert (random.random(), np.random.rand()) != first


def test_config_seed_is_applied_at_construction(new_runner: MakeRunner) -> None:
    new_runner(seed=5)
    drawn = random.random()
    random.seed(5)
    assert drawn == random.random()


@pytest.mark.parametrize(("seed", "bias"), [(-1, False), (2**32, False), (2**32 - 1, 1)])
def test_set_seed_out_of_range(new_runner: MakeRunner, seed: int, bias: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        new_runner().set_seed(seed, bias=bias)


def test_largest_seed_is_accepted(new_runner: MakeRunner) -> None:
    assert new_runner().set_seed(2**32 - 1, bias=False) == 2**32 - 1


# Learning rate scaling


def test_scale_lr_with_a_factor_argument(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.scale_lr(0.1, lr_scale_factor=4) == pytest.approx(0.4)
    assert runner.config.lr_scale_factor == 4


def test_scale_lr_with_a_config_factor(new_runner: MakeRunner) -> None:
    assert new_runner(lr_scale_factor=3).scale_lr(0.1) == pytest.approx(0.3)


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_scale_lr_linear_rule(new_runner: MakeRunner, accum_steps: int) -> None:
    runner = new_runner(dataloader={"batch_size": 32}, accum_steps=accum_steps)
    assert runner.scale_lr(0.1, batch_size_base=16) == pytest.approx(0.1 * 2 * accum_steps)


def test_scale_lr_with_a_config_base(new_runner: MakeRunner) -> None:
    runner = new_runner(dataloader={"batch_size": 32}, batch_size_base=64)
    assert runner.scale_lr(0.1) == pytest.approx(0.05)


def test_scale_lr_without_factor_or_base(new_runner: MakeRunner) -> None:
    with pytest.raises(ValueError, match="batch_size_base"):
        new_runner(dataloader={"batch_size": 32}).scale_lr(0.1)


def test_scale_lr_warns_when_the_base_is_ignored(new_runner: MakeRunner) -> None:
    with pytest.warns(RuntimeWarning, match="batch_size_base"):
        assert new_runner().scale_lr(0.1, lr_scale_factor=2, batch_size_base=8) == pytest.approx(0.2)


def test_scale_lr_twice_honours_each_explicit_base(new_runner: MakeRunner) -> None:
    runner = new_runner(dataloader={"batch_size": 32})
    assert runner.scale_lr(0.1, batch_size_base=16) == pytest.approx(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runner.scale_lr(0.1, batch_size_base=32) == pytest.approx(0.1)


# Data: splits and batch size


def test_train_splits_from_the_train_attribute(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.datasets.alpha = dataset(4, train=True)
    runner.datasets.beta = dataset(4, train=False)
    assert runner.train_splits == ["alpha"]
    assert runner.evaluate_splits == ["beta"]


def test_train_splits_from_the_split_attribute(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.datasets.alpha = dataset(4, split="train")
    runner.datasets.beta = dataset(4, split="val")
    assert runner.train_splits == ["alpha"]
    assert runner.evaluate_splits == ["beta"]


def test_train_splits_from_the_key(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.datasets.train = dataset(4)
    runner.datasets.val = dataset(4)
    runner.datasets.test = dataset(4)
    assert runner.train_splits == ["train"]
    assert runner.evaluate_splits == ["val", "test"]


def test_splits_from_config(new_runner: MakeRunner) -> None:
    runner = new_runner(train_splits=["a"], evaluate_splits=["b", "c"])
    runner.datasets.train = dataset(4)
    assert runner.train_splits == ["a"]
    assert runner.evaluate_splits == ["b", "c"]


def test_splits_can_be_assigned(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.datasets.train = dataset(4)
    runner.train_splits = ["x"]
    runner.evaluate_splits = ["y"]
    assert (runner.train_splits, runner.evaluate_splits) == (["x"], ["y"])


def test_splits_cannot_be_inferred_without_datasets(new_runner: MakeRunner) -> None:
    runner = new_runner()
    with pytest.raises(ValueError, match="train_splits"):
        runner.train_splits
    with pytest.raises(ValueError, match="evaluate_splits"):
        runner.evaluate_splits


def test_batch_size_of_the_current_split(new_runner: MakeRunner) -> None:
    runner = new_runner(dataloader={"batch_size": 99})
    runner.datasets.train = dataset(10)
    runner.datasets.val = dataset(10)
    runner.dataloaders.train = DataLoader(runner.datasets.train, batch_size=3)
    runner.dataloaders.val = DataLoader(runner.datasets.val, batch_size=5)
    assert runner.batch_size == 3  # first train split
    runner.split = "val"
    assert runner.batch_size == 5


def test_batch_size_of_the_first_evaluate_loader(new_runner: MakeRunner) -> None:
    runner = new_runner(dataloader={"batch_size": 99})
    runner.datasets.train = dataset(10)
    runner.datasets.val = dataset(10)
    runner.dataloaders.val = DataLoader(runner.datasets.val, batch_size=5)
    assert runner.batch_size == 5


def test_batch_size_from_config(new_runner: MakeRunner) -> None:
    assert new_runner(dataloader={"batch_size": 16}).batch_size == 16


def test_batch_size_error_names_what_was_tried(new_runner: MakeRunner) -> None:
    with pytest.raises(AttributeError, match="dataloader"):
        new_runner().batch_size


def test_batch_size_missing_is_an_attribute_error(new_runner: MakeRunner) -> None:
    with pytest.raises(AttributeError, match="batch_size"):
        new_runner().batch_size


@pytest.mark.parametrize("accum_steps", [1, 2, 4])
def test_batch_size_equivalent(new_runner: MakeRunner, accum_steps: int) -> None:
    runner = new_runner(dataloader={"batch_size": 8}, accum_steps=accum_steps)
    assert runner.accum_steps == accum_steps
    assert runner.batch_size_equivalent == 8 * 1 * accum_steps


def test_accum_steps_defaults_to_one(new_runner: MakeRunner) -> None:
    assert new_runner().accum_steps == 1


# Progress


def test_total_steps_from_step_end(new_runner: MakeRunner) -> None:
    # Steps of the whole run, a resumed one included, so that a scheduler built from it matches the straight run.
    runner = new_runner(step_end=100, step_begin=20, epoch_end=99)
    assert runner.total_steps == 100


@pytest.mark.parametrize(("accum_steps", "expected"), [(1, 3 * (4 + 2)), (2, 3 * (2 + 1)), (3, 3 * (2 + 1))])
def test_total_steps_from_loader_lengths(new_runner: MakeRunner, accum_steps: int, expected: int) -> None:
    runner = new_runner(epoch_end=3, accum_steps=accum_steps, train_splits=["a", "b"])
    runner.datasets.a = dataset(10)
    runner.datasets.b = dataset(6)
    runner.dataloaders.a = DataLoader(runner.datasets.a, batch_size=3)  # 4 batches
    runner.dataloaders.b = DataLoader(runner.datasets.b, batch_size=4)  # 2 batches
    assert runner.total_steps == expected


def test_total_steps_from_dataset_lengths(new_runner: MakeRunner) -> None:
    runner = new_runner(epoch_end=3, dataloader={"batch_size": 4})
    runner.datasets.train = dataset(10)
    runner.datasets.val = dataset(100)
    assert runner.total_steps == 3 * 3


def test_total_steps_of_a_resumed_run_match_the_straight_run(new_runner: MakeRunner) -> None:
    straight = new_runner(epoch_end=5, dataloader={"batch_size": 5})
    resumed = new_runner(epoch_end=5, epoch_begin=2, dataloader={"batch_size": 5})
    for runner in (straight, resumed):
        runner.datasets.train = dataset(10)
    assert resumed.total_epochs == 3
    assert resumed.total_steps == straight.total_steps == 5 * 2


def test_total_steps_cannot_be_inferred(new_runner: MakeRunner) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        new_runner().total_steps


def test_total_epochs(new_runner: MakeRunner) -> None:
    assert new_runner(epoch_end=10).total_epochs == 10
    with pytest.raises(ValueError, match="epoch_end"):
        new_runner().total_epochs


def test_progress(new_runner: MakeRunner) -> None:
    runner = new_runner(step_end=40)
    assert runner.progress == 0
    runner.steps = 10
    assert runner.progress == pytest.approx(0.25)


# Mode and processes


def test_mode_converts_strings(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.mode is RunnerMode.train
    runner.mode = "evaluate"
    assert runner.mode is RunnerMode.evaluate
    runner.mode = RunnerMode.infer
    assert runner.mode == "infer"


def test_unknown_mode_names_accepted_modes(new_runner: MakeRunner) -> None:
    runner = new_runner()
    with pytest.raises(ValueError, match="fly") as error:
        runner.mode = "fly"
    for mode in ("train", "evaluate", "infer"):
        assert mode in str(error.value)
    assert runner.mode is RunnerMode.train


def test_single_process(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.world_size == 1
    assert runner.rank == 0
    assert runner.local_rank == 0
    assert runner.distributed is False
    assert runner.is_main_process is True
    assert runner.is_local_main_process is True


def test_unwrap_returns_the_model(new_runner: MakeRunner) -> None:
    model = torch.nn.Linear(1, 1)
    assert new_runner().unwrap(model) is model


@pytest.mark.parametrize("method", ["advance", "set_deterministic"])
def test_framework_methods_are_left_to_subclasses(new_runner: MakeRunner, method: str) -> None:
    runner = new_runner()
    with pytest.raises(NotImplementedError):
        getattr(runner, method)(*([torch.tensor(1.0)] if method == "advance" else []))


def test_repr_names_the_class(new_runner: MakeRunner) -> None:
    assert repr(new_runner()).startswith("BaseRunner(")


def test_public_api() -> None:
    assert dl.BaseRunner is BaseRunner
    for name in ("on_main_process", "on_local_main_process", "RunnerMode", "Config", "BaseRunner"):
        assert hasattr(dl.runner, name)


def test_print_result_prints_when_logging_is_off(new_runner: MakeRunner, capsys) -> None:
    runner = new_runner(log=False)
    runner.append_result({"val": {"loss": 0.5}}, index=0)
    runner.append_result({"val": {"loss": 0.7}}, index=1)
    runner.print_result()
    out = capsys.readouterr().out
    latest, best = out.split("best result:")
    assert latest.startswith("latest result:")
    assert "0.7" in latest
    assert "0.5" in best
