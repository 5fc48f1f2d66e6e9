"""Parsing and validation of config values: command-line flags, config files, switches and signals.

[`Config`][danling.runner.Config] reads its flags and checks its values with these helpers; they are plain
functions, usable (and testable) without a config.
"""

from __future__ import annotations

import difflib
import os
import signal
import warnings
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

# How close an unknown command-line key must be to a known one (difflib ratio) to be reported as its typo.
TYPO_CUTOFF = 0.8
# Spellings a switch accepts from a string (config files, environment, code), compared case-insensitively.
TRUE_STRINGS = frozenset({"true", "yes", "on", "1"})
FALSE_STRINGS = frozenset({"false", "no", "off", "0"})
# Signals that request a save-and-stop by default (those this platform has).
DEFAULT_PREEMPTION_SIGNALS = tuple(name for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
# Strings that mean "no signal" for `preemption_signals` (from the command line or a config file).
NO_SIGNAL_STRINGS = frozenset({"", "[]", "none", "null"})
UNCATCHABLE_SIGNALS = frozenset(name for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name))
# Extensions `--config` reads; anything else (a pickle would run code when loaded) is refused before it is opened.
CONFIG_FILE_EXTENSIONS = ("yaml", "yml", "json")
# Options of `torch.utils.data.DataLoader` that `dataloader.*` and `dataloader.<split>.*` take, with their types:
# the command line converts them (`--dataloader.drop_last true` is the boolean), and typos of them are caught.
DATALOADER_TYPES: dict[str, type] = {
    "batch_size": int,
    "shuffle": bool,
    "num_workers": int,
    "pin_memory": bool,
    "drop_last": bool,
    "timeout": float,
    "prefetch_factor": int,
    "persistent_workers": bool,
    "pin_memory_device": str,
}


def check_typos(args: Iterable[str], config: Mapping, cutoff: float = TYPO_CUTOFF) -> None:
    r"""
    Raise on a command-line flag that is not a key of `config` but close to one (a typo that would be ignored).

    Args:
        args: Command-line arguments.
        config: The config whose keys (nested ones dotted) are known.
        cutoff: Similarity (0 to 1, `difflib`) from which an unknown key counts as a typo.

    Raises:
        ValueError: Naming the flag and the closest known key.

    Examples:
        >>> from danling.runner import Config
        >>> check_typos(["--lr", "0.1", "--accum_steps", "2"], Config())
        >>> check_typos(["--acum_steps=2"], Config())
        Traceback (most recent call last):
        ValueError: unknown config key 'acum_steps' (from --acum_steps); did you mean 'accum_steps'? ...
    """
    known = known_keys(config)
    for flag in args:
        if flag == "--":
            break
        if not flag.startswith("--"):
            continue
        key = flag[2:].split("=", 1)[0].replace("-", "_")
        closest = _closest_key(key, known, cutoff)
        if closest is not None:
            raise ValueError(
                f"unknown config key {key!r} (from --{key}); did you mean {closest!r}? "
                f"Declare {key!r} on your Config if it is a new key."
            )


def check_file_typos(content: Mapping, config: Mapping, path: str, cutoff: float = TYPO_CUTOFF) -> None:
    r"""
    Raise on a key of a config file that is not a key of `config` but close to one, as
    [`check_typos`][danling.runner.config.parsing.check_typos] does for command-line flags.

    Nested sections are walked level by level: `optim: {lrr: 0.1}` is `optim.lrr`, close to `optim.lr`, while
    `optim: {weight_decay: 0.01}` (far from every key of `optim`) is a new key, left to the builder to check.

    Args:
        content: What the file holds.
        config: The config the file is merged into (before merging).
        path: The file, for the message.
        cutoff: Similarity (0 to 1, `difflib`) from which an unknown key counts as a typo.

    Raises:
        ValueError: Naming the key, the file and the closest known key.

    Examples:
        >>> from danling.runner import Config
        >>> check_file_typos({"epoch_end": 3, "optim": {"weight_decay": 0.1}}, Config({"optim": {"lr": 1}}), "a.yaml")
        >>> check_file_typos({"epochs_end": 3}, Config(), "exp.yaml")
        Traceback (most recent call last):
        ValueError: unknown config key 'epochs_end' in config file 'exp.yaml'; did you mean 'epoch_end'? ...
    """
    known = known_keys(config)
    for key in _dotted_keys(content):
        closest = _closest_key(key, known, cutoff)
        if closest is not None:
            raise ValueError(
                f"unknown config key {key!r} in config file {path!r}; did you mean {closest!r}? "
                f"Declare {key!r} on your Config if it is a new key."
            )


