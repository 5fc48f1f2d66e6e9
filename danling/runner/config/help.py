"""`--help` of a config: every key with its type, default and description, and typed command-line arguments.

Descriptions come from the `Attributes:` sections of the docstrings of the config's class and its bases
(Google style: `key: description`), so the library's keys are described where they are declared and a script's
own config describes its keys the same way.
"""

from __future__ import annotations

import inspect
import re
from argparse import Action, ArgumentTypeError
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Union, get_args, get_origin

import chanfig
from chanfig import ConfigParser

from .parsing import DATALOADER_TYPES, parse_activation_checkpointing, parse_switch

# The start of an `Attributes:` (or `Attributes: Group:`) section, and of one entry in it.
_SECTION = re.compile(r"^Attributes(: [^:]+)?:\s*$")
_ENTRY = re.compile(r"^    ([A-Za-z_][\w.]*): (.*)$")
# A mkdocstrings cross reference (`[`run_uuid`][danling.runner.Config.run_uuid]`) and a backtick.
_CROSS_REFERENCE = re.compile(r"\[`?([^\]`]+)`?\]\[[^\]]*\]")

HELP_EPILOG = (
    "Flags override the file of --config, which overrides the defaults. Dotted flags set nested keys "
    "(--optim.lr 0.01); a flag close to a known key but not one is an error."
)


def key_descriptions(cls: type) -> dict[str, str]:
    r"""
    Descriptions of the keys of a config class, read from the `Attributes:` sections of its docstrings.

    A subclass's description of a key replaces its base's. Cross references and backticks are dropped, and an
    entry spread over several lines becomes one line.

    Args:
        cls: The config class.

    Returns:
        Key (dotted for a nested one) to description.

    Examples:
        >>> class MyConfig:
        ...     '''
        ...     Attributes:
        ...         width: Hidden width of the `network`,
        ...             in units.
        ...     '''
        >>> key_descriptions(MyConfig)
        {'width': 'Hidden width of the network, in units.'}
    """
    descriptions: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not issubclass(chanfig.Config, klass):  # chanfig's own classes describe their attributes, not keys
            descriptions.update(_docstring_entries(klass.__dict__.get("__doc__")))
    return descriptions


def _docstring_entries(docstring: str | None) -> dict[str, str]:
    entries: dict[str, list[str]] = {}
    in_section, current = False, None
    for line in inspect.cleandoc(docstring or "").splitlines():
        if _SECTION.match(line):
            in_section, current = True, None
        elif not line.startswith("    "):  # a blank or unindented line ends the section
            in_section, current = False, None
        elif in_section and (entry := _ENTRY.match(line)) is not None:
            current = None if entry.group(1) in entries else entry.group(1)  # the first description of a key wins
            if current is not None:
                entries[current] = [entry.group(2).strip()]
        elif in_section and current is not None:
            entries[current].append(line.strip())
    return {key: _plain_text(" ".join(words)) for key, words in entries.items()}


def _plain_text(text: str) -> str:
    return _CROSS_REFERENCE.sub(r"\1", text).replace("`", "")


def type_name(annotation: Any) -> str:
    r"""
    A short name of a type annotation: `int`, `int | None`, `list`.

    Examples:
        >>> from typing import Optional
        >>> type_name(int), type_name(Optional[float]), type_name(Optional[list]), type_name(None)
        ('int', 'float | None', 'list | None', 'any')
    """
    if annotation is None:
        return "any"
    if get_origin(annotation) is Union:
        return " | ".join("None" if arg is type(None) else type_name(arg) for arg in get_args(annotation))
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    r"""
    An argparse `type` that reads a string with `parse` and turns its `ValueError` into argparse's own error.

    Examples:
        >>> argument_type(parse_activation_checkpointing)("Block,Attention")
        ['Block', 'Attention']
    """

    def read(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise ArgumentTypeError(str(error)) from None

    return read


# Keys whose command-line value is read by a parser of its own rather than by their declared type.
ARGUMENT_TYPES: dict[str, Callable[[str], Any]] = {
    "activation_checkpointing": argument_type(parse_activation_checkpointing),
}


def switch_type(name: str) -> Callable[[str], bool]:
    r"""
    The argparse `type` of the switch `name`: its string spellings read by
    [`parse_switch`][danling.runner.config.parsing.parse_switch] (`on`, `off`, `yes`... any case).

    Examples:
        >>> switch_type("log")("Off")
        False
    """

    def switch(value: str) -> bool:
        try:
            return parse_switch(name, value)
        except ValueError as error:
            raise ArgumentTypeError(str(error)) from None

    return switch


def describe_arguments(
    parser: ConfigParser, config: Mapping, args: Iterable[str] = (), config_flag: str | None = None
) -> None:
    r"""
    Add to `parser` one argument per key of `config` (and per key its class declares), with its type, default
    and description in the help; `DataLoader` options under `dataloader.` (and under `dataloader.<split>.` when
    `args` sets them) are typed, switches read `on`/`off`/`yes`/`no` too. Keys already in `parser` are left as
    they are.

    Args:
        parser: A chanfig `ConfigParser`.
        config: The config.
        args: The command line (for the per-split `DataLoader` options it sets).
        config_flag: Name of the flag of the config file, shown in the help (`None`: none).

    Examples:
        >>> from danling.runner import Config
        >>> parser = ConfigParser()
        >>> describe_arguments(parser, Config(), ["--dataloader.train.shuffle", "no"])
        >>> vars(parser.parse_args(["--accum_steps", "2", "--dataloader.train.shuffle", "no"]))["accum_steps"]
        2
    """
    descriptions = key_descriptions(type(config))
    if config_flag is not None and f"--{config_flag}" not in parser:
        parser.add_argument(f"--{config_flag}", metavar="FILE", help="YAML or JSON file of values (.yaml/.yml/.json)")
    annotations = _annotations(config)
    values = dict(config.all_items()) if hasattr(config, "all_items") else dict(config)
    for key in [*annotations, *(key for key in values if key not in annotations)]:
        _describe(parser, key, values.get(key), annotations.get(key), descriptions.get(key))
    for key in _dataloader_keys(args):
        option = key.rsplit(".", 1)[1]
        _describe(parser, key, values.get(key), DATALOADER_TYPES[option], descriptions.get(f"dataloader.{option}"))


def _annotations(config: Mapping) -> dict[str, Any]:
    from chanfig.utils import get_cached_annotations

    annotations = dict(get_cached_annotations(config))
    annotations.update({f"dataloader.{option}": kind for option, kind in DATALOADER_TYPES.items()})
    return annotations


def _dataloader_keys(args: Iterable[str]) -> list[str]:
    keys = []
    for arg in args:
        key = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "dataloader" and parts[2] in DATALOADER_TYPES:
            keys.append(key)
    return keys


def _describe(parser: ConfigParser, key: str, value: Any, annotation: Any, description: str | None) -> None:
    if f"--{key}" in parser:
        return
    action: Action | None = parser.add_config_argument(key, value, annotation)
    if action is None:
        return
    kind = annotation if annotation is not None else (type(value) if value is not None else None)
    if key in ARGUMENT_TYPES:
        action.type = ARGUMENT_TYPES[key]
    elif kind is bool or (get_origin(kind) is Union and bool in get_args(kind)):
        action.type = switch_type(key)
    default = "not set" if value is None and key.startswith("dataloader.") else repr(value)
    text = f"{description} " if description else ""
    action.help = f"{text}(type: {type_name(kind)}; default: {default})".replace("%", "%%")
