from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Callable

import pytest

from danling.runner import BaseRunner
from danling.runner.reporting.log import close_logger, setup_logger
from danling.runner.reporting.printing import BUILTIN_PRINT, RankAwarePrint

NewRunner = Callable[..., BaseRunner]


def test_runner_logs_to_stdout_and_log_file(new_runner: NewRunner, capsys: pytest.CaptureFixture[str]) -> None:
    root_handlers = list(logging.getLogger().handlers)
    original_print = builtins.print
    runner = new_runner(log=True)
    assert runner.logger is not None
    assert runner.logger.name == f"danling.runner.{runner.id}"
    runner.log("hello from the runner")
    runner.close()
    assert "hello from the runner" in capsys.readouterr().out
    assert "hello from the runner" in Path(runner.log_file).read_text()
    assert logging.getLogger().handlers == root_handlers
    assert builtins.print is original_print


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_runner_logger_does_not_propagate_to_root(new_runner: NewRunner) -> None:
    root = logging.getLogger()
    collect = Collect()
    root.addHandler(collect)
    try:
        runner = new_runner(log=True)
        runner.log("private message")
        runner.close()
    finally:
        root.removeHandler(collect)
    assert runner.logger.propagate is False
    assert "private message" not in collect.messages


def own_handlers(logger: logging.Logger) -> list[logging.Handler]:
    # Only the handlers the runner installed: test runners may attach capture handlers of their own.
    return [handler for handler in logger.handlers if getattr(handler, "_danling_handler", False)]


def test_init_logging_twice_does_not_duplicate_handlers(
    new_runner: NewRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = new_runner(log=True)
    count = len(own_handlers(runner.logger))
    runner.init_logging()
    runner.init_logging()
    assert len(own_handlers(runner.logger)) == count == 2
    runner.log("once")
    assert capsys.readouterr().out.count("once") == 1
    runner.close()
    assert Path(runner.log_file).read_text().count("once") == 1


def test_log_false_means_no_logger(new_runner: NewRunner, capsys: pytest.CaptureFixture[str]) -> None:
    runner = new_runner(log=False)
    assert runner.logger is None
    runner.log("silent")
    assert "silent" not in capsys.readouterr().out
    assert not Path(runner.dir, "run.log").exists()


def test_close_removes_the_file_handler(new_runner: NewRunner) -> None:
    runner = new_runner(log=True)
    assert own_handlers(runner.logger)
    runner.close()
    assert not own_handlers(runner.logger)


def test_print_result(new_runner: NewRunner, capsys: pytest.CaptureFixture[str]) -> None:
    runner = new_runner(log=True)
    runner.append_result({"val": {"loss": 0.25}}, index=0)
    runner.print_result()
    out = capsys.readouterr().out
    assert "latest result" in out
    assert "best result" in out
    runner.close()


def test_init_print_is_idempotent_and_reversible(new_runner: NewRunner, capsys: pytest.CaptureFixture[str]) -> None:
    runner = new_runner()
    runner.init_print()
    installed = builtins.print
    assert isinstance(installed, RankAwarePrint)
    runner.init_print()
    assert builtins.print is installed  # not wrapped twice
    print("rank zero prints")
    assert capsys.readouterr().out == "rank zero prints\n"
    runner.restore_print()
    assert builtins.print is BUILTIN_PRINT


def test_init_print_for_another_rank_hides_unless_forced(
    new_runner: NewRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = new_runner()
    runner.init_print(process=1)
    print("hidden")
    print("forced", force=True)
    runner.restore_print()
    assert capsys.readouterr().out == "forced\n"


def test_setup_logger_on_other_ranks_only_warns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logger = setup_logger("danling.runner.test-rank", str(tmp_path / "x.log"), main_process=False, rank=3)
    logger.info("info")
    logger.warning("careful")
    captured = capsys.readouterr()
    assert "info" not in captured.err + captured.out
    assert "[rank 3]" in captured.err
    assert "careful" in captured.err
    assert not (tmp_path / "x.log").exists()
    close_logger(logger)
    assert not own_handlers(logger)


def test_a_record_is_formatted_once_for_stdout_and_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from danling.runner.reporting.log import SharedFormatter

    calls = []
    original = logging.Formatter.format

    def counting_format(self, record):
        calls.append(record.getMessage())
        return original(self, record)

    logger = setup_logger("danling.test.shared", str(tmp_path / "run.log"))
    try:
        assert len({id(handler.formatter) for handler in logger.handlers}) == 1
        assert all(isinstance(handler.formatter, SharedFormatter) for handler in logger.handlers)
        logging.Formatter.format = counting_format
        logger.info("one line")
    finally:
        logging.Formatter.format = original
        close_logger(logger)
    assert calls == ["one line"]
    written = (tmp_path / "run.log").read_text().strip()
    assert written.endswith("one line")
    assert written == capsys.readouterr().out.strip()


@pytest.mark.parametrize("datefmt", [None, "%H:%M:%S"])
def test_the_time_of_day_rendered_once_a_second_matches_the_standard_formatter(datefmt: str | None) -> None:
    from danling.runner.reporting.log import FORMAT, SharedFormatter

    shared, standard = SharedFormatter(FORMAT, datefmt), logging.Formatter(FORMAT, datefmt)
    # Several lines in one second, the last instant of a second, the first of the next, and back in time.
    for created in (1700000000.25, 1700000000.5, 1700000000.999, 1700000001.0, 1700000001.75, 1699999000.125):
        record = logging.LogRecord("danling", logging.INFO, __file__, 1, "hello", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert shared.formatTime(record, datefmt) == standard.formatTime(record, datefmt)
        record._danling_formatted = None  # format afresh: compare the whole line too
        assert shared.format(record) == standard.format(record)