def known_keys(config: Mapping) -> set[str]:
    r"""
    The keys a file or a flag may set without being taken for a typo: the config's keys (nested ones dotted), the
    keys its class declares (annotations, even without a default), and the `DataLoader` options under
    `dataloader.`.

    Examples:
        >>> from danling.runner import Config
        >>> known = known_keys(Config({"optim": {"lr": 0.1}}))
        >>> {"optim.lr", "epoch_end", "dataloader.drop_last"} <= known
        True
    """
    known = set(config.all_keys()) if hasattr(config, "all_keys") else {str(key) for key in config}
    for klass in type(config).__mro__:
        known.update(getattr(klass, "__annotations__", {}))
    known.update(f"dataloader.{option}" for option in DATALOADER_TYPES)
    return known


def _dotted_keys(content: Mapping, prefix: str = "") -> list[str]:
    # Leaves of a nested mapping as dotted keys; an empty section is a key of its own.
    keys: list[str] = []
    for key, value in content.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(_dotted_keys(value, f"{name}."))
        else:
            keys.append(name)
    return keys


def _closest_key(key: str, known: set[str], cutoff: float) -> str | None:
    # Walk the dotted key level by level: the first part that is not known is compared with its siblings only,
    # so `--optim.lrr` suggests `optim.lr` while `--dataloader.val.batch_size` (a new section) is accepted.
    prefixes = {".".join(name.split(".")[: i + 1]) for name in known for i in range(name.count(".") + 1)}
    parts = key.split(".")
    for depth in range(len(parts)):
        path = ".".join(parts[: depth + 1])
        if path in prefixes:
            continue
        parent = ".".join(parts[:depth])
        siblings = {
            name.split(".")[depth]
            for name in prefixes
            if name.count(".") == depth and (depth == 0 or name.startswith(parent + "."))
        }
        close = difflib.get_close_matches(parts[depth], siblings, n=1, cutoff=cutoff)
        if not close:
            return None
        return ".".join([*parts[:depth], close[0], *parts[depth + 1 :]])
    return None


