from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import danling as dl
from danling.runner import Config
from danling.runner.config import DEFAULT_EXPERIMENT_ID, get_git_hash

SPEC_DEFAULTS: dict[str, Any] = {
    "run_name": "Run",
    "experiment_name": "DanLing",
    "seed": None,
    "deterministic": False,
    "steps": 0,
    "epochs": 0,
    "step_begin": 0,
    "epoch_begin": 0,
    "step_end": None,
    "epoch_end": None,
    "score_split": None,
    "score_name": "loss",
    "project_root": "experiments",
    "checkpoint_dir_name": "checkpoints",
    "log": True,
    "tensorboard": False,
    "log_interval": None,
    "save_interval": None,
}


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    completed = subprocess.run([*command, *args], cwd=repo, capture_output=True, text=True, check=True)
    return completed.stdout.strip()


@pytest.mark.parametrize(("key", "value"), SPEC_DEFAULTS.items())
def test_default(key: str, value: Any) -> None:
    config = Config()
    assert key in config
    assert config[key] == value
    assert config.get(key) == value


def test_config_is_a_chanfig_config_exported_at_top_level() -> None:
    import chanfig

    assert dl.Config is Config
    assert isinstance(Config(), chanfig.Config)


def test_experiment_id_falls_back_outside_a_git_repository() -> None:
    # The autouse fixture runs every test in a fresh temporary directory, which is no repository.
    assert get_git_hash() is None
    assert DEFAULT_EXPERIMENT_ID == "xxxxxxxxxxxxxxxx"
    assert Config().experiment_id == "xxxxxxxxxxxxxxxx"


def test_experiment_id_is_the_short_hash_of_git_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "file.txt").write_text("content")
    git(repo, "add", "file.txt")
    git(repo, "commit", "-q", "-m", "first")
    monkeypatch.chdir(repo)
    head = git(repo, "rev-parse", "--short", "HEAD")
    assert get_git_hash() == head
    assert get_git_hash(short=False) == git(repo, "rev-parse", "HEAD")
    assert Config().experiment_id == head


def test_git_repository_without_commits_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    monkeypatch.chdir(repo)
    assert Config().experiment_id == DEFAULT_EXPERIMENT_ID


def test_explicit_ids_are_kept() -> None:
    config = Config({"experiment_id": "abc", "run_id": "def", "lr": 1})
    assert config.experiment_id == "abc"
    assert config.run_id == "def"


def test_run_id_is_the_hex_of_run_uuid() -> None:
    config = Config({"lr": 0.1})
    assert config.run_id == config.run_uuid.hex
    assert len(config.run_id) == 32


def test_same_hyper_parameters_give_the_same_run_id() -> None:
    first = Config({"optim": {"lr": 1e-3, "type": "adamw"}, "network": {"width": 64}})
    second = Config({"optim": {"lr": 1e-3, "type": "adamw"}, "network": {"width": 64}})
    assert first.run_id == second.run_id
    assert first.run_uuid == second.run_uuid
    assert hash(first) == hash(second)


@pytest.mark.parametrize(
    "change",
    [{"optim": {"lr": 1e-2, "type": "adamw"}}, {"optim": {"lr": 1e-3, "type": "sgd"}}, {"seed": 1}, {"extra": 0}],
)
def test_different_hyper_parameters_give_different_run_ids(change: dict) -> None:
    base = {"optim": {"lr": 1e-3, "type": "adamw"}}
    assert Config(base).run_id != Config({**base, **change}).run_id


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("steps", 100),
        ("epochs", 3),
        ("step_begin", 10),
        ("epoch_begin", 2),
        ("log_interval", 50),
        ("save_interval", 2),
        ("checkpoint", "experiments/run/checkpoints/latest.pth"),
        ("log", False),
        ("tensorboard", True),
        ("project_root", "elsewhere"),
    ],
)
def test_volatile_keys_do_not_change_the_run_id(key: str, value: Any) -> None:
    base = {"lr": 0.1, "network": {"width": 8}}
    assert Config({**base, key: value}).run_id == Config(base).run_id


