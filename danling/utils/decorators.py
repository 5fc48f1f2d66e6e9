"""Small decorators: `flexible_decorator`, `catch` and `method_cache`."""

from __future__ import annotations

import logging
from functools import lru_cache, wraps
from inspect import isclass, isfunction, ismethod
from typing import Any, Callable, Union
from weakref import ref

logger = logging.getLogger(__name__)

Exceptions = Union[type[BaseException], tuple[type[BaseException], ...]]
# `catch` must never swallow these, whatever the caller asks for: they are how a user stops a run.
_NEVER_CAUGHT = (KeyboardInterrupt, SystemExit, GeneratorExit)


def flexible_decorator(maybe_decorator: Callable | None = None) -> Callable:
    r"""
    Let a decorator factory be used both bare (`@deco`) and called (`@deco()` / `@deco(arg=1)`).

    Args:
        maybe_decorator: The decorator factory; when `None`, returns a decorator to apply to one.

    Returns:
        A factory that, when called with a single function, decorates it with the default arguments.

    Examples:
        >>> @flexible_decorator
        ... def shout(suffix="!"):
        ...     def decorator(func):
        ...         return lambda: func() + suffix
        ...     return decorator
        >>> @shout
        ... def hello():
        ...     return "hello"
        >>> @shout(suffix="?")
        ... def what():
        ...     return "what"
        >>> hello(), what()
        ('hello!', 'what?')
    """

    def make_flexible(factory: Callable) -> Callable:
        @wraps(factory)
        def wrapper(*args: Any, **kwargs: Any) -> Callable:
            if len(args) == 1 and not kwargs and (isfunction(args[0]) or ismethod(args[0])):
                return factory()(args[0])
            return factory(*args, **kwargs)

        return wrapper

    if maybe_decorator is None:
        return make_flexible
    return make_flexible(maybe_decorator)


def log_exception(exc: BaseException, func: Callable, args: tuple, kwargs: dict, verbosity: int = 40) -> None:
    r"""
    Default callback of [`catch`][danling.utils.decorators.catch]: log the exception with its traceback.

    Args:
        exc: The exception that was caught.
        func: The function that raised it.
        args: Positional arguments of the failed call.
        kwargs: Keyword arguments of the failed call.
        verbosity: Below 0 logs nothing; up to 10 also logs the call's arguments.
    """
    if verbosity < 0:
        return
    message = f"{type(exc).__name__} caught in {getattr(func, '__qualname__', func)}: {exc}"
    if verbosity <= 10:
        message += f"\nargs: {args}\nkwargs: {kwargs}"
    logger.error(message, exc_info=(type(exc), exc, exc.__traceback__))


@flexible_decorator
def catch(
    error: Exceptions = Exception,
    exclude: Exceptions | None = None,
    callback: Callable = log_exception,
    *callback_args: Any,
    **callback_kwargs: Any,
) -> Callable:
    r"""
    Catch `error` (except `exclude`) raised by the decorated function, log it and return `None`.

    `KeyboardInterrupt`, `SystemExit` and `GeneratorExit` are always re-raised, even when `error` names them.

    Args:
        error: Exception type(s) to catch.
        exclude: Exception type(s) to re-raise even though they match `error`.
        callback: Called as `callback(exc, func, args, kwargs, *callback_args, **callback_kwargs)`.
        *callback_args: Extra positional arguments for `callback`.
        **callback_kwargs: Extra keyword arguments for `callback` (e.g. `verbosity=0`).

    Returns:
        A decorator.

    Examples:
        >>> @catch(OSError)
        ... def read_missing():
        ...     raise FileNotFoundError("missing.txt")
        >>> read_missing() is None
        True
        >>> @catch(exclude=ValueError)
        ... def bad_value():
        ...     raise ValueError("bad value")
        >>> bad_value()
        Traceback (most recent call last):
        ValueError: bad value
    """
    if isclass(error) and not issubclass(error, BaseException):
        raise TypeError(f"error must be an exception type or a tuple of them, but got {error!r}")

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except _NEVER_CAUGHT:
                raise
            except error as exc:
                if exclude is not None and isinstance(exc, exclude):
                    raise
                callback(exc, func, args, kwargs, *callback_args, **callback_kwargs)
                return None

        return wrapper

    return decorator


@flexible_decorator
def method_cache(maxsize: int | None = 128, typed: bool = False) -> Callable:
    r"""
    `functools.lru_cache` for methods, holding only a weak reference to the instance.

    A plain `lru_cache` on a method keeps every instance alive for as long as the cache lives; here each
    instance gets its own cache, stored on the instance and freed with it.

    Args:
        maxsize: Maximum number of cached calls per instance (`None` for unbounded).
        typed: Cache arguments of different types separately.

    Returns:
        A decorator for instance methods.

    Examples:
        >>> class Square:
        ...     calls = 0
        ...     @method_cache
        ...     def of(self, x):
        ...         self.calls += 1
        ...         return x * x
        >>> s = Square()
        >>> s.of(3), s.of(3), s.calls
        (9, 9, 1)
    """

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            instance = ref(self)

            @lru_cache(maxsize=maxsize, typed=typed)
            def cached(*args: Any, **kwargs: Any) -> Any:
                return func(instance(), *args, **kwargs)

            setattr(self, func.__name__, wraps(func)(cached))
            return cached(*args, **kwargs)

        return wrapper

    return decorator