def _pop_flag(args: list[str], name: str) -> tuple[list[str], str | None]:
    # Remove `--name value` or `--name=value` from args; return the rest and the value.
    rest: list[str] = []
    value = None
    iterator = iter(args)
    for arg in iterator:
        flag = arg.replace("-", "_") if arg.startswith("--") else arg
        if flag == f"__{name}":
            value = next(iterator, None)
        elif flag.startswith(f"__{name}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def _read_config_file(path: str) -> Mapping:
    from danling.utils.io import load

    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in CONFIG_FILE_EXTENSIONS:
        # Checked before the file is opened: loading a pickle (or a torch file) runs whatever code it holds.
        raise ValueError(
            f"config file {path!r} has the extension {extension!r}; --config reads YAML or JSON only, with the "
            f"extensions {', '.join('.' + name for name in CONFIG_FILE_EXTENSIONS)}"
        )
    content = load(path)
    if not isinstance(content, Mapping):
        raise ValueError(f"config file {path!r} holds a {type(content).__name__}, not a mapping of keys to values")
    return content


def _missing_config_file(name: str, action: str) -> None:
    message = f"no --{name} file given; using the defaults"
    if action == "raise":
        raise RuntimeError(f"--{name} is required: pass --{name} path/to/config.yaml")
    if action == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    elif action != "ignore":
        raise ValueError(f"no_default_config_action must be one of 'ignore', 'warn', 'raise', but got {action!r}")


def parse_switch(name: str, value: Any) -> bool:
    r"""
    The boolean a switch's value stands for: `True`/`False`, `1`/`0`, or a string among `TRUE_STRINGS` and
    `FALSE_STRINGS` (any case). Anything else is an error rather than Python's truthiness (`bool("no")` is `True`).

    Args:
        name: The key, for the error message.
        value: The value given.

    Returns:
        The boolean.

    Raises:
        ValueError: If `value` is no spelling of a boolean.

    Examples:
        >>> parse_switch("log", "Off"), parse_switch("log", 1)
        (False, True)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_STRINGS:
            return True
        if lowered in FALSE_STRINGS:
            return False
    raise ValueError(
        f"config key {name!r} is a switch, but got {value!r}; accepted values are True/False, 1/0, or the strings "
        f"{'/'.join(sorted(TRUE_STRINGS))} and {'/'.join(sorted(FALSE_STRINGS))} (any case)"
    )


def parse_preemption_signals(value: Any) -> list[str]:
    r"""
    The signals `preemption_signals` stands for, as canonical names.

    Accepts a list of names (`"SIGTERM"`, `"TERM"`, `"usr1"`) and numbers (`15`, `"15"`), one name or number, or a
    comma-separated string (`"TERM,USR1"`, from the command line); `None`, `[]`, `""`, `"none"` or `"[]"` mean
    none. Repeated signals are kept once.

    Raises:
        ValueError: On a value that is not a signal of this platform, or one that cannot be caught (`SIGKILL`,
            `SIGSTOP`), naming it and the accepted values.

    Examples:
        >>> parse_preemption_signals(["TERM", 10, "sigusr1"]), parse_preemption_signals("none")
        (['SIGTERM', 'SIGUSR1'], [])
        >>> parse_preemption_signals(["SIGTERM", "SIGFOO"])
        Traceback (most recent call last):
        ValueError: config key 'preemption_signals' names 'SIGFOO', which is not a signal that can be caught here; ...
    """
    if value is None or value is False:
        return []
    if isinstance(value, (str, int)) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        value = [value]
    names: list[str] = []
    for item in value:
        words = item.replace(",", " ").split() if isinstance(item, str) else [item]
        for word in words:
            if isinstance(word, str) and word.lower() in NO_SIGNAL_STRINGS:
                continue  # "[]" or "none" from the command line
            name = _signal_name(word)
            if name not in names:
                names.append(name)
    return names


def _signal_name(item: Any) -> str:
    name = None
    if isinstance(item, str) and item.strip().lstrip("-").isdigit():
        item = int(item)
    if isinstance(item, int) and not isinstance(item, bool):
        with suppress(ValueError):
            name = signal.Signals(item).name
    elif isinstance(item, str):
        upper = item.strip().upper()
        upper = upper if upper.startswith("SIG") else "SIG" + upper
        name = upper if isinstance(getattr(signal, upper, None), signal.Signals) else None
    if name is None or name in UNCATCHABLE_SIGNALS:
        raise ValueError(
            f"config key 'preemption_signals' names {item!r}, which is not a signal that can be caught here; "
            "accepted values are signal names ('SIGTERM', 'TERM', 'SIGUSR1'...) or numbers (15...), a list of them, "
            "or [] / None for none"
        )
    return name


def parse_profile_steps(value: Any) -> list[int] | None:
    r"""
    `profile_steps` as `[begin, end]`: two integers with `0 <= begin < end` (strings of digits, as the command line
    gives them, are read as integers), or `None`.

    Raises:
        ValueError: Naming the value and the accepted ones.

    Examples:
        >>> parse_profile_steps([10, 13]), parse_profile_steps(["2", "5"]), parse_profile_steps(None)
        ([10, 13], [2, 5], None)
        >>> parse_profile_steps([5, 5])
        Traceback (most recent call last):
        ValueError: config key 'profile_steps' is [5, 5]; accepted values are [begin, end], two integers with ...
    """
    if value is None:
        return None
    steps: list[int | None] = []
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        steps = [_step_number(item) for item in value]
    if len(steps) != 2 or steps[0] is None or steps[1] is None or not 0 <= steps[0] < steps[1]:
        raise ValueError(
            f"config key 'profile_steps' is {value!r}; accepted values are [begin, end], two integers with "
            "0 <= begin < end (the optimizer steps begin to end - 1 are recorded, counted from 0), or None"
        )
    return [steps[0], steps[1]]


def _step_number(item: Any) -> int | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    if isinstance(item, str) and item.strip().isdigit():
        return int(item)
    return None


def parse_activation_checkpointing(value: Any) -> bool | list[str]:
    r"""
    `activation_checkpointing` as a switch or a list of class names.

    Accepted: `None` or `False` (off), `True` (the blocks `fsdp.shard_modules` finds), a non-empty list of class
    names (strings) or classes (stored by their names), a switch's spelling (`"true"`, `"off"`...), or a string of
    comma-separated class names (`"Block,Attention"`, from the command line).

    Raises:
        ValueError: Naming the value and the accepted ones.

    Examples:
        >>> parse_activation_checkpointing("on"), parse_activation_checkpointing(None)
        (True, False)
        >>> parse_activation_checkpointing("Block, Attention"), parse_activation_checkpointing([dict])
        (['Block', 'Attention'], ['dict'])
        >>> parse_activation_checkpointing([])
        Traceback (most recent call last):
        ValueError: config key 'activation_checkpointing' is []; accepted values are True/False (or None), a ...
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_STRINGS or lowered in FALSE_STRINGS:
            return lowered in TRUE_STRINGS
        value = value.split(",")
    names: list[str | None] = []
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        names = [_class_name(item) for item in value]
    if not names or None in names:
        raise ValueError(
            f"config key 'activation_checkpointing' is {value!r}; accepted values are True/False (or None), a "
            "non-empty list of class names or module classes, or a string of comma-separated class names"
        )
    return names  # type: ignore[return-value]


def _class_name(item: Any) -> str | None:
    if isinstance(item, type):
        return item.__name__
    if isinstance(item, str) and item.strip().isidentifier():
        return item.strip()
    return None
