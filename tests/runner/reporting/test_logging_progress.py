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

import danling as dl

from ..conftest import LinearRegressionRunner

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
BAR = re.compile(r"\d+%\|")


def make_runner(tmp_path: Path, runner_class: type = LinearRegressionRunner, **config: Any) -> LinearRegressionRunner:
    settings: dict[str, Any] = {"dir": str(tmp_path / "run"), "log": False, "seed": 0, "epoch_end": 2}
    settings["dataloader"] = {"batch_size": 8}
    settings.update(config)
    return runner_class(settings)


# Logs


# Two epochs of 5 train and 2 val batches; log steps count batches over the run (per mode), so an interval longer
# than an epoch still logs.
@pytest.mark.parametrize(("log_interval", "train_logs", "val_logs"), [(1, 10, 4), (2, 5, 2), (5, 2, 0), (6, 1, 0)])
def test_step_and_epoch_logs(tmp_path, capsys, log_interval, train_logs, val_logs):
    runner = make_runner(tmp_path, log=True, log_interval=log_interval)
    runner.train()
    runner.close()
    lines = Path(runner.log_file).read_text().splitlines()
    train_lines = [line for line in lines if "training on train" in line]
    val_lines = [line for line in lines if "evaluating on val" in line]
    assert len(train_lines) == train_logs
    assert len(val_lines) == val_logs
    for line in train_lines:
        assert TIMESTAMP.match(line), line
        assert re.search(r"\tloss: \d+\.\d{4}", line), line
        assert re.search(r"\blr: 5\.0e-02\b", line), line
        assert re.search(r"\bsamples/s: \d+\.\d\b", line), line
        assert re.search(r"\btime: \d+\.\d{3} s/step\b", line), line
    for line in val_lines:
        assert "loss: " in line
        assert "lr: " not in line
    assert sum("epoch [0/1]" in line for line in lines) == 1
    assert sum("epoch [1/1]" in line for line in lines) == 1
    assert any(line.startswith("train: loss: ") and "lr: 5.0e-02" in line for line in lines)
    assert any(line.startswith("val: loss: ") and "samples/s: " in line for line in lines)
    # The same records go to stdout.
    out = capsys.readouterr().out
    assert out.count("training on train") == train_logs
    assert out.count("epoch [") == 2


class ScoredRunner(LinearRegressionRunner):
    """Regression with dataset-level metrics (Pearson, Spearman) and a batch-level one (RMSE)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.metrics = dl.metrics.regression_metrics()


def test_step_lines_leave_out_dataset_level_metrics(tmp_path):
    runner = make_runner(tmp_path, log=True, log_interval=1, epoch_end=1, runner_class=ScoredRunner)
    runner.train()
    runner.close()
    lines = Path(runner.log_file).read_text().splitlines()
    step_lines = [line for line in lines if "training on train" in line or "evaluating on val" in line]
    assert step_lines
    for line in step_lines:
        assert "pearson" not in line, line
        assert "spearman" not in line, line
        assert "rmse: " in line, line
    epoch_lines = [line for line in lines if line.startswith(("train: ", "val: "))]
    assert all("pearson: " in line and "spearman: " in line for line in epoch_lines), epoch_lines


def test_two_runners_with_the_same_id_write_their_own_log(tmp_path):
    first = make_runner(tmp_path, log=True, dir=str(tmp_path / "first"))
    second = make_runner(tmp_path, log=True, dir=str(tmp_path / "second"))
    assert first.id == second.id
    assert first.logger is not second.logger
    first.log("only in the first")
    second.log("only in the second")
    first.close()
    second.close()
    assert "only in the second" not in Path(first.log_file).read_text()
    assert "only in the first" not in Path(second.log_file).read_text()
    assert "only in the second" in Path(second.log_file).read_text()


def test_default_log_interval_is_a_tenth_of_an_epoch(tmp_path):
    runner = make_runner(tmp_path, dataloader={"batch_size": 2})  # 20 train batches
    assert runner.log_interval == 2
    assert make_runner(tmp_path, log_interval=7).log_interval == 7


@pytest.mark.parametrize(("batch_size", "log_interval"), [(1, 4), (3, 2), (4, 1), (40, 1)])
def test_default_log_interval_rounds_a_tenth_of_the_longest_loader_up(tmp_path, batch_size, log_interval):
    # As the reference DanLing: ceil(batches / 10), at least 1 (40 and 14 train batches give 4 and 2, not 4 and 1).
    runner = make_runner(tmp_path, dataloader={"batch_size": batch_size})
    assert runner.log_interval == log_interval


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
    assert "train:" in err
    assert "train train" not in err  # the bar names the split once
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
    assert "train:" in sys.stderr.getvalue()
    assert "train train" not in sys.stderr.getvalue()


# A real terminal: the child runs on a pseudo-terminal (so tqdm draws its bar), a relay copies what it shows.

RELAY = """
import fcntl, os, pty, struct, subprocess, sys, termios
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 160-column terminal
child = subprocess.Popen([sys.executable, sys.argv[1]], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
os.close(slave)
chunks = []
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:  # EIO: the child closed the terminal
        break
    if not chunk:
        break
    chunks.append(chunk)
sys.stdout.write(b"".join(chunks).decode("utf-8", "replace"))
sys.exit(child.wait())
"""

TRAIN_ON_A_TERMINAL = """
import sys, torch
from torch.utils.data import TensorDataset
import danling as dl

class Runner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        self.datasets.val = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
        self.model = torch.nn.Linear(4, 1)
        self.criterion = torch.nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=3.2e-4)

assert sys.stdout.isatty() and sys.stderr.isatty()
runner = Runner({"epoch_end": 2, "log_interval": 2, "dir": "run", "dataloader": {"batch_size": 4}})
runner.train()
runner.close()
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_log_lines_never_cut_the_progress_bar(tmp_path, subprocess_run):
    (tmp_path / "relay.py").write_text(RELAY)
    (tmp_path / "train.py").write_text(TRAIN_ON_A_TERMINAL)
    result = subprocess_run([sys.executable, "relay.py", "train.py"], cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    screen = ANSI.sub("", result.stdout)
    assert BAR.search(screen), screen[-2000:]  # a bar was drawn
    timestamps = list(re.finditer(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[INFO\]", screen))
    assert len(timestamps) > 20
    for match in timestamps:
        # What the terminal shows on the line before the log record, after the last carriage return: nothing.
        line_start = max(screen.rfind("\n", 0, match.start()), screen.rfind("\r", 0, match.start())) + 1
        assert screen[line_start : match.start()].strip() == "", repr(screen[line_start - 100 : match.end() + 40])
    assert "train train" not in screen
    assert re.search(r"train:\s+\d+%\|", screen)
    assert re.search(r"loss=\d+\.\d{4}, samples/s=\d+\.\d", screen), screen[-3000:]
    assert "lr: 3.2e-04" in screen
