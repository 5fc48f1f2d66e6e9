"""Context managers for interactive work."""

from __future__ import annotations

import logging
import pdb
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .decorators import Exceptions

logger = logging.getLogger(__name__)


@contextmanager
def debug(
    enable: bool = True,
    error: Exceptions = Exception,
    exclude: Exceptions | None = None,
) -> Iterator[None]:
    r"""
    Open a post-mortem `pdb` session where an exception escapes the block, then re-raise it.

    With `enable=False` the block runs untouched, so scripts can write `with dl.debug(config.debug):`.
    `KeyboardInterrupt` and `SystemExit` are never intercepted.

    Args:
        enable: Whether to start the debugger on errors.
        error: Exception type(s) that start the debugger.
        exclude: Exception type(s) that are re-raised without the debugger.

    Examples:
        >>> with debug(enable=False):
        ...     1 + 1
        2
    """
    if not enable:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except error as exc:
        if exclude is not None and isinstance(exc, exclude):
            raise
        logger.exception("entering post-mortem debugging after %s", type(exc).__name__)
        pdb.post_mortem(sys.exc_info()[2])
        raise
