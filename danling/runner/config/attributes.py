"""How a runner's attributes fall through to its config, and how a runner shows itself.

[`BaseRunner`][danling.runner.BaseRunner] reads a name it does not have from its config (`runner.lr` is
`config.lr`) through [`config_attribute`][danling.runner.config.attributes.config_attribute]; only keys already in the
config are read, and a miss names the closest keys.
"""

from __future__ import annotations

import difflib
import inspect
from functools import cached_property
from typing import Any


def config_attribute(runner: Any, name: str) -> Any:
    r"""
    What `runner.<name>` reads when normal attribute lookup fails: a property that raised `AttributeError` is
    re-run so that its own message gets through; otherwise the config key `name` when the config has it.

    Raises:
        AttributeError: If `name` is private or no config key, naming up to three close keys.

    Examples:
        >>> import tempfile
        >>> from danling.runner import BaseRunner
        >>> runner = BaseRunner({"log": False, "dir": tempfile.mkdtemp(), "lr": 0.1})
        >>> config_attribute(runner, "lr")
        0.1
        >>> config_attribute(runner, "lrr")
        Traceback (most recent call last):
        AttributeError: 'BaseRunner' object has no attribute or config key 'lrr'; did you mean 'lr'?
    """
    descriptor = inspect.getattr_static(type(runner), name, None)
    if isinstance(descriptor, (property, cached_property)):
        # A property raised AttributeError itself: let its own message through instead of ours.
        return descriptor.__get__(runner, type(runner))
    config = runner.__dict__.get("_config")
    if name.startswith("_"):  # private names are never config keys; fail fast (hasattr/getattr probes)
        raise AttributeError(f"{type(runner).__name__!r} object has no attribute {name!r}")
    if config is not None and name in config:
        return config[name]
    keys = list(config.keys()) if config is not None else []
    close = difflib.get_close_matches(name, keys, n=3)
    hint = f"; did you mean {', '.join(repr(k) for k in close)}?" if close else ""
    raise AttributeError(f"{type(runner).__name__!r} object has no attribute or config key {name!r}{hint}")


def runner_repr(runner: Any) -> str:
    r"""
    `ClassName(...)` with one line per public instance attribute of `runner`.

    Examples:
        >>> class Plain:
        ...     pass
        >>> plain = Plain()
        >>> runner_repr(plain)
        'Plain()'
        >>> plain.lr, plain._hidden = 0.1, 1
        >>> print(runner_repr(plain))
        Plain(
          (lr): 0.1
        )
    """
    lines = [f"  ({key}): {value!r}".replace("\n", "\n  ") for key, value in vars(runner).items() if _shown(key)]
    return f"{type(runner).__name__}(\n" + "\n".join(lines) + "\n)" if lines else f"{type(runner).__name__}()"


def _shown(key: str) -> bool:
    return not key.startswith("_") and key != "inited"
