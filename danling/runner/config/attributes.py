"""How a runner's attributes fall through to its config, and how a runner shows itself.

[`BaseRunner`][danling.runner.BaseRunner] reads a name it does not have from its config (`runner.lr` is
`config.lr`) through [`config_attribute`][danling.runner.config.attributes.config_attribute]; only keys already in the
config are read, and a miss names the closest keys. Writes go through
[`write_config_attribute`][danling.runner.config.attributes.write_config_attribute], which says whether a name is the
runner's or the config's.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from functools import cached_property
from types import FunctionType
from typing import Any, Callable

from chanfig import Variable


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


def is_method(cls: type, name: str) -> bool:
    r"""
    Whether `name` is a method of `cls` (a function, static or class method), not data or a property.

    Examples:
        >>> from danling.runner import BaseRunner
        >>> is_method(BaseRunner, "log"), is_method(BaseRunner, "dir"), is_method(BaseRunner, "nothing")
        (True, False, False)
    """
    return isinstance(inspect.getattr_static(cls, name, None), (FunctionType, staticmethod, classmethod))


def is_read_only(cls: type, name: str) -> bool:
    r"""
    Whether `name` is a property of `cls` without a setter.

    Examples:
        >>> from danling.runner import BaseRunner
        >>> is_read_only(BaseRunner, "accum_steps"), is_read_only(BaseRunner, "mode"), is_read_only(BaseRunner, "lr")
        (True, False, False)
    """
    attribute = inspect.getattr_static(cls, name, None)
    return isinstance(attribute, property) and attribute.fset is None


def write_config_attribute(
    runner_type: type,
    instance: Mapping,
    config: Any,
    name: str,
    value: Any,
    check: Callable[[str, Any], None] | None = None,
) -> bool:
    r"""
    What `runner.<name> = value` does for a public `name`, by one precedence: an attribute of the runner (in its
    instance dict `instance` or on its class) stays on the runner; otherwise an existing config key is written
    (through `chanfig.Variable.set` for a variable); otherwise a new runner attribute is created. A method is never
    replaced by a value: its name writes the config key of that name, or raises (a callable assigned to a method's
    name overrides it on this runner, as a patch in a test does).

    Args:
        runner_type: The runner's class (with `_class_attribute_names`, see
            [`RunnerMeta`][danling.runner.utils.RunnerMeta]).
        instance: The runner's instance dict.
        config: The runner's config, or `None` before it has one.
        name: The name assigned.
        value: The value assigned.
        check: Called with `(name, value)` before a config key is written; raises to refuse the value (the runner
            passes [`check_config_value`][danling.runner.config.checks.check_config_value]).

    Returns:
        Whether the config key was written; otherwise the value belongs on the runner.

    Raises:
        AttributeError: If a value that is not callable is assigned to a method's name that is no config key.
        ValueError: If `check` refuses the value (the config is left as it was).

    Examples:
        >>> from danling.runner import BaseRunner, Config
        >>> config = Config({"lr": 0.1})
        >>> write_config_attribute(BaseRunner, {}, config, "lr", 0.2), config.lr
        (True, 0.2)
        >>> write_config_attribute(BaseRunner, {}, config, "model", None)  # a class attribute: the runner's
        False
    """
    if is_method(runner_type, name) and not callable(value):
        if config is None or name not in config:
            raise AttributeError(
                f"cannot assign {value!r} to {name!r}: it is a method of {runner_type.__name__}, not a config key"
            )
    elif name in instance or name in runner_type._class_attribute_names or config is None or name not in config:
        if config is not None and name in config and is_read_only(runner_type, name):
            raise AttributeError(
                f"cannot assign {value!r} to {name!r}: runner.{name} is read-only, derived from config key {name!r}; "
                f"give that key to the runner's constructor (or the command line) instead"
            )
        return False
    if check is not None:
        check(name, value)
    if isinstance(config[name], Variable):
        config[name].set(value)
    else:
        config[name] = value
    return True


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
