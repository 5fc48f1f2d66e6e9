"""Decorators and descriptors for path properties whose directory must exist when read."""

from __future__ import annotations

import os
from functools import cached_property, wraps
from typing import Any, Callable


def ensure_dir(func: Callable[..., str]) -> Callable[..., str]:
    r"""
    Make the directory a function returns exist, and return its absolute path.

    Args:
        func: Function returning a directory path.

    Returns:
        The wrapped function.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> @ensure_dir
        ... def outputs():
        ...     return os.path.join(root, "outputs")
        >>> os.path.isdir(outputs())
        True
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        path = os.path.abspath(func(*args, **kwargs))
        os.makedirs(path, exist_ok=True)
        return path

    return wrapper


def ensure_parent_dir(func: Callable[..., str]) -> Callable[..., str]:
    r"""
    Make the parent directory of the file path a function returns exist, and return the absolute path.

    Args:
        func: Function returning a file path.

    Returns:
        The wrapped function.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> @ensure_parent_dir
        ... def log_file():
        ...     return os.path.join(root, "logs", "run.log")
        >>> os.path.isdir(os.path.dirname(log_file()))
        True
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        path = os.path.abspath(func(*args, **kwargs))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    return wrapper


class cached_ensure_dir(cached_property):
    r"""
    A `cached_property` holding a directory path that is created (and made absolute) on first access.

    Examples:
        >>> import tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @cached_ensure_dir
        ...     def dir(self):
        ...         return os.path.join(self.root, "run")
        >>> os.path.isdir(Run().dir)
        True
    """

    def __init__(self, func: Callable[[Any], str]) -> None:
        super().__init__(ensure_dir(func))


class cached_ensure_parent_dir(cached_property):
    r"""
    A `cached_property` holding a file path whose parent directory is created on first access.

    Examples:
        >>> import tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @cached_ensure_parent_dir
        ...     def log_file(self):
        ...         return os.path.join(self.root, "logs", "run.log")
        >>> os.path.isdir(os.path.dirname(Run().log_file))
        True
    """

    def __init__(self, func: Callable[[Any], str]) -> None:
        super().__init__(ensure_parent_dir(func))
