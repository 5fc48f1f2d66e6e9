"""Descriptors for path attributes whose directory must exist whenever they are read."""

from __future__ import annotations

import os
from threading import RLock
from typing import Any, Callable

_MISSING = object()


def _make_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _make_parent_dir(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


class ensure_dir(property):
    r"""
    A read-only attribute holding a directory path: every read creates the directory and returns its absolute path.

    Apply it to a method, like `property`; the method is called on every read.

    Examples:
        >>> import os, tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @ensure_dir
        ...     def outputs(self) -> str:
        ...         return os.path.join(self.root, "outputs")
        >>> run = Run()
        >>> os.path.isdir(run.outputs)
        True
        >>> os.rmdir(run.outputs)  # reading it again re-creates it
        >>> os.path.isdir(run.outputs)
        True
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = os.path.abspath(super().__get__(instance, owner))
        _make_dir(path)
        return path


class ensure_parent_dir(property):
    r"""
    A read-only attribute holding a file path: every read creates the file's parent directory.

    Examples:
        >>> import os, tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @ensure_parent_dir
        ...     def log_file(self) -> str:
        ...         return os.path.join(self.root, "logs", "run.log")
        >>> run = Run()
        >>> os.path.isdir(os.path.dirname(run.log_file)), os.path.exists(run.log_file)
        (True, False)
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = os.path.abspath(super().__get__(instance, owner))
        _make_parent_dir(path)
        return path


class _CachedPath:
    r"""
    Data descriptor that computes a path once per instance, then re-runs `prepare` on it at every read.

    The cached value lives in the instance's `__dict__` under the attribute's name; assigning the attribute
    replaces it and deleting it drops the cache.
    """

    prepare: Callable[[str], None]

    def __init__(self, func: Callable[[Any], str]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__
        self.lock = RLock()

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        cache = instance.__dict__
        path = cache.get(self.name, _MISSING)
        if path is _MISSING:
            with self.lock:
                path = cache.get(self.name, _MISSING)
                if path is _MISSING:
                    path = os.path.abspath(self.func(instance))
                    cache[self.name] = path
        self.prepare(path)
        return path

    def __set__(self, instance: Any, value: str) -> None:
        instance.__dict__[self.name] = os.path.abspath(value)

    def __delete__(self, instance: Any) -> None:
        instance.__dict__.pop(self.name, None)


class cached_ensure_dir(_CachedPath):
    r"""
    Like [`ensure_dir`][danling.utils.descriptors.ensure_dir], but the method runs once per instance.

    The path is cached; the directory is still re-created on every read if it was removed in between.

    Examples:
        >>> import os, tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @cached_ensure_dir
        ...     def dir(self) -> str:
        ...         return os.path.join(self.root, "run")
        >>> run = Run()
        >>> os.rmdir(run.dir)
        >>> os.path.isdir(run.dir)
        True
    """

    prepare = staticmethod(_make_dir)


class cached_ensure_parent_dir(_CachedPath):
    r"""
    Like [`ensure_parent_dir`][danling.utils.descriptors.ensure_parent_dir], but the method runs once per instance.

    Examples:
        >>> import os, tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @cached_ensure_parent_dir
        ...     def log_file(self) -> str:
        ...         return os.path.join(self.root, "logs", "run.log")
        >>> run = Run()
        >>> os.rmdir(os.path.dirname(run.log_file))
        >>> os.path.isdir(os.path.dirname(run.log_file))
        True
    """

    prepare = staticmethod(_make_parent_dir)
