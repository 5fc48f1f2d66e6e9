"""`Config`: every piece of state needed to reproduce or resume a run."""

from __future__ import annotations

import difflib
import json
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any, Optional
from uuid import UUID, uuid5

import chanfig

DEFAULT_EXPERIMENT_ID = "xxxxxxxxxxxxxxxx"

# Keys that change while a run progresses or only say where/how to write things: they must not change
# the run's identity, so that resuming a run, or re-running it with another log interval, keeps its id.
VOLATILE_KEYS = frozenset(
    {
        "run_id",
        "experiment_id",
        "steps",
        "epochs",
        "iters",
        "step_begin",
        "epoch_begin",
        "results",
        "checkpoint",
        "pretrained",
        "auto_resume",
        "log",
        "log_interval",
        "save_interval",
        "save_steps",
        "keep_checkpoints",
        "dist_timeout",
        "preemption_signals",
        "tensorboard",
        "dir",
        "log_file",
        "checkpoint_dir",
        "checkpoint_dir_name",
        "project_root",
        "progress_bar",
        "debug",
        "config",
        "device",
        "backend",
        "async_save",
    }
)

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


def get_git_hash(short: bool = True) -> str | None:
    r"""
    Hash of the git HEAD of the current working directory, or `None` outside a git repository.

    Args:
        short: Return `git rev-parse --short` (at least 7 characters) instead of the full hash.

    Returns:
        The hash, or `None` when git is missing, the directory is not a repository, or it has no commits.

    Examples:
        >>> get_git_hash() is None or len(get_git_hash()) >= 7
        True
    """
    command = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


