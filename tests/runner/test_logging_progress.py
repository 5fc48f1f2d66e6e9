"""Logging and progress bars of `TorchRunner`: step and epoch logs, the runner's own logger, tqdm on a terminal."""

from __future__ import annotations

import builtins
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import LinearRegressionRunner

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
BAR = re.compile(r"\d+%\|")


def make_runner(tmp_path: Path, **config: Any) -> LinearRegressionRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / "run"), "log": False, "seed": 0, "epoch_end": 2}
    settings["dataloader"] = {"batch_size": 8}
    settings.update(config)
    return LinearRegressionRunner(settings)


# Logs


@pytest.mark.parametrize(("log_interval", "train_logs", "val_logs"), [(1, 5, 2), (2, 2, 1), (5, 1, 0), (6, 0, 0)])
def test_step_and_epoch_logs(tmp_path, capsys, log_interval, train_logs, val_logs):
    runner = make_runner(tmp_path, log=True, log_interval=log_interval)
    runner.train()
    runner.close()
    lines = Path(runner.log_file).read_text().splitlines()
    train_lines = [line for line in lines if "training on train" in line]
    val_lines = [line for line in lines if "evaluating on val" in line]
    assert len(train_lines) == 2 * train_logs  # two epochs
    assert len(val_lines) == 2 * val_logs
    for line in train_lines:
        assert TIMESTAMP.match(line), line
        assert re.search(r"\tloss: \d+\.\d{4}", line), line
        assert re.search(r"\blr: 0\.0500", line), line
    for line in val_lines:
        assert "loss: " in line
    assert sum("epoch [0/1]" in line for line in lines) == 1
    assert sum("epoch [1/1]" in line for line in lines) == 1
    assert any(line.startswith("train: loss: ") for line in lines)
    assert any(line.startswith("val: loss: ") for line in lines)
    # The same records go to stdout.
    out = capsys.readouterr().out
    assert out.count("training on train") == 2 * train_logs
    assert out.count("epoch [") == 2


def test_default_log_interval_is_a_tenth_of_an_epoch(tmp_path):
    runner = make_runner(tmp_path, dataloader={"batch_size": 2})  # 20 train batches
    assert runner.log_interval == 2
    assert make_runner(tmp_path, log_interval=7).log_interval == 7


def test_logger_is_the_runners_own(tmp_path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    runner = make_runner(tmp_path, log=True)
    runner.train()
    assert runner.logger is not None
    assert runner.logger.name == f"danling.runner.{runner.id}"
    assert runner.logger.propagate is False
    assert root.handlers == handlers
    assert root.level == level
    runner.close()


def test_log_false_writes_no_log_file(tmp_path, capsys):
    runner = make_runner(tmp_path, log=False)
    runner.train()
    assert runner.logger is None
    run_dir = Path(runner.dir)
    assert (run_dir / "results.json").is_file()
    assert list(run_dir.rglob("*.log")) == []
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("log", [True, False])
def test_print_is_untouched(tmp_path, log):
    original = builtins.print
    runner = make_runner(tmp_path, log=log)
    assert builtins.print is original
    runner.train()
    runner.evaluate(["val"])
    assert builtins.print is original
    runner.close()


# Progress bars


def test_progress_bar_true_shows_tqdm(tmp_path, capsys):
    runner = make_runner(tmp_path, progress_bar=True, epoch_end=1)
    runner.train()
    runner.infer("val")
    err = capsys.readouterr().err
    assert BAR.search(err), err
    assert "train train" in err
    assert "evaluate val" in err
    assert "infer val" in err


def test_progress_bar_false_shows_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", TerminalStream())
    runner = make_runner(tmp_path, progress_bar=False, epoch_end=1)
    runner.train()
    assert sys.stderr.getvalue() == ""
    assert not BAR.search(capsys.readouterr().err)


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_defaults_to_off_without_a_terminal(tmp_path, capsys):
    assert not sys.stderr.isatty()
    runner = make_runner(tmp_path, epoch_end=1)
    runner.train()
    assert not BAR.search(capsys.readouterr().err)


def test_progress_bar_defaults_to_on_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", TerminalStream())
    runner = make_runner(tmp_path, epoch_end=1)
    runner.train()
    assert BAR.search(sys.stderr.getvalue())
    assert "train train" in sys.stderr.getvalue()