def test_key_order_does_not_change_the_run_id() -> None:
    first = Config({"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]})
    second = Config({"c": [1, 2], "b": {"y": 2, "x": 1}, "a": 1})
    assert first.run_id == second.run_id


def test_run_id_depends_on_the_experiment_id() -> None:
    assert Config({"lr": 1, "experiment_id": "a" * 16}).run_id != Config({"lr": 1, "experiment_id": "b" * 16}).run_id


def test_doc_example_of_run_id() -> None:
    assert Config({"lr": 1}).run_id == Config({"lr": 1}).run_id != Config({"lr": 2}).run_id


def test_parse_recomputes_an_automatic_run_id() -> None:
    config = Config({"lr": 1})
    before = config.run_id
    config.parse(["--lr", "2"])
    assert config.lr == 2
    assert config.run_id != before
    assert config.run_id == Config({"lr": 2}).run_id


def test_parse_keeps_an_explicit_run_id() -> None:
    config = Config({"lr": 1, "run_id": "mine"})
    config.parse(["--lr", "2"])
    assert config.lr == 2
    assert config.run_id == "mine"


def test_refresh_run_id_after_a_manual_change() -> None:
    config = Config({"lr": 1})
    config.lr = 2
    assert config.refresh_run_id() == Config({"lr": 2}).run_id
    assert config.run_id == Config({"lr": 2}).run_id


class ScriptConfig(Config):
    epoch_end: int = 5
    score_split: str = "val"

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.network.width = width
        self.optim.type = "adamw"
        self.optim.lr = 1e-3

    def post(self) -> None:
        super().post()
        self.experiment_name = f"mlp{self.network.width}_{self.optim.type}@{self.optim.lr}"


def test_subclassed_config_of_a_script() -> None:
    config = ScriptConfig()
    assert config.epoch_end == 5
    assert config.score_split == "val"
    assert config.network.width == 64
    assert config.run_name == "Run"
    assert config.run_id == ScriptConfig().run_id
    assert config.run_id != ScriptConfig(width=128).run_id


def test_subclassed_config_parse_applies_overrides_and_post() -> None:
    config = ScriptConfig()
    config.parse(["--optim.lr", "0.01"])
    assert config.optim.lr == 0.01
    assert config.experiment_name == "mlp64_adamw@0.01"
    assert config.run_id != ScriptConfig().run_id


def test_flat_yaml_and_json_round_trips_keep_the_content() -> None:
    config = Config({"lr": 1e-3, "seed": 3})
    for restored in (Config.from_yamls(config.yamls()), Config.from_jsons(config.jsons())):
        assert restored.dict() == config.dict()
        assert restored.run_id == config.run_id


@pytest.mark.parametrize("how", ["yamls", "jsons", "dict"])
def test_nested_sections_survive_a_round_trip(how: str) -> None:
    config = Config({"optim": {"lr": 1e-3}, "network": {"width": 8}})
    restored = {
        "yamls": lambda: Config.from_yamls(config.yamls()),
        "jsons": lambda: Config.from_jsons(config.jsons()),
        "dict": lambda: Config.from_dict(config.dict()),
    }[how]()
    assert restored.optim.dict() == {"lr": 1e-3}
    assert restored.dict() == config.dict()


# Typed keys, typos and the YAML recipe of `parse`


class RecipeConfig(Config):
    epoch_end: int = 5

    def __init__(self) -> None:
        super().__init__()
        self.optim.lr = 1e-3


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["--progress_bar", "false"], "progress_bar", False),
        (["--progress_bar", "True"], "progress_bar", True),
        (["--accum_steps", "2"], "accum_steps", 2),
        (["--max_grad_norm", "1"], "max_grad_norm", 1.0),
        (["--max_grad_value", "0.5"], "max_grad_value", 0.5),
        (["--patience", "3"], "patience", 3),
        (["--precision", "bf16"], "precision", "bf16"),
        (["--score_mode", "min"], "score_mode", "min"),
        (["--save_steps", "10"], "save_steps", 10),
        (["--keep_checkpoints", "2"], "keep_checkpoints", 2),
        (["--auto_resume", "false"], "auto_resume", False),
        (["--compile", "false"], "compile", False),
        (["--async_save", "true"], "async_save", True),
        (["--log_interval", "4"], "log_interval", 4),
        (["--device", "cpu"], "device", "cpu"),
        (["--backend", "gloo"], "backend", "gloo"),
    ],
)
def test_declared_keys_parse_to_their_types(args, key, expected):
    value = Config().parse(args)[key]
    assert value == expected
    assert type(value) is type(expected)


def test_typed_defaults_are_declared():
    config = Config()
    assert config.accum_steps == 1
    assert config.progress_bar is None
    assert config.precision is None
    assert config.auto_resume is False


@pytest.mark.parametrize(
    ("flag", "closest"),
    [
        ("--precison", "precision"),
        ("--accum-step", "accum_steps"),
        ("--max_grad_nrom", "max_grad_norm"),
        ("--optim.lrr", "optim.lr"),
        ("--optm.lr", "optim.lr"),
    ],
)
def test_a_typo_stops_with_the_closest_key(flag, closest):
    config = Config({"optim": {"lr": 0.1}, "dataloader": {"batch_size": 8}})
    with pytest.raises(ValueError, match=rf"did you mean '{closest}'") as error:
        config.parse([flag, "1"])
    assert flag.lstrip("-").replace("-", "_") in str(error.value)
    assert config.precision is None  # nothing was applied


def test_new_keys_far_from_known_ones_are_accepted(recwarn):
    config = Config({"optim": {"lr": 0.1}, "dataloader": {"batch_size": 8}})
    config.parse(["--hidden_width", "64", "--optim.momentum", "0.9", "--optim.eps", "1e-8"])
    config.parse(["--dataloader.val.batch_size", "16", "--dataloader.num_workers", "0"])
    assert config.hidden_width == 64
    assert config.optim.momentum == 0.9
    assert config.dataloader.val.batch_size == 16
    assert [str(warning.message) for warning in recwarn] == []