class Config(chanfig.Config):
    r"""
    Configuration of a run: hyper-parameters, progress and I/O settings, saved inside every checkpoint.

    A `Config` is a [`chanfig.Config`][chanfig.Config]: keys read as attributes, nested sections appear on
    first assignment (`config.optim.lr = 1e-3`), and `config.parse()` applies command-line overrides
    (`--optim.lr 0.01`). Subclass it with annotated class attributes to declare defaults.

    Attributes: General:
        run_name: Name of this run. Defaults to `"Run"`.
        experiment_name: Name of the experiment. Defaults to `"DanLing"`.
        experiment_id: Short git hash of the working directory's HEAD, or `"xxxxxxxxxxxxxxxx"`.
        run_id: Hex of [`run_uuid`][danling.runner.Config.run_uuid], derived from the config's content.

    Attributes: Reproducibility:
        seed: Random seed; `None` leaves the random number generators alone.
        deterministic: Ask PyTorch for deterministic algorithms.

    Attributes: Progress:
        steps: Optimizer steps taken so far.
        epochs: Index of the current (or last finished) epoch.
        step_begin: First step of this run.
        epoch_begin: First epoch of this run.
        step_end: Stop after this many steps (`None` for no limit).
        epoch_end: Stop before this epoch (`None` for no limit).

    Attributes: Results:
        score_split: Split whose score selects the best result (`None` to infer: `val`, then `validate`...).
        score_name: Metric that scores a result. Defaults to `"loss"` (lower is better).
        score_mode: `"min"`, `"max"`, or `None` (default) to infer the direction from `score_name`: lower is
            better for losses and errors (`loss`, `*_loss`, `mse`, `rmse`, `mae`, `error`, `perplexity`...).

    Attributes: I/O:
        checkpoint: Checkpoint to resume from (restores the config's progress, the model and every state).
        pretrained: Checkpoint to take the model weights from (nothing else).
        project_root: Root directory of all experiments. Defaults to `"experiments"`.
        checkpoint_dir_name: Name of the checkpoint directory inside the run directory.
        log: Log to stdout and to `run.log`.
        tensorboard: Write TensorBoard event files.
        log_interval: Log every this many batches (`None`: about ten lines per epoch).
        save_interval: Keep an `epoch-N.pth` copy every this many epochs (`None` to keep none).
        save_steps: Also save `latest.pth` every this many optimizer steps (`None`: at epoch ends only).
        keep_checkpoints: Step-stamped `step-N.pth` copies kept besides `latest.pth`/`best.pth` (0: none).
        auto_resume: Continue the newest valid checkpoint of the same run (name and id) when launched again.
        preemption_signals: Signals that request a save-and-stop at the next optimizer step: names (`"SIGTERM"`,
            `"TERM"`, any case) or numbers, stored as names; `[]` (or `None`) catches none. Defaults to
            `["SIGTERM", "SIGUSR1"]`.
        async_save: Write checkpoints in the background.
        progress_bar: Show a progress bar (`None`: only on an interactive terminal).

    Attributes: Training:
        precision: `"fp16"`, `"bf16"` or `None` (float32).
        accum_steps: Micro-batches per optimizer step.
        max_grad_norm: Clip gradients to this total norm (`None`: no clipping).
        max_grad_value: Clip gradients to this absolute value (`None`: no clipping).
        patience: Stop after this many epochs without improvement (`None`: never).
        score_mode: `"min"`, `"max"` or `None` (decide from `score_name`).
        compile: Compile the model with `torch.compile`.
        strategy: Parallelism strategy when distributed: `"ddp"` (replicas) or `"fsdp"` (FSDP2 sharding).

    Attributes: Environment:
        device: Device to run on (`None`: `cuda:LOCAL_RANK` when available, else CPU).
        backend: `torch.distributed` backend (`None`: `nccl` on CUDA, else `gloo`).
        dist_timeout: Timeout of collectives, in seconds (`None`: PyTorch's default).

    Examples:
        >>> config = Config({"optim": {"lr": 1e-3}})
        >>> config.run_name, config.score_name, config.optim.lr
        ('Run', 'loss', 0.001)
        >>> Config({"lr": 1}).run_id == Config({"lr": 1}).run_id != Config({"lr": 2}).run_id
        True
    """

    run_name: str = "Run"
    experiment_name: str = "DanLing"

    seed: Optional[int] = None
    deterministic: bool = False

    steps: int = 0
    epochs: int = 0
    step_begin: int = 0
    epoch_begin: int = 0
    step_end: Optional[int] = None
    epoch_end: Optional[int] = None

    score_split: Optional[str] = None
    score_name: str = "loss"
    score_mode: Optional[str] = None

    precision: Optional[str] = None
    accum_steps: int = 1
    max_grad_norm: Optional[float] = None
    max_grad_value: Optional[float] = None
    patience: Optional[int] = None
    compile: bool = False
    strategy: str = "ddp"

    device: Optional[str] = None
    backend: Optional[str] = None
    dist_timeout: Optional[float] = None

    checkpoint: Optional[str] = None
    pretrained: Optional[str] = None

    project_root: str = "experiments"
    checkpoint_dir_name: str = "checkpoints"
    log: bool = True
    tensorboard: bool = False
    log_interval: Optional[int] = None
    save_interval: Optional[int] = None
    save_steps: Optional[int] = None
    keep_checkpoints: Optional[int] = 2
    auto_resume: bool = False
    preemption_signals: Optional[list] = list(DEFAULT_PREEMPTION_SIGNALS)
    async_save: bool = False
    progress_bar: Optional[bool] = None

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)
        if self.get("experiment_id") is None:
            self["experiment_id"] = get_git_hash() or DEFAULT_EXPERIMENT_ID
        if self.get("run_id") is None:
            self.refresh_run_id()

    @classmethod
    def from_dict(cls, obj: Any) -> Any:
        r"""
        Build a config from a mapping; nested sections become plain chanfig configs, not run configs.
        """
        if isinstance(obj, Mapping):
            return cls(obj)
        return super().from_dict(obj)

    def parse(  # type: ignore[override]
        self,
        args: Iterable[str] | None = None,
        default_config: str | None = "config",
        no_default_config_action: str = "ignore",
        boot: bool = True,
        strict: bool = False,
    ) -> Config:
        r"""
        Apply command-line flags (`--optim.lr 0.01`), optionally on top of a config file, then run `post()`.

        `--config exp.yaml` names a YAML or JSON file whose values override the class defaults; the other flags
        override the file. Without the flag, the defaults are used (set `no_default_config_action="raise"` to
        require it). `default_config` renames the flag (`None` turns it off). A flag that is not a key of the config
        but is close to one (`--precison` for `precision`) is an error; a new key far from every known one is
        accepted.

        Args:
            args: Command-line arguments (default: `sys.argv[1:]`).
            default_config: Name of the flag that carries a config file (`None`: no such flag).
            no_default_config_action: What to do when that flag is absent: `"ignore"`, `"warn"` or `"raise"`.
            boot: Run `post()` afterwards (chanfig's `boot`).
            strict: Accept only keys the config already has.

        Returns:
            The config itself.

        Raises:
            ValueError: If a flag looks like a typo of a known key, or `no_default_config_action` is unknown.
            FileNotFoundError: If the config file does not exist.
            RuntimeError: If the config-file flag is absent and `no_default_config_action` is `"raise"`.

        Examples:
            >>> Config().parse(["--accum_steps", "2", "--progress_bar", "false"]).accum_steps
            2
            >>> Config().parse(["--precison", "bf16"])
            Traceback (most recent call last):
            ValueError: unknown config key 'precison' (from --precison); did you mean 'precision'? ...
        """
        args = list(sys.argv[1:] if args is None else args)
        if default_config is not None:
            args, path = _pop_flag(args, default_config)
            if path is not None:
                self.merge(_read_config_file(path))
            else:
                _missing_config_file(default_config, no_default_config_action)
        check_typos(args, self)
        with warnings.catch_warnings():
            # chanfig warns about every unknown flag near a known one; the real typos were stopped just above.
            warnings.filterwarnings("ignore", message="Unrecognized argument", category=RuntimeWarning)
            return super().parse(args, boot=boot, strict=strict)

    def merge(self, *args: Any, overwrite: bool = True, **kwargs: Any) -> Any:
        r"""
        Merge mappings (or files) into the config, reading a switch's string spelling (`"false"`, `"no"`) strictly.

        Raises:
            ValueError: If a switch is given a value that is not a boolean, naming the key and the accepted values.
        """
        args = tuple(checked_switches(arg) if isinstance(arg, Mapping) else arg for arg in args)
        return super().merge(*args, overwrite=overwrite, **checked_switches(kwargs))

    def set(self, name: Any, value: Any, convert_mapping: bool | None = None) -> None:
        r"""
        Set a key; a declared switch (`log`, `compile`, `async_save`...) only takes a boolean or one of its
        spellings, and `preemption_signals` only signals (see
        [`parse_preemption_signals`][danling.runner.config.parse_preemption_signals]).

        Raises:
            ValueError: If a switch is given a value that is not a boolean, or `preemption_signals` something that
                is not a signal, naming the key, the value and the accepted values.

        Examples:
            >>> Config({"log": "false", "compile": 1}).log, Config({"compile": 1}).compile
            (False, True)
            >>> Config({"async_save": "maybe"})
            Traceback (most recent call last):
            ValueError: config key 'async_save' is a switch, but got 'maybe'; accepted values are True/False, 1/0, ...
        """
        if isinstance(name, str):
            value = checked_value(name, value)
        super().set(name, value, convert_mapping)

    def post(self) -> None:
        r"""
        Hook that chanfig runs after [`parse`][chanfig.Config.parse]; recomputes an automatic `run_id`.

        Subclasses overriding it should call `super().post()`.
        """
        super().post()
        if self.getattr("auto_run_id", False):
            self.refresh_run_id()

    def refresh_run_id(self) -> str:
        r"""
        Recompute `run_id` from the current content (needed after changing hyper-parameters by hand).

        Returns:
            The new `run_id`.
        """
        self["run_id"] = self.run_uuid.hex
        self.setattr("auto_run_id", True)
        return self["run_id"]

    @property
    def experiment_uuid(self) -> UUID:
        r"""
        UUID of the experiment, made from `experiment_id`.
        """
        return UUID(bytes=str(self.get("experiment_id", DEFAULT_EXPERIMENT_ID)).ljust(16, "x")[:16].encode())

    @property
    def run_uuid(self) -> UUID:
        r"""
        UUID5 of the config's content, leaving out the keys in `VOLATILE_KEYS`.

        The same hyper-parameters always give the same UUID, whatever the order of the keys.
        """
        from danling.utils.io import to_plain

        content = {key: value for key, value in to_plain(self.dict()).items() if key not in VOLATILE_KEYS}
        return uuid5(self.experiment_uuid, json.dumps(content, sort_keys=True, default=repr))

    def __hash__(self) -> int:
        return int(self.run_uuid.hex, 16)


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
        >>> check_typos(["--lr", "0.1", "--accum_steps", "2"], Config())
        >>> check_typos(["--acum_steps=2"], Config())
        Traceback (most recent call last):
        ValueError: unknown config key 'acum_steps' (from --acum_steps); did you mean 'accum_steps'? ...
    """
    known = set(config.all_keys()) if hasattr(config, "all_keys") else set(config)
    for flag in args:
        if not flag.startswith("--") or flag == "--":
            continue
        key = flag[2:].split("=", 1)[0].replace("-", "_")
        closest = _closest_key(key, known, cutoff)
        if closest is not None:
            raise ValueError(
                f"unknown config key {key!r} (from --{key}); did you mean {closest!r}? "
                f"Declare {key!r} on your Config if it is a new key."
            )


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


def checked_value(name: str, value: Any) -> Any:
    r"""
    `value` as the declared key `name` stores it: a switch read by [`parse_switch`][danling.runner.config.parse_switch],
    `preemption_signals` by [`parse_preemption_signals`][danling.runner.config.parse_preemption_signals]; other keys
    unchanged.

    Examples:
        >>> checked_value("log", "off"), checked_value("preemption_signals", "TERM"), checked_value("lr", "x")
        (False, ['SIGTERM'], 'x')
    """
    if name in SWITCHES and value is not None and not isinstance(value, bool):
        return parse_switch(name, value)
    if name == "preemption_signals":
        return parse_preemption_signals(value)
    return value


def checked_switches(values: Mapping) -> dict:
    r"""
    A copy of `values` with the value of every declared key read by
    [`checked_value`][danling.runner.config.checked_value] (switches, `preemption_signals`).

    Examples:
        >>> checked_switches({"log": "off", "lr": 0.1})
        {'log': False, 'lr': 0.1}
    """
    return {key: checked_value(key, value) if isinstance(key, str) else value for key, value in values.items()}


def _declared_switches(cls: type) -> frozenset[str]:
    names = set()
    for klass in reversed(cls.__mro__):
        for key, annotation in getattr(klass, "__annotations__", {}).items():
            if str(annotation).replace(" ", "") in ("bool", "Optional[bool]"):
                names.add(key)
    return frozenset(names)


# Keys of `Config` declared as booleans (`bool` or `Optional[bool]`).
SWITCHES = _declared_switches(Config)
