"""`Config`: every piece of state needed to reproduce or resume a run, declared as typed keys with defaults.

Parsing flags and checking values live in `danling.runner.config.parsing` (such as
[`check_typos`][danling.runner.config.parsing.check_typos]); its public names are importable from here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union
from uuid import UUID, uuid5

import chanfig

from .help import HELP_EPILOG, describe_arguments
from .parsing import (
    CONFIG_FILE_EXTENSIONS,
    DATALOADER_TYPES,
    DEFAULT_PREEMPTION_SIGNALS,
    FALSE_STRINGS,
    NO_SIGNAL_STRINGS,
    TRUE_STRINGS,
    TYPO_CUTOFF,
    UNCATCHABLE_SIGNALS,
    _missing_config_file,
    _pop_flag,
    _read_config_file,
    check_file_typos,
    check_typos,
    parse_activation_checkpointing,
    parse_preemption_signals,
    parse_profile_steps,
    parse_switch,
)

__all__ = [
    "Config",
    "get_git_hash",
    "checked_value",
    "checked_switches",
    "check_typos",
    "check_file_typos",
    "parse_switch",
    "parse_preemption_signals",
    "parse_profile_steps",
    "parse_activation_checkpointing",
    "DEFAULT_EXPERIMENT_ID",
    "VOLATILE_KEYS",
    "SWITCHES",
    "TYPO_CUTOFF",
    "TRUE_STRINGS",
    "FALSE_STRINGS",
    "DEFAULT_PREEMPTION_SIGNALS",
    "NO_SIGNAL_STRINGS",
    "UNCATCHABLE_SIGNALS",
    "CONFIG_FILE_EXTENSIONS",
    "DATALOADER_TYPES",
]

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
        "resume_schedule",
        "log",
        "log_interval",
        "trackers",
        "save_interval",
        "save_steps",
        "keep_checkpoints",
        "dist_timeout",
        "preemption_signals",
        "preemption_check_steps",
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
        "profile_steps",
        "flops_per_sample",
        "peak_tflops",
        "activation_checkpointing",
    }
)


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
        eval_steps: Also evaluate every this many optimizer steps, and once at the end of training (`None`: at epoch
            ends only). Results are then one record per evaluation, keyed by the global step.
        eval_at_epoch_end: Evaluate at the end of every epoch; `False` needs `eval_steps`.

    Attributes: I/O:
        checkpoint: Checkpoint to resume from (restores the config's progress, the model and every state).
        pretrained: Checkpoint to take the model weights from (nothing else).
        project_root: Root directory of all experiments. Defaults to `"experiments"`.
        checkpoint_dir_name: Name of the checkpoint directory inside the run directory.
        log: Log to stdout and to `run.log`.
        tensorboard: Write TensorBoard event files.
        log_interval: Log every this many batches (`None`: `ceil(batches / 10)` of the longest loader).
        save_interval: Keep an `epoch-N.pth` copy every this many epochs (`None` to keep none).
        save_steps: Also save `latest.pth` every this many optimizer steps (`None`: at epoch ends only).
        keep_checkpoints: Step-stamped `step-N.pth` names kept besides `latest.pth`/`best.pth` (hard links to the
            saved bytes, see the checkpoints guide; 0: none).
        auto_resume: Continue the newest valid checkpoint of the same run (name and id) when launched again.
        resume_schedule: When a resumed run's plan differs from its checkpoint's: `"rebuild"` (default) continues
            the schedule built for the new plan, `"keep"` keeps the checkpoint's.
        preemption_signals: Signals that request a save-and-stop at the next optimizer step (distributed: the next
            check, see `preemption_check_steps`): names (`"SIGTERM"`, `"TERM"`, any case) or numbers, stored as
            names; `[]` (or `None`) catches none. Defaults to `["SIGTERM", "SIGUSR1"]`.
        preemption_check_steps: Distributed, the ranks agree on preemption signals (and on a failure of one rank,
            such as a background save) every this many optimizer steps and at epoch ends, over a CPU (`gloo`)
            channel: no collective or device sync in the other steps. A signal stops the run at the next check,
            up to this many optimizer steps later (about this many times the step time; keep it well within the
            scheduler's warning time). An integer >= 1; defaults to 16. One process checks every step for free.
        async_save: Write checkpoints in the background.
        progress_bar: Show a progress bar (`None`: only on an interactive terminal).
        trackers: Experiment trackers to record the run in, from the main process: `"wandb"` (Weights & Biases),
            `"mlflow"` (an SQLite store in the run directory unless `MLFLOW_TRACKING_URI` is set); each is an
            optional extra (`pip install "danling[wandb]"`). Defaults to `[]`.

    Attributes: Training:
        precision: `"fp16"`, `"bf16"` or `None` (float32).
        accum_steps: Micro-batches per optimizer step.
        max_grad_norm: Clip gradients to this total norm (`None`: no clipping).
        max_grad_value: Clip gradients to this absolute value (`None`: no clipping).
        patience: Stop after this many epochs without improvement (`None`: never).
        loss_normalization: `"batch"` (default: the loss of each micro-batch is a mean, and the step averages them)
            or `"tokens"` (the criterion returns a sum, and each step follows the mean over every counted element
            of the global batch, whatever its split into micro-batches and ranks).
        ignore_index: Target value of the elements `loss_normalization: tokens` does not count. Defaults to -100.
        skip_nonfinite_steps: Skip, on every rank, an optimizer step whose gradients are not finite on any rank,
            instead of stopping at a non-finite loss (one flag read on the host per optimizer step).
        max_nonfinite_steps: Consecutive skipped steps that stop training with `FloatingPointError`. Defaults to 10.
        score_mode: `"min"`, `"max"` or `None` (decide from `score_name`).
        compile: Compile the model with `torch.compile`.
        strategy: Parallelism strategy when distributed: `"ddp"` (replicas) or `"fsdp"` (FSDP2 sharding).
        activation_checkpointing: Recompute each block's activations in the backward pass instead of keeping them:
            `True` for the blocks `fsdp.shard_modules` finds (the model's `_no_split_modules`, else the modules of
            its `nn.ModuleList`s), a list of class names for those classes, `False` (default) for none.

    Attributes: Observability:
        profile_steps: `[begin, end]`: record a `torch.profiler` trace of the optimizer steps `begin` to `end - 1`
            (counted from 0) into `profiles/` of the run directory and log the top operators (`None`: off).
        flops_per_sample: Training FLOPs (forward and backward) of one sample (`None`: counted on the first
            training batch with `torch.utils.flop_counter`).
        peak_tflops: Peak TFLOP/s of one device, for MFU (`None`: from a table of common GPUs; unknown elsewhere).

    Attributes: Environment:
        device: Device to run on (`None`: `cuda:LOCAL_RANK` when available, else CPU).
        backend: `torch.distributed` backend (`None`: `nccl` on CUDA, else `gloo`).
        dist_timeout: Timeout of collectives, in seconds (`None`: PyTorch's default).

    Attributes: Data:
        dataloader.batch_size: Samples per batch of every split (`dataloader.<split>.batch_size` for one split).
        dataloader.shuffle: Shuffle the samples (default: only the training splits).
        dataloader.num_workers: Worker processes loading the batches (0: the main process).
        dataloader.pin_memory: Put the batches in page-locked memory (faster copies to the GPU).
        dataloader.drop_last: Drop the last batch of an epoch when it is smaller than `batch_size`.
        dataloader.timeout: Seconds to wait for a batch from the workers (0: no limit).
        dataloader.prefetch_factor: Batches loaded ahead by each worker.
        dataloader.persistent_workers: Keep the worker processes alive between epochs.
        dataloader.pin_memory_device: Device of the page-locked memory.

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
    eval_steps: Optional[int] = None
    eval_at_epoch_end: bool = True

    precision: Optional[str] = None
    accum_steps: int = 1
    max_grad_norm: Optional[float] = None
    max_grad_value: Optional[float] = None
    patience: Optional[int] = None
    loss_normalization: str = "batch"
    ignore_index: int = -100
    skip_nonfinite_steps: bool = False
    max_nonfinite_steps: int = 10
    compile: bool = False
    strategy: str = "ddp"
    activation_checkpointing: Union[bool, list] = False

    profile_steps: Optional[list] = None
    flops_per_sample: Optional[float] = None
    peak_tflops: Optional[float] = None

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
    resume_schedule: str = "rebuild"
    preemption_signals: Optional[list] = list(DEFAULT_PREEMPTION_SIGNALS)
    preemption_check_steps: int = 16
    async_save: bool = False
    progress_bar: Optional[bool] = None
    trackers: list = []

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
        require it). `default_config` renames the flag (`None` turns it off). A flag, or a key of the file, that is
        not a key of the config but is close to one (`--precison` for `precision`) is an error; a new key far from
        every known one is accepted. A file other than `.yaml`, `.yml` or `.json` is refused before it is opened.
        `--help` prints every key with its type, default and description (see
        [`describe_arguments`][danling.runner.config.help.describe_arguments]) and exits.

        Args:
            args: Command-line arguments (default: `sys.argv[1:]`).
            default_config: Name of the flag that carries a config file (`None`: no such flag).
            no_default_config_action: What to do when that flag is absent: `"ignore"`, `"warn"` or `"raise"`.
            boot: Run `post()` afterwards (chanfig's `boot`).
            strict: Accept only keys the config already has.

        Returns:
            The config itself.

        Raises:
            ValueError: If a flag or a key of the config file looks like a typo of a known key, the config file is
                not YAML or JSON, or `no_default_config_action` is unknown.
            FileNotFoundError: If the config file does not exist.
            RuntimeError: If the config-file flag is absent and `no_default_config_action` is `"raise"`.
            SystemExit: After `--help`, or when argparse rejects a value (`--accum_steps two`).

        Examples:
            >>> Config().parse(["--accum_steps", "2", "--progress_bar", "false"]).accum_steps
            2
            >>> Config().parse(["--precison", "bf16"])
            Traceback (most recent call last):
            ValueError: unknown config key 'precison' (from --precison); did you mean 'precision'? ...
        """
        args = list(sys.argv[1:] if args is None else args)
        parser = self.getattr("parser", None)
        if parser is None:
            parser = chanfig.ConfigParser(epilog=HELP_EPILOG)
            self.setattr("parser", parser)
        describe_arguments(parser, self, args, default_config)
        if "-h" in args or "--help" in args:
            parser.print_help()
            raise SystemExit(0)
        if default_config is not None:
            args, path = _pop_flag(args, default_config)
            if path is not None:
                content = _read_config_file(path)
                check_file_typos(content, self, path)
                self.merge(content)
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
        [`parse_preemption_signals`][danling.runner.config.parsing.parse_preemption_signals]).

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


def checked_value(name: str, value: Any) -> Any:
    r"""
    `value` as the declared key `name` stores it: a switch read by
    [`parse_switch`][danling.runner.config.parsing.parse_switch], `preemption_signals` by
    [`parse_preemption_signals`][danling.runner.config.parsing.parse_preemption_signals]; other keys unchanged.

    Examples:
        >>> checked_value("log", "off"), checked_value("preemption_signals", "TERM"), checked_value("lr", "x")
        (False, ['SIGTERM'], 'x')
    """
    if name in SWITCHES and value is not None and not isinstance(value, bool):
        return parse_switch(name, value)
    if name == "preemption_signals":
        return parse_preemption_signals(value)
    if name == "profile_steps":
        return parse_profile_steps(value)
    if name == "activation_checkpointing":
        return parse_activation_checkpointing(value)
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
