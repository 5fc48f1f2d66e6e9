"""Range checks of a config's values, run when a runner is built: a bad value stops the run before anything starts.

Each rule names a key and what it accepts, so the message of
[`validate_config`][danling.runner.config.checks.validate_config] says both (`dataloader.batch_size` 0 would
otherwise be a `ZeroDivisionError` deep in the loop, a negative `step_end` a scheduler error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from ..callbacks.trackers import check_trackers
from ..checkpointing.replan import check_resume_schedule
from ..loop.tokens import LOSS_NORMALIZATIONS
from . import Config
from .parsing import DATALOADER_TYPES

# Integer keys and the smallest value each accepts; `None` is accepted too, except for those in REQUIRED_KEYS.
INTEGER_MINIMUMS: dict[str, int] = {
    "steps": 0,
    "epochs": 0,
    "step_begin": 0,
    "epoch_begin": 0,
    "step_end": 0,
    "epoch_end": 0,
    "accum_steps": 1,
    "log_interval": 1,
    "save_steps": 1,
    "eval_steps": 1,
    "keep_checkpoints": 0,
    "patience": 0,
    "max_nonfinite_steps": 1,
}
# Number keys that must be positive when set (`None`: off, or the default).
POSITIVE_KEYS = ("max_grad_norm", "max_grad_value", "dist_timeout", "flops_per_sample", "peak_tflops")
# Keys that must hold a value (their defaults are not `None`).
REQUIRED_KEYS = frozenset({"steps", "epochs", "step_begin", "epoch_begin", "accum_steps", "max_nonfinite_steps"})
# Keys that take one of a few values.
CHOICES: dict[str, tuple] = {"loss_normalization": LOSS_NORMALIZATIONS}
# Keys read once, while the runner is built (its loaders, model wrapping, seed, writers): writing one through the
# runner afterwards would change the config, and its checkpoints, without changing the run.
BUILD_TIME_KEYS = frozenset(
    {
        "activation_checkpointing",
        "backend",
        "compile",
        "compile_options",
        "dataloader",
        "deterministic",
        "fsdp",
        "profile_steps",
        "seed",
        "strategy",
        "tensorboard",
        "trackers",
    }
)
# Every key with a rule of its own.
RULED_KEYS = (*INTEGER_MINIMUMS, *POSITIVE_KEYS, *CHOICES, "ignore_index", "resume_schedule")
# `DataLoader` options under `dataloader.` and `dataloader.<split>.` with a range (`None`: DataLoader's default).
DATALOADER_MINIMUMS: dict[str, int] = {"batch_size": 1, "num_workers": 0, "prefetch_factor": 1}


def validate_config(config: Mapping) -> None:
    r"""
    Check the values of a run's config: progress bounds, intervals, clipping and the `dataloader` options.

    Accepted values: `epoch_end`, `step_end`, `epoch_begin`, `step_begin`, `keep_checkpoints` and `patience` are
    integers >= 0; `accum_steps`, `log_interval`, `save_steps`, `eval_steps` and `max_nonfinite_steps` integers
    >= 1; `eval_at_epoch_end: false` only with `eval_steps` set; `loss_normalization` `"batch"` or `"tokens"`;
    `ignore_index` an integer; `max_grad_norm`, `max_grad_value`, `dist_timeout`, `flops_per_sample` and
    `peak_tflops` numbers > 0; `dataloader.batch_size` (and `dataloader.<split>.batch_size`)
    and `prefetch_factor` integers >= 1, `num_workers` an integer >= 0, `timeout` a number >= 0, and
    `shuffle`, `drop_last`, `pin_memory` and `persistent_workers` booleans. Optional keys may be `None`. A float is
    no integer here (`range` and the schedulers reject `1e4`), nor is a boolean a number.

    Args:
        config: The config (a [`Config`][danling.runner.Config] or any mapping).

    Raises:
        ValueError: Naming every key with a bad value, the value and the accepted range.

    Examples:
        >>> validate_config({"epoch_end": 3, "dataloader": {"batch_size": 8, "val": {"batch_size": 16}}})
        >>> validate_config({"step_end": -1, "dataloader": {"batch_size": 0}})
        Traceback (most recent call last):
        ValueError: invalid config values:
          step_end: got -1; accepted values are integers >= 0, or None
          dataloader.batch_size: got 0; accepted values are integers >= 1, or None
    """
    problems = [value_problem(key, config[key]) for key in RULED_KEYS if key in config]
    if config.get("eval_at_epoch_end") is False and config.get("eval_steps") is None:
        problems.append(
            "eval_at_epoch_end: got False without eval_steps (the run would never evaluate); accepted "
            "values are True, or False with eval_steps set"
        )
    dataloader = config.get("dataloader")
    if isinstance(dataloader, Mapping):
        problems += _dataloader_problems(dataloader, "dataloader")
        for split, options in dataloader.items():
            if isinstance(options, Mapping):
                problems += _dataloader_problems(options, f"dataloader.{split}")
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise ValueError("invalid config values:\n  " + "\n  ".join(problems))


def value_problem(key: str, value: Any) -> str | None:
    r"""
    What is wrong with `value` for config key `key` by the rules of that key alone, or `None` (also for a key
    without a rule).

    Examples:
        >>> value_problem("max_grad_norm", -1.0)
        'max_grad_norm: got -1.0; accepted values are numbers > 0, or None'
        >>> value_problem("max_grad_norm", 1.0) is None, value_problem("lr", -1) is None
        (True, True)
    """
    if key in INTEGER_MINIMUMS:
        return _integer_problem(key, value, INTEGER_MINIMUMS[key])
    if key in POSITIVE_KEYS:
        return _positive_problem(key, value)
    if key in CHOICES:
        return _choice_problem(key, value, CHOICES[key])
    if key == "ignore_index" and not _is_integer(value):
        return f"ignore_index: got {value!r}; accepted values are integers"
    if key == "resume_schedule":
        try:
            check_resume_schedule(value)
        except ValueError as error:
            return str(error)
    return None


def check_build_time_write(key: str, value: Any) -> None:
    r"""
    Refuse to write a key of `BUILD_TIME_KEYS` through a runner that is built: it would not change the run.

    Raises:
        AttributeError: Naming the key and where to set it.

    Examples:
        >>> check_build_time_write("max_grad_norm", 1.0)
        >>> try:
        ...     check_build_time_write("compile", True)
        ... except AttributeError as error:
        ...     print(str(error)[:64])
        cannot assign True to 'compile': config key 'compile' is read wh
    """
    if key in BUILD_TIME_KEYS:
        raise AttributeError(
            f"cannot assign {value!r} to {key!r}: config key {key!r} is read while the runner is built, so a later "
            "write would not change this run; give it to the constructor (or the command line), or set it in your "
            "__init__ before the runner finishes building"
        )


def check_config_value(key: str, value: Any) -> None:
    r"""
    Refuse `value` for config key `key` when its rule does not accept it: what `runner.<key> = value` checks before
    writing the config.

    Raises:
        ValueError: Naming the key, the value and the accepted values.

    Examples:
        >>> check_config_value("accum_steps", 0)
        Traceback (most recent call last):
        ValueError: invalid config value: accum_steps: got 0; accepted values are integers >= 1
    """
    problem = value_problem(key, value)
    if problem is not None:
        raise ValueError(f"invalid config value: {problem}")


def _integer_problem(key: str, value: Any, minimum: int, optional: bool | None = None) -> str | None:
    optional = key not in REQUIRED_KEYS if optional is None else optional
    if value is None and optional:
        return None
    if _is_integer(value) and value >= minimum:
        return None
    return f"{key}: got {value!r}; accepted values are integers >= {minimum}{', or None' if optional else ''}"


def _positive_problem(key: str, value: Any) -> str | None:
    if value is None or (_is_number(value) and value > 0):
        return None
    return f"{key}: got {value!r}; accepted values are numbers > 0, or None"


def _choice_problem(key: str, value: Any, choices: tuple) -> str | None:
    if value in choices:
        return None
    return f"{key}: got {value!r}; accepted values are {', '.join(repr(choice) for choice in choices)}"


def _dataloader_problems(options: Mapping, prefix: str) -> list[str | None]:
    problems: list[str | None] = []
    for option, value in options.items():
        key = f"{prefix}.{option}"
        if option in DATALOADER_MINIMUMS:
            problems.append(_integer_problem(key, value, DATALOADER_MINIMUMS[option], optional=True))
        elif option == "timeout" and not (_is_number(value) and value >= 0):
            problems.append(f"{key}: got {value!r}; accepted values are numbers >= 0")
        elif DATALOADER_TYPES.get(option) is bool and not isinstance(value, bool) and value is not None:
            problems.append(f"{key}: got {value!r}; accepted values are True, False, or None")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def prepare_config(config: Config | Mapping) -> Config:
    r"""
    The config a runner is built with: `config` itself, or a [`Config`][danling.runner.Config] of a mapping;
    validated ([`validate_config`][danling.runner.config.checks.validate_config]: a bad value stops the run here,
    before any directory or process group), with a fresh run id when `auto_run_id` is set.

    Raises:
        ValueError: If a value is out of range, or `trackers` names an unknown tracker.
        ImportError: If `trackers` names a tracker that is not installed (with the command that installs it).

    Examples:
        >>> config = prepare_config({"lr": 0.1})
        >>> type(config).__name__, config.lr
        ('Config', 0.1)
    """
    if not isinstance(config, Config):
        config = Config(config)
    validate_config(config)
    check_trackers(config.get("trackers"))  # an unknown or missing tracker stops the run here
    if config.getattr("auto_run_id", False):
        config.refresh_run_id()
    return config
