"""`Runner`: a runner whose platform is chosen by `config.platform`."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from .base_runner import BaseRunner
from .torch_runner import TorchRunner

PLATFORMS: dict[str, type[BaseRunner]] = {"torch": TorchRunner}


@cache
def _platform_subclass(cls: type, platform_runner: type) -> type:
    # `class MyRunner(dl.Runner)` gets the platform's behaviour by inheriting from both.
    return type(cls.__name__, (cls, platform_runner), {"__module__": cls.__module__, "__doc__": cls.__doc__})


class Runner(BaseRunner):
    r"""
    Runner that picks its platform from `config.platform` (`"torch"`, the default).

    Subclass it as you would [`TorchRunner`][danling.runner.TorchRunner]; instances are of a class that derives
    from both your class and the platform's runner.

    Raises:
        ValueError: If `config.platform` names no supported platform.

    Examples:
        >>> import tempfile
        >>> runner = Runner({"log": False, "dir": tempfile.mkdtemp()})
        >>> isinstance(runner, TorchRunner), isinstance(runner, Runner)
        (True, True)
    """

    def __new__(cls, config: Any = None, *args: Any, **kwargs: Any) -> Runner:
        platform = "torch"
        if isinstance(config, Mapping) and config.get("platform") is not None:
            platform = str(config["platform"]).lower()
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}; supported platforms are {', '.join(PLATFORMS)}")
        platform_runner = PLATFORMS[platform]
        if issubclass(cls, platform_runner):
            return super().__new__(cls)
        return super().__new__(_platform_subclass(cls, platform_runner))
