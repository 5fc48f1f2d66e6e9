"""Small runner helpers that need no runner: modes, the metaclass, timestamps, formatting, devices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from functools import wraps
from math import isnan
from typing import Any, Callable, TypeVar

import torch

from .config import get_git_hash

__all__ = [
    "RunnerMode",
    "RunnerMeta",
    "get_time_str",
    "get_git_hash",
    "on_main_process",
    "on_local_main_process",
    "format_result",
    "to_device",
]

T = TypeVar("T")


class RunnerMode(str, Enum):
    r"""
    What a runner is doing: `train`, `evaluate` or `infer`.

    Members compare equal to their string values.

    Examples:
        >>> RunnerMode("train") is RunnerMode.train
        True
        >>> RunnerMode.evaluate == "evaluate"
        True
    """

    train = "train"
    evaluate = "evaluate"
    infer = "infer"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> RunnerMode:
        accepted = ", ".join(repr(mode.value) for mode in cls)
        raise ValueError(f"unknown runner mode {value!r}; accepted modes are {accepted}")


class RunnerMeta(type):
    r"""
    Metaclass that calls `__post_init__` once the outermost `__init__` of a runner has finished.

    This lets a subclass assign `model`, `datasets`, `optimizer`... in its `__init__` and still have the base
    class act on them (seeding, building dataloaders, resuming) afterwards.

    It also takes the `callbacks` keyword of any runner (`TorchRunner(config, callbacks=[...])`) before the
    class is called, so a subclass's `__init__(self, config)` need not accept it, and adds them with
    `add_callback` before `__post_init__`.
    """

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        # Names defined on the class: assignments to them stay on the runner and never fall through to config.
        cls._class_attribute_names = frozenset(dir(cls))

    def __call__(cls, *args: Any, callbacks: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        for callback in () if callbacks is None else callbacks:
            instance.add_callback(callback)
        instance.__post_init__()
        return instance


def get_time_str(time: datetime | None = None) -> str:
    r"""
    Compact timestamp: week of the year, weekday, hour, minute, second and millisecond (`WWDHHMMSSmmm`).

    Args:
        time: Moment to format; defaults to now.

    Returns:
        The timestamp string.

    Examples:
        >>> get_time_str(datetime(2024, 1, 2, 3, 4, 5, 678000))
        '002030405678'
    """
    if time is None:
        time = datetime.now()
    return time.strftime("%U%w%H%M%S%f")[:-3]


def on_main_process(func: Callable[..., T]) -> Callable[..., T | None]:
    r"""
    Run a runner method on the global main process only; other ranks get `None`.

    Use it only for side effects (writing files, building writers), never for methods that run collectives.

    Args:
        func: Method of an object with an `is_main_process` attribute.

    Returns:
        The wrapped method.
    """

    @wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T | None:
        if self.is_main_process:
            return func(self, *args, **kwargs)
        return None

    return wrapper


def on_local_main_process(func: Callable[..., T]) -> Callable[..., T | None]:
    r"""
    Run a runner method on the main process of each node only; other ranks get `None`.

    Args:
        func: Method of an object with an `is_local_main_process` attribute.

    Returns:
        The wrapped method.
    """

    @wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T | None:
        if self.is_local_main_process:
            return func(self, *args, **kwargs)
        return None

    return wrapper


def _format_value(value: Any, format_spec: str) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and isnan(value):
        return "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, format_spec)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_format_value(v, format_spec) for v in value) + "]"
    try:
        return format(value, format_spec)
    except (TypeError, ValueError):
        return str(value)


def format_result(result: Mapping, format_spec: str = ".4f", depth: int = 0) -> str:
    r"""
    Format a (nested) result mapping for humans: scalars on one tab-separated line, sections on their own lines.

    Args:
        result: Mapping of metric names (or split names) to values (or mappings).
        format_spec: Format of numbers.
        depth: Indentation level of nested sections.

    Returns:
        The formatted string.

    Examples:
        >>> format_result({"loss": 0.12345, "acc": 0.9})
        'loss: 0.1235\tacc: 0.9000'
        >>> format_result({"train": {"loss": 1.0}, "val": {"loss": 2.0, "acc": 0.5}})
        'train: loss: 1.0000\nval: loss: 2.0000\tacc: 0.5000'
    """
    scalars = [f"{key}: {_format_value(value, format_spec)}" for key, value in result.items() if not _is_map(value)]
    lines = ["\t".join(scalars)] if scalars else []
    indent = "\t" * depth
    for key, value in result.items():
        if _is_map(value):
            lines.append(f"{indent}{key}: {format_result(value, format_spec, depth + 1)}")
    return "\n".join(lines)


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def to_device(data: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    r"""
    Move every tensor in a (nested) batch to `device`, keeping the container types.

    Args:
        data: Tensor, mapping, list/tuple (named tuples included) or any other object (returned as is).
        device: Target device.
        non_blocking: Copy asynchronously (effective with pinned host memory and a CUDA target).

    Returns:
        The batch on `device`.

    Examples:
        >>> batch = to_device({"input": torch.ones(2), "ids": [torch.zeros(1)], "name": "x"}, "cpu")
        >>> batch["input"].device.type, batch["name"]
        ('cpu', 'x')
    """
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, Mapping):
        return type(data)({key: to_device(value, device, non_blocking) for key, value in data.items()})  # type: ignore
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(to_device(value, device, non_blocking) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(value, device, non_blocking) for value in data)
    return data