def test_yaml_recipe_with_and_without_config_file(tmp_path, recwarn):
    path = tmp_path / "exp.yaml"
    path.write_text("epoch_end: 9\noptim:\n  lr: 0.01\nprecision: bf16\n")
    plain = RecipeConfig().parse([])
    assert (plain.epoch_end, plain.optim.lr) == (5, 1e-3)
    from_file = RecipeConfig().parse(["--config", str(path)])
    assert (from_file.epoch_end, from_file.optim.lr, from_file.precision) == (9, 0.01, "bf16")
    overridden = RecipeConfig().parse(["--config", str(path), "--optim.lr", "0.5"], default_config="config")
    assert (overridden.epoch_end, overridden.optim.lr) == (9, 0.5)
    assert "config" not in overridden  # the file's path is not a hyper-parameter
    assert [str(warning.message) for warning in recwarn] == []


def test_yaml_recipe_can_require_the_file():
    with pytest.raises(RuntimeError, match="--config is required"):
        RecipeConfig().parse([], default_config="config", no_default_config_action="raise")


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        RecipeConfig().parse(["--config", str(tmp_path / "missing.yaml")], default_config="config")


def test_the_config_flag_can_be_renamed_or_turned_off(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epoch_end: 9\n")
    assert RecipeConfig().parse(["--experiment", str(path)], default_config="experiment").epoch_end == 9
    plain = RecipeConfig().parse(["--config", str(path)], default_config=None)
    assert plain.epoch_end == 5
    assert plain.config == str(path)  # just a key then


@pytest.mark.parametrize(
    ("spelling", "expected"), [("false", False), ("No", False), ("0", False), ("ON", True), (1, True)]
)
def test_switches_read_string_spellings_strictly(spelling, expected):
    # bool("false") is True: a switch given as a string from code or a file must not flip silently.
    config = Config({"log": spelling, "progress_bar": spelling})
    assert config.log is expected
    assert config.progress_bar is expected
    config.merge({"tensorboard": spelling})
    assert config.tensorboard is expected
    config.compile = spelling
    assert config.compile is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5])
def test_a_switch_given_something_else_names_the_key_and_the_accepted_values(value):
    with pytest.raises(ValueError, match=r"'async_save' is a switch, but got .*accepted values are True/False"):
        Config({"async_save": value})
    config = Config()
    with pytest.raises(ValueError, match="'log' is a switch"):
        config.log = value
    assert config.log is True


# preemption_signals


def test_preemption_signals_is_declared_with_its_default_and_typo_detection():
    assert Config().preemption_signals == ["SIGTERM", "SIGUSR1"]
    with pytest.raises(ValueError, match="did you mean 'preemption_signals'"):
        Config().parse(["--preemption_signal", "TERM"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["SIGTERM", "SIGUSR1"], ["SIGTERM", "SIGUSR1"]),
        (["TERM", "usr1"], ["SIGTERM", "SIGUSR1"]),
        ([15, "10"], ["SIGTERM", "SIGUSR1"]),
        ("SIGUSR1", ["SIGUSR1"]),
        (15, ["SIGTERM"]),
        ("TERM,USR1", ["SIGTERM", "SIGUSR1"]),
        (["SIGTERM", "TERM", 15], ["SIGTERM"]),
        ([], []),
        (None, []),
        ("none", []),
    ],
)
def test_preemption_signals_accepts_names_numbers_or_none_and_stores_names(given, expected):
    config = Config()
    config.preemption_signals = given
    assert config.preemption_signals == expected
    assert Config({"preemption_signals": given}).preemption_signals == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preemption_signals", "TERM"], ["SIGTERM"]),
        (["--preemption_signals", "SIGTERM", "10"], ["SIGTERM", "SIGUSR1"]),
        (["--preemption_signals", "[]"], []),
        (["--preemption_signals", "TERM,USR1"], ["SIGTERM", "SIGUSR1"]),
    ],
)
def test_preemption_signals_from_the_command_line(args, expected):
    assert Config().parse(args).preemption_signals == expected


@pytest.mark.parametrize("bad", [["SIGFOO"], "SIGNOPE", [99999], ["SIGKILL"], "STOP", [1.5], True])
def test_an_invalid_preemption_signal_is_an_error_at_config_time_naming_it(bad):
    shown = repr(bad[0] if isinstance(bad, list) else bad)
    with pytest.raises(ValueError, match="preemption_signals") as raised:
        Config({"preemption_signals": bad})
    assert shown in str(raised.value)
    assert "'SIGTERM'" in str(raised.value)  # the accepted values
    assert "[]" in str(raised.value)
    with pytest.raises(ValueError, match="preemption_signals"):
        Config().parse(["--preemption_signals", str(bad[0] if isinstance(bad, list) else bad)])
    config = Config()
    with pytest.raises(ValueError, match="preemption_signals"):
        config.preemption_signals = bad
    assert config.preemption_signals == ["SIGTERM", "SIGUSR1"]  # nothing was applied
