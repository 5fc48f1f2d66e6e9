"""Opt-in, reversible rank-aware `print` for scripts written against `init_print` of older DanLing releases.

Library code never prints: it logs. Installing this replaces `builtins.print` until `restore_print()`.
"""

from __future__ import annotations

import builtins
from typing import Any

BUILTIN_PRINT = builtins.print


class RankAwarePrint:
    r"""
    A `print` that only prints when enabled for this process, or when called with `force=True`.

    Args:
        enabled: Whether this process prints by default.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, *args: Any, force: bool = False, **kwargs: Any) -> None:
        if self.enabled or force:
            BUILTIN_PRINT(*args, **kwargs)


def install_print(enabled: bool) -> None:
    r"""
    Replace `builtins.print` with a [`RankAwarePrint`][danling.runner.reporting.printing.RankAwarePrint].

    Idempotent: installing twice updates the existing replacement instead of wrapping it.

    Args:
        enabled: Whether this process prints without `force=True`.

    Examples:
        >>> install_print(enabled=False)
        >>> print("hidden")
        >>> print("shown", force=True)
        shown
        >>> restore_print()
        >>> print is BUILTIN_PRINT
        True
    """
    if isinstance(builtins.print, RankAwarePrint):
        builtins.print.enabled = enabled
        return
    builtins.print = RankAwarePrint(enabled)


def restore_print() -> None:
    r"""
    Put back the built-in `print`.
    """
    builtins.print = BUILTIN_PRINT
