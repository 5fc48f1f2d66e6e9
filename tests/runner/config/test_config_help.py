"""`--help` lists every key with its type, default and description."""

from __future__ import annotations

import sys
from typing import get_type_hints

import pytest

from danling.runner import Config
from danling.runner.config.help import key_descriptions, type_name

SCRIPT = '''
import danling as dl


class MyConfig(dl.Config):
    """
    Attributes:
        hidden: Width of the hidden layer.
    """

    hidden: int = 32
    epoch_end: int = 5

    def __init__(self):
        super().__init__()
        self.optim.type = "sgd"
        self.optim.lr = 0.1


if __name__ == "__main__":
    config = MyConfig().parse()
    print("parsed", config.hidden)
'''


def help_text(config: Config, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        config.parse(["--help"])
    assert exit_info.value.code in (0, None)
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_every_key_the_library_declares_has_a_description():
    declared = set(get_type_hints(Config)) | {"experiment_id", "run_id"}
    assert declared - set(key_descriptions(Config)) == set()


def test_help_shows_every_declared_key_with_its_type_default_and_description(capsys):
    text = help_text(Config(), capsys)
    descriptions = key_descriptions(Config)
    config = Config()
    for key, annotation in get_type_hints(Config).items():
        assert f"--{key} " in text
        assert f"{descriptions[key]} (type: {type_name(annotation)}; default: {config[key]!r})" in text


@pytest.mark.parametrize(
    "expected",
    [
        "--epoch_end EPOCH_END Stop before this epoch (None for no limit). (type: int | None; default: None)",
        "--accum_steps ACCUM_STEPS Micro-batches per optimizer step. (type: int; default: 1)",
        "--seed SEED Random seed;",
        "(type: float | None; default: None)",
        "--precision PRECISION",
        "--save_steps SAVE_STEPS Also save latest.pth every this many optimizer steps",
        "--auto_resume AUTO_RESUME Continue the newest valid checkpoint",
        "--dataloader.drop_last DATALOADER.DROP_LAST Drop the last batch",
        "(type: bool; default: not set)",
        "--config FILE YAML or JSON file",
    ],
)
def test_help_of_the_library_keys(capsys, expected):
    assert expected in help_text(Config(), capsys)


def test_help_of_a_script_shows_its_own_keys(tmp_path, subprocess_run):
    (tmp_path / "train.py").write_text(SCRIPT)
    result = subprocess_run([sys.executable, "train.py", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--hidden HIDDEN Width of the hidden layer. (type: int; default: 32)" in text
    assert "--epoch_end EPOCH_END Stop before this epoch (None for no limit). (type: int; default: 5)" in text
    assert "--optim.lr OPTIM.LR (type: float; default: 0.1)" in text
    assert "--optim.type OPTIM.TYPE (type: str; default: 'sgd')" in text
    assert "--max_grad_norm MAX_GRAD_NORM Clip gradients to this total norm" in text
    assert "parsed" not in result.stdout  # --help exits before the script goes on
    assert not (tmp_path / "experiments").exists()


def test_help_leaves_parsing_alone():
    config = Config()
    config.parse(["--accum_steps", "2"])
    assert config.parse(["--accum_steps", "3"]).accum_steps == 3  # a second parse reuses the described parser
