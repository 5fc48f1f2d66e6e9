"""Runner logging: a per-run logger writing to stdout and a log file on the main process only."""

from __future__ import annotations

import logging
import sys
from typing import Any

# Marks the handlers this module installs, so that setting a logger up again replaces them instead of
# stacking duplicates.
_HANDLER_MARK = "_danling_handler"
FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


def _install(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)


def close_logger(logger: logging.Logger) -> None:
    r"""
    Remove and close the handlers that [`setup_logger`][danling.runner.log.setup_logger] installed.

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
    logger = logging.getLogger(name)
    close_logger(logger)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if main_process:
        _install(logger, logging.StreamHandler(sys.stdout), logging.INFO)
        if log_file is not None:
            _install(logger, logging.FileHandler(log_file, mode="a", encoding="utf-8"), logging.DEBUG)
    else:
        handler = logging.StreamHandler(sys.stderr)
        _install(logger, handler, logging.WARNING)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] {FORMAT}"))
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
