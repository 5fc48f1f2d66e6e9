"""Bad config values stop a run when the runner is built, naming the key and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from danling.runner import Config
from danling.runner.config import DATALOADER_TYPES
from danling.runner.config.checks import validate_config

from ..conftest import ClassifierRunner


@pytest.mark.parametrize(
    ("settings", "key", "accepted"),
    [
        ({"dataloader": {"batch_size": 0}}, "dataloader.batch_size", "integers >= 1"),
        ({"dataloader": {"batch_size": -8}}, "dataloader.batch_size", "integers >= 1"),
        ({"dataloader": {"batch_size": 8, "val": {"batch_size": 0}}}, "dataloader.val.batch_size", "integers >= 1"),
        ({"dataloader": {"batch_size": "8"}}, "dataloader.batch_size", "integers >= 1"),
        ({"dataloader": {"batch_size": 8, "num_workers": -1}}, "dataloader.num_workers", "integers >= 0"),
        ({"dataloader": {"batch_size": 8, "drop_last": "true"}}, "dataloader.drop_last", "True, False"),
        ({"epoch_end": -1}, "epoch_end", "integers >= 0"),
        ({"epoch_end": None, "step_end": -5}, "step_end", "integers >= 0"),
        ({"accum_steps": 0}, "accum_steps", "integers >= 1"),
        ({"accum_steps": -2}, "accum_steps", "integers >= 1"),
        ({"log_interval": 0}, "log_interval", "integers >= 1"),
        ({"save_steps": 0}, "save_steps", "integers >= 1"),
        ({"save_steps": True}, "save_steps", "integers >= 1"),
        ({"keep_checkpoints": -1}, "keep_checkpoints", "integers >= 0"),
        ({"patience": -1}, "patience", "integers >= 0"),
        ({"max_grad_norm": 0}, "max_grad_norm", "numbers > 0"),
        ({"max_grad_value": -1.0}, "max_grad_value", "numbers > 0"),
        ({"dist_timeout": 0}, "dist_timeout", "numbers > 0"),
    ],
)
def test_a_bad_value_stops_the_runner_at_construction(make_runner, tmp_path, settings, key, accepted):
    with pytest.raises(ValueError, match=rf"{key}: got .*; accepted values are {accepted}"):
        make_runner(**settings)
    assert not (tmp_path / "run0").exists()  # stopped before the run directory


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ValueError, match="invalid config values") as error:
        validate_config(Config({"epoch_end": -1, "accum_steps": 0, "dataloader": {"batch_size": 0}}))
    assert [line.split(":")[0].strip() for line in str(error.value).splitlines()[1:]] == [
        "epoch_end",
        "accum_steps",
        "dataloader.batch_size",
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"epoch_end": 0, "step_end": 0, "patience": 0, "keep_checkpoints": 0},
        {"log_interval": 1, "save_steps": 1, "max_grad_norm": 0.5, "dist_timeout": 60},
        {"dataloader": {"batch_size": None, "shuffle": None, "timeout": 0, "val": {"batch_size": 1}}},
        {"save_interval": -1},  # the reference's "no epoch copies"
    ],
)
def test_accepted_values_pass(settings):
    validate_config(Config(settings))


@pytest.mark.parametrize(("spelling", "expected"), [("true", True), ("false", False), ("True", True), ("off", False)])
def test_dataloader_switches_from_the_command_line_are_booleans(spelling, expected):
    config = Config().parse(["--dataloader.drop_last", spelling, "--dataloader.val.shuffle", spelling])
    assert config.dataloader.drop_last is expected
    assert config.dataloader.val.shuffle is expected


def test_dataloader_options_from_the_command_line_get_their_types():
    args = ["--dataloader.batch_size", "8", "--dataloader.num_workers", "0", "--dataloader.pin_memory", "false"]
    args += ["--dataloader.persistent_workers=no", "--dataloader.prefetch_factor", "2", "--dataloader.shuffle", "1"]
    options = Config().parse(args).dataloader.dict()
    assert options == {
        "batch_size": 8,
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
        "prefetch_factor": 2,
        "shuffle": True,
    }
    assert {key: type(value) for key, value in options.items()} == {key: DATALOADER_TYPES[key] for key in options}


def test_a_dataloader_switch_given_something_else_is_a_command_line_error(capsys):
    with pytest.raises(SystemExit):
        Config().parse(["--dataloader.drop_last", "maybe"])
    assert "'dataloader.drop_last' is a switch, but got 'maybe'" in capsys.readouterr().err


def test_switches_from_the_command_line_read_on_and_off():
    config = Config().parse(["--log", "off", "--tensorboard", "on", "--progress_bar", "No"])
    assert (config.log, config.tensorboard, config.progress_bar) == (False, True, False)


def test_dataloader_options_from_the_command_line_reach_the_loader(tmp_path):
    config = Config({"device": "cpu", "log": False, "dir": str(tmp_path / "run"), "epoch_end": 1})
    config.parse(["--dataloader.batch_size", "16", "--dataloader.drop_last", "true"])
    runner = ClassifierRunner(config)  # 40 training samples
    assert runner.dataloaders.train.drop_last is True
    assert len(runner.dataloaders.train) == 2


def test_a_zero_batch_size_from_the_command_line_stops_at_construction(tmp_path):
    config = Config({"device": "cpu", "dir": str(tmp_path / "run"), "epoch_end": 1})
    config.parse(["--dataloader.batch_size", "0"])
    with pytest.raises(ValueError, match="dataloader.batch_size: got 0"):
        ClassifierRunner(config)
    assert not Path(tmp_path / "run").exists()
