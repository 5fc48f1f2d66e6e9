"""Runner logging: a logger owned by each runner, writing to stdout and a log file on the main process only.

Lines to stdout go through `tqdm.write` once tqdm is loaded, so they never cut a progress bar in half.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Marks the handlers this module installs, so that setting a logger up again replaces them instead of
# stacking duplicates.
_HANDLER_MARK = "_danling_handler"
FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


class BarSafeStreamHandler(logging.StreamHandler):
    r"""
    A `StreamHandler` that writes through `tqdm.write` when tqdm is loaded: progress bars are cleared, the line is
    written, and the bars are drawn again below it.

    Examples:
        >>> import io
        >>> stream = io.StringIO()
        >>> logger = logging.Logger("danling.doctest.bar")
        >>> logger.addHandler(BarSafeStreamHandler(stream))
        >>> logger.warning("hello")
        >>> stream.getvalue()
        'hello\n'
    """

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        if tqdm is None or not getattr(tqdm.tqdm, "_instances", True):  # no bar open: nothing to clear and redraw
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:  # pragma: no cover - as logging.StreamHandler does
            raise
        except Exception:
            self.handleError(record)


class SharedFormatter(logging.Formatter):
    r"""
    A `Formatter` that formats a record once, however many handlers share it (stdout and the log file), and
    renders the date and time of day once per second rather than once per line.

    Examples:
        >>> formatter = SharedFormatter("%(levelname)s %(message)s")
        >>> record = logging.LogRecord("danling", logging.INFO, __file__, 1, "hello", None, None)
        >>> formatter.format(record), formatter.format(record) is formatter.format(record)
        ('INFO hello', True)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._second: tuple[int, str] = (-1, "")  # the last whole second rendered, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        rendered = self._second
        if rendered[0] != second:
            rendered = (second, time.strftime(self.default_time_format, self.converter(record.created)))
            self._second = rendered
        return self.default_msec_format % (rendered[1], record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get("_danling_formatted")
        if cached is not None and cached[0] is self:
            return cached[1]
        line = super().format(record)
        record._danling_formatted = (self, line)
        return line


def _install(logger: logging.Logger, handler: logging.Handler, level: int, formatter: logging.Formatter) -> None:
    handler.setLevel(level)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)


def close_logger(logger: logging.Logger) -> None:
    r"""
    Remove and close the handlers that [`setup_logger`][danling.runner.reporting.log.setup_logger] installed.

    Args:
        logger: Logger to clean up.
    """
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            logger.removeHandler(handler)
            handler.close()


def setup_logger(name: str, log_file: str | None, main_process: bool = True, rank: int = 0) -> logging.Logger:
    r"""
    Configure the logger `name`: INFO to stdout and DEBUG to `log_file` on the main process.

    Other processes only report warnings and errors, to stderr and tagged with their rank. Calling it again
    replaces the handlers instead of adding more; the root logger is never touched.

    Args:
        name: Logger name.
        log_file: File to append to (main process only); `None` for none.
        main_process: Whether this is the process that logs.
        rank: Rank shown in messages of the other processes.

    Returns:
        The logger.

    Examples:
        >>> logger = setup_logger("danling.doctest", None)
        >>> len(setup_logger("danling.doctest", None).handlers)
        1
        >>> close_logger(logger)
    """
    return configure_logger(logging.getLogger(name), log_file, main_process, rank)


def create_logger(name: str, log_file: str | None, main_process: bool = True, rank: int = 0) -> logging.Logger:
    r"""
    A new logger that belongs to its caller alone: not registered under `name`, so two runners with the same id
    in one process each write to their own `log_file`.

    Configured as [`setup_logger`][danling.runner.reporting.log.setup_logger] does; close it with
    [`close_logger`][danling.runner.reporting.log.close_logger].

    Args:
        name: Name shown in the log lines.
        log_file: File to append to (main process only); `None` for none.
        main_process: Whether this is the process that logs.
        rank: Rank shown in messages of the other processes.

    Returns:
        The logger.

    Examples:
        >>> first, second = create_logger("danling.same", None), create_logger("danling.same", None)
        >>> first is not second and first.name == second.name
        True
        >>> close_logger(first), close_logger(second)
        (None, None)
    """
    return configure_logger(logging.Logger(name), log_file, main_process, rank)


def configure_logger(logger: logging.Logger, log_file: str | None, main_process: bool, rank: int) -> logging.Logger:
    r"""
    Give `logger` DanLing's handlers, replacing the ones it installed before (see
    [`setup_logger`][danling.runner.reporting.log.setup_logger]).

    Returns:
        The logger.
    """
    close_logger(logger)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if main_process:
        formatter = SharedFormatter(FORMAT)
        _install(logger, BarSafeStreamHandler(sys.stdout), logging.INFO, formatter)
        if log_file is not None:
            handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=True)
            _install(logger, handler, logging.DEBUG, formatter)
    else:
        _install(logger, logging.StreamHandler(sys.stderr), logging.WARNING, SharedFormatter(f"[rank {rank}] {FORMAT}"))
    return logger


def create_tensorboard_writer(log_dir: str, *args: Any, **kwargs: Any) -> Any:
    r"""
    Create a TensorBoard `SummaryWriter` (imported here so that `import danling` does not load tensorboard).

    Args:
        log_dir: Directory of the event files.
        *args: Passed to `SummaryWriter`.
        **kwargs: Passed to `SummaryWriter`.

    Returns:
        The writer.

    Raises:
        ImportError: If tensorboard is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # pragma: no cover - tensorboard is a dependency
        raise ImportError("TensorBoard logging needs tensorboard: pip install tensorboard") from exc
    return SummaryWriter(log_dir, *args, **kwargs)
