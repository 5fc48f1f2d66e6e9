from __future__ import annotations

import gc
import logging
import weakref
from typing import Callable

import pytest

from danling.utils import catch, flexible_decorator, method_cache

LOGGER = "danling.utils.decorators"


def test_catch_bare(caplog: pytest.LogCaptureFixture) -> None:
    @catch
    def fail() -> int:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert fail() is None
    assert "ValueError" in caplog.text
    assert "boom" in caplog.text


def test_catch_called(caplog: pytest.LogCaptureFixture) -> None:
    @catch()
    def fail() -> int:
        raise KeyError("k")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert fail() is None
    assert "KeyError" in caplog.text


def test_catch_returns_the_value_without_error() -> None:
    @catch
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add"


def test_catch_only_the_given_error() -> None:
    @catch(OSError)
    def fail(error: type[Exception]) -> None:
        raise error("x")

    assert fail(FileNotFoundError) is None
    with pytest.raises(ValueError, match="x"):
        fail(ValueError)


def test_catch_exclude_re_raises() -> None:
    @catch(exclude=ValueError)
    def fail(error: type[Exception]) -> None:
        raise error("bad value")

    with pytest.raises(ValueError, match="bad value"):
        fail(ValueError)
    assert fail(TypeError) is None


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("caught", [BaseException, Exception, (KeyboardInterrupt, SystemExit)])
def test_catch_never_swallows_interrupts(error: type[BaseException], caught: object) -> None:
    @catch(caught)
    def stop() -> None:
        raise error

    with pytest.raises(error):
        stop()


def test_catch_callback_and_verbosity(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple] = []

    @catch(callback=lambda exc, func, args, kwargs, tag: seen.append((type(exc), args, kwargs, tag)), tag="t")
    def fail(a: int, b: int = 0) -> None:
        raise ValueError

    fail(1, b=2)
    assert seen == [(ValueError, (1,), {"b": 2}, "t")]

    @catch(verbosity=-1)
    def quiet() -> None:
        raise ValueError("quiet")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        quiet()
    assert "quiet" not in caplog.text


def test_catch_rejects_non_exceptions() -> None:
    with pytest.raises(TypeError):
        catch(int)


def test_flexible_decorator() -> None:
    @flexible_decorator
    def suffix(text: str = "!") -> Callable:
        def decorator(func: Callable) -> Callable:
            return lambda: func() + text

        return decorator

    @suffix
    def hello() -> str:
        return "hello"

    @suffix()
    def bare_call() -> str:
        return "call"

    @suffix(text="?")
    def what() -> str:
        return "what"

    @suffix("...")
    def positional() -> str:
        return "so"

    assert (hello(), bare_call(), what(), positional()) == ("hello!", "call!", "what?", "so...")


def test_flexible_decorator_called_form() -> None:
    @flexible_decorator()
    def twice() -> Callable:
        def decorator(func: Callable) -> Callable:
            return lambda: 2 * func()

        return decorator

    @twice
    def one() -> int:
        return 1

    assert one() == 2


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    @method_cache
    def square(self, x: int) -> int:
        self.calls += 1
        return x * x

    @method_cache(maxsize=1)
    def cube(self, x: int) -> int:
        self.calls += 1
        return x**3


def test_method_cache_caches_per_instance() -> None:
    first, second = Counter(), Counter()
    assert (first.square(3), first.square(3), first.square(4)) == (9, 9, 16)
    assert first.calls == 2
    assert second.square(3) == 9
    assert second.calls == 1


def test_method_cache_maxsize() -> None:
    counter = Counter()
    counter.cube(2)
    counter.cube(3)
    counter.cube(2)
    assert counter.calls == 3


def test_method_cache_lets_the_instance_be_collected() -> None:
    counter = Counter()
    counter.square(2)
    reference = weakref.ref(counter)
    del counter
    gc.collect()
    assert reference() is None
