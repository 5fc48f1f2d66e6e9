"""The reference library's module path for [`debug`][danling.utils.context_managers.debug].

Examples:
    >>> from danling.utils.contextmanagers import debug
    >>> from danling.utils.context_managers import debug as same
    >>> debug is same
    True
"""

from .context_managers import debug

__all__ = ["debug"]
