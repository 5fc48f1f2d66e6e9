"""`BaseRunner`: config, experiment directories, results, logging and checkpoints, for any framework."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import cached_property, partial
from typing import Any, Callable
from uuid import UUID, uuid5

from chanfig import FlatDict, NestedDict
from typing_extensions import Self

from danling.metrics import AverageMeters
from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, catch
from danling.utils import distributed as dist_utils
from danling.utils.io import PathStr, load, save

from .callbacks import Callback, CallbackList, LogCallback, ProgressBarCallback, TensorBoardCallback
from .checkpointing import AsyncCheckpointWriter, CheckpointManager
from .checkpointing import files as ckpt
from .checkpointing.rng import SEED_RANGE, biased_seed, seed_of, seed_python_and_numpy
from .checkpointing.runner_state import RUN_LOCATION_KEYS, RunnerCheckpoints, runner_from_checkpoint
from .config import Config, scaling
from .config.attributes import config_attribute, runner_repr, write_config_attribute
from .config.checks import prepare_config
from .loop import progress
from .loop.progress import ConfigCounter
from .reporting.log import close_logger, create_logger, create_tensorboard_writer
from .reporting.printing import install_print, restore_print
from .reporting.reporter import ReportingMixin
from .rundir.files import RunDirectoryClaim, check_dir_empty
from .rundir.startup import RunDirGuard, run_dir_of
from .utils import RunnerMeta, RunnerMode, get_time_str, on_main_process

__all__ = ["BaseRunner", "SEED_RANGE", "RUN_LOCATION_KEYS"]


class BaseRunner(ReportingMixin, metaclass=RunnerMeta):
    r"""
    Base class of DanLing runners: owns the config, progress, results, experiment directory and checkpoints.

    Subclass it (usually through [`TorchRunner`][danling.runner.TorchRunner]), assign `model`, `criterion`,
    `optimizer`, `scheduler` and `datasets.<split>` in `__init__`; [`RunnerMeta`][danling.runner.utils.RunnerMeta]
    then calls `__post_init__`, which sets up logging and TensorBoard and resumes from
    `config.checkpoint` when it is set. `config.seed` is applied in `__init__`, before
    the subclass builds its model, so the initial weights follow it.

    Reading an attribute the runner does not have reads the config (`runner.lr` is `config.lr`); assigning to
    a name that is a config key (and not a runner attribute) writes the config.

    Attributes: ID:
        timestamp: When the runner was created (see [`get_time_str`][danling.runner.utils.get_time_str]).
        name: `config.name`, or `"{experiment_name}-{run_name}"`.
        id: First 8 characters of `experiment_id` and of `run_id`.
        uuid: UUID5 of `run_uuid` and `id`.

    Attributes: Model:
        model: The model.
        criterion: The loss function.
        optimizer: The optimizer.
        scheduler: The learning-rate scheduler.
        ema: An exponential moving average of the model (e.g. `torch.optim.swa_utils.AveragedModel`).

    Attributes: Data:
        datasets: Split name to dataset.
        datasamplers: Split name to sampler.
        dataloaders: Split name to dataloader.
        split: The split being run.

    Attributes: Results:
        results: `index -> split -> metric -> value`.
        meters: Running averages (the loss...).
        metrics: Metrics computed on the predictions.
        writer: TensorBoard writer, when enabled.

    Examples:
        >>> import tempfile
        >>> runner = BaseRunner({"log": False, "dir": tempfile.mkdtemp(), "lr": 0.1})
        >>> runner.lr, runner.mode, runner.is_best
        (0.1, <RunnerMode.train: 'train'>, True)
        >>> runner.append_result({"val": {"loss": 0.5}}, index=0)
        >>> runner.append_result({"val": {"loss": 0.4}}, index=1)
        >>> runner.best_score, runner.best_index
        (0.4, 1)
    """

    timestamp: str
    inited: bool = False

    model: Any = None
    ema: Any = None
    criterion: Any = None
    optimizer: Any = None
    scheduler: Any = None

    split: str | None = None
    _train_splits: list[str] | None = None
    _evaluate_splits: list[str] | None = None
    metrics: Any = None
    train_metrics: Any = None
    evaluate_metrics: Any = None
    logger: logging.Logger | None = None
    writer: Any = None
    resume_record: dict | None = None
    # The checkpoint subsystem this runner builds and delegates to (framework runners extend it).
    _checkpoints_type: type[RunnerCheckpoints] = RunnerCheckpoints

    def __init__(self, config: Config | Mapping) -> None:
        self.timestamp = get_time_str()
        for name in ("datasets", "datasamplers", "dataloaders", "results"):  # unless a subclass set them first
            if name not in self.__dict__:
                setattr(self, name, NestedDict() if name == "results" else FlatDict())
        if "_callbacks" not in self.__dict__:  # a framework runner may have made it, sharing its failure consensus
            self._callbacks = CallbackList()
        self.meters = AverageMeters()
        self._mode = RunnerMode.train
        self._config = prepare_config(config)  # bad values stop the run here, before any directory or process group
        self._config_overrides: list[tuple[str, Any, Any]] = []
        self._run_dir_claim = RunDirectoryClaim()
        self._checkpoints = self._checkpoints_type(self)
        self.init_distributed()
        self.inited = True
        self._checkpoints.prepare_resume()  # auto_resume, then the config of `config.checkpoint`
        # Seed before the subclass's __init__ builds the model, so that its initial weights follow the seed.
        if self.config.get("seed") is not None:
            self.set_seed()
        if self.config.get("deterministic") is True:
            self.set_deterministic()

    def __post_init__(self) -> None:
        r"""
        Called by the metaclass after the subclass's `__init__`: environment, set-up, then resume.

        A failure here (a missing `pretrained` file, a bad config) closes the log and TensorBoard files and
        removes the run directory this start created, so a failed start leaves nothing behind.
        """
        guard = RunDirGuard(run_dir_of(self.config, f"{self.name}-{self.id}", self.timestamp))
        with guard.cleanup_on_failure(self.close, discard=self.is_main_process):
            self.init_environment()
            self._log_run_dir_note()  # a stale lock of the run directory taken over, now that the log exists
            self._checkpoints.log_notes()
            self._checkpoints.remove_temporaries()  # left by killed saves
            self.setup()
            self.init_resume()

    def init_environment(self) -> None:
        r"""
        Logging, TensorBoard and the progress bar, each with its built-in callback (seeding and deterministic mode
        happen in `__init__`, before the model is built).
        """
        if self.config.get("log") is True:
            self.init_logging()
        if self.config.get("tensorboard") is True:
            self.init_tensorboard()
        if ProgressBarCallback.shown(self):
            self._callbacks.add(ProgressBarCallback(), builtin=True)

    def setup(self) -> None:
        r"""
        Hook for framework runners: build dataloaders, move and wrap the model. The base does nothing.
        """

    def init_resume(self) -> None:
        r"""
        Load `config.pretrained` (model weights) and resume from `config.checkpoint` when they are set.
        """
        self._checkpoints.resume()

    def init_distributed(self) -> None:
        r"""
        Set up the process group. The base runner runs in a single process.
        """

    @on_main_process
    def init_logging(self) -> None:
        r"""
        Log to stdout and to [`log_file`][danling.runner.BaseRunner.log_file] (main process only).

        The logger belongs to this runner object (named `danling.runner.<id>` but not registered globally), so two
        runners with the same id write to their own files; the root logger and `print` are left alone.
        """
        if self.logger is not None:
            close_logger(self.logger)
        self.logger = create_logger(f"danling.runner.{self.id}", self.log_file, main_process=True)
        self._callbacks.add(LogCallback(), builtin=True)  # the step lines

    def init_print(self, process: int = 0) -> None:
        r"""
        Opt in to a `print` that only prints on rank `process` (or with `force=True`), for legacy scripts.

        Idempotent; undo it with [`restore_print`][danling.runner.BaseRunner.restore_print].

        Args:
            process: Rank allowed to print.
        """
        install_print(enabled=self.rank == process)

    @staticmethod
    def restore_print() -> None:
        r"""
        Put back the built-in `print` replaced by [`init_print`][danling.runner.BaseRunner.init_print].
        """
        restore_print()

    @on_main_process
    def init_tensorboard(self, *args: Any, **kwargs: Any) -> None:
        r"""
        Create a TensorBoard writer in [`dir`][danling.runner.BaseRunner.dir] (main process only).
        """
        self.writer = create_tensorboard_writer(self.dir, *args, **kwargs)
        self._callbacks.add(TensorBoardCallback(), builtin=True)

    def close(self) -> None:
        r"""
        Flush and close the TensorBoard writer and the log file handlers, and release the run directory's lock.
        """
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.logger is not None:
            close_logger(self.logger)
        self._run_dir_claim.release()

    # Environment

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        r"""
        Seed Python's and numpy's random number generators (framework runners also seed theirs).

        Args:
            seed: Base seed; `None` reads `config.seed`, and when that is `None` too, rank 0 draws one and
                shares it with every rank (then the call is collective).
            bias: Added to the seed: `None` adds the rank (different augmentation per process), `False`
                adds nothing, an integer adds itself.

        Returns:
            The seed actually set.

        Raises:
            ValueError: If the resulting seed is outside `[0, 2**32 - 1]`.

        Examples:
            >>> import tempfile
            >>> runner = BaseRunner({"log": False, "dir": tempfile.mkdtemp()})
            >>> runner.set_seed(42), runner.set_seed(42, bias=10), runner.set_seed(42, bias=False)
            (42, 52, 42)
        """
        seed = biased_seed(seed_of(seed, self.config), bias, self.rank)
        self._seed_generators(seed)
        return seed

    def _seed_generators(self, seed: int) -> None:
        seed_python_and_numpy(seed)

    def set_deterministic(self) -> None:
        r"""
        Ask the framework for deterministic algorithms; framework runners implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not know how to make its framework deterministic")

    def scale_lr(self, lr: float, lr_scale_factor: float | None = None, batch_size_base: int | None = None) -> float:
        r"""
        Scale a learning rate by the linear scaling rule (Goyal et al., 2017).

        Args:
            lr: Learning rate tuned for `batch_size_base`.
            lr_scale_factor: Factor to use; `None` reads `config.lr_scale_factor`, else computes
                `batch_size_equivalent / batch_size_base`.
            batch_size_base: Batch size `lr` was tuned for (else `config.batch_size_base`).

        Returns:
            The scaled learning rate (the factor is stored in `config.lr_scale_factor`).

        Raises:
            ValueError: If neither a factor nor a base batch size is known.
        """
        return lr * scaling.lr_scale_factor(
            self.config, lambda: self.batch_size_equivalent, lr_scale_factor, batch_size_base
        )

    def advance(self, loss: Any, *args: Any, **kwargs: Any) -> None:
        r"""
        Backward `loss` and step the optimizer; framework runners implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement advance()")

    def unwrap(self, model: Any) -> Any:
        r"""
        The model without distributed or compile wrappers (the base runner has none).
        """
        return model

    # Checkpoints

    def state_dict(self, cls: Callable = dict) -> Mapping:
        r"""
        Everything needed to resume: the runner config (plain types), the results and every stateful part.

        Args:
            cls: Mapping type of the returned checkpoint.

        Returns:
            The checkpoint.
        """
        return cls(self._checkpoints.state_dict())

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        r"""
        Write [`state_dict`][danling.runner.BaseRunner.state_dict] to `checkpoint_dir/{name}.pth`, atomically,
        with a manifest holding its SHA-256 (see [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager]).

        A `latest` save also keeps a step-stamped copy `step-{steps}.pth` (the newest `keep_checkpoints`, default
        2, survive); `epoch-{epochs}.pth` is kept every `save_interval` epochs and `best.pth` when the latest
        result is the best. No collective: calling it on the main process only works under `torchrun` (other
        ranks' random states are then not in the checkpoint; the training loop gathers them before it saves).
        Only the main process writes. A failed write raises an `OSError` naming the file and the free space.
        Once committed, the callbacks' `on_save_checkpoint` runs where it was written.

        Args:
            name: File name without extension.
            epochs: Epoch of the checkpoint (defaults to `epochs`).
            save_best: Also write `best.pth` when [`is_best`][danling.runner.BaseRunner.is_best].
        """
        self._checkpoints.save(name, epochs, save_best)
        self._checkpoint_saved(name)  # `on_save_checkpoint`, once committed

    def _checkpoint_saved(self, name: str) -> None:
        # After a save: announce it once committed (now, or after a background save), where it was written.
        if not (self.is_main_process or self.checkpoint_manager.collective):
            return
        self.after_checkpoint(partial(self._callbacks.saved, self.checkpoint_manager.path(name)))
        self._callbacks.announce_saves(self)

    def checkpoint_state(self) -> Mapping:
        r"""What a checkpoint save writes: [`state_dict`][danling.runner.BaseRunner.state_dict] by default."""
        return self.state_dict()

    @cached_property
    def async_saver(self) -> AsyncCheckpointWriter | None:
        r"""
        The background writer of checkpoints when `async_save` is on (else `None`): a save stalls training only
        for a copy of the state to host memory; see
        [`AsyncCheckpointWriter`][danling.runner.checkpointing.AsyncCheckpointWriter].

        Raises:
            ValueError: If `async_save` is not a bool.
        """
        return self._checkpoints.build_async_saver()

    def after_checkpoint(self, callback: Callable[[], None]) -> None:
        r"""
        Run `callback` once the checkpoint just saved is committed: at once, or after a background save
        (`async_save`) commits; it is dropped when that save fails. Keeps the commit order: checkpoint, then what
        describes it.
        """
        self._checkpoints.after_commit(callback)

    @cached_property
    def checkpoint_manager(self) -> CheckpointManager:
        r"""
        The [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] of
        [`checkpoint_dir`][danling.runner.BaseRunner.checkpoint_dir]: naming, verification, retention.
        """
        return self._checkpoints.build_manager()

    def load_config(self, checkpoint: ckpt.CheckpointLike, overwrite: bool = False, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore the config of a checkpoint into this runner's config and continue its progress.

        Keys the user set (a value other than the default, from the command line or code) win over the
        checkpoint's; each such override is logged with both values. Keys left at their default take the
        checkpoint's value (seed, `epoch_end`, `step_end`, score settings, precision, accumulation...).

        Args:
            checkpoint: Checkpoint or its path.
            overwrite: Let every value of the checkpoint replace this config's.
            *args: Passed to [`load`][danling.utils.io.load].
            **kwargs: Passed to [`load`][danling.utils.io.load].

        Raises:
            FileNotFoundError: If the path does not exist.
            ValueError: If `checkpoint` is not a checkpoint.
        """
        self._checkpoints.load_config(checkpoint, overwrite, *args, **kwargs)

    def load_checkpoint(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore the model, optimizer, scheduler, results and progress from a checkpoint.

        Args:
            checkpoint: Checkpoint or its path.
            *args: Passed to [`load`][danling.utils.io.load].
            **kwargs: Passed to [`load`][danling.utils.io.load] (e.g. `map_location`).

        Raises:
            ValueError: If `model` is not set or `checkpoint` is not a checkpoint.
            FileNotFoundError: If the path does not exist.
        """
        self._checkpoints.load_checkpoint(checkpoint, *args, **kwargs)

    def load_state_dict(self, state: Mapping) -> None:
        r"""
        Load every stateful part present in a checkpoint; warn about parts the runner has but the checkpoint lacks.

        Args:
            state: A checkpoint as returned by [`state_dict`][danling.runner.BaseRunner.state_dict].
        """
        self._checkpoints.load_state_dict(state)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: ckpt.CheckpointLike, *args: Any, overrides: Mapping | None = None, **kwargs: Any
    ) -> BaseRunner:
        r"""
        Build a runner from the config stored in a checkpoint and load its state, to evaluate, infer or train on.

        The new runner has a directory of its own (a new launch of the run): evaluating or inferring from it writes
        nothing into the training run's directory, and `overrides={"log": False}` (with `tensorboard` off) keeps it
        from creating a directory at all.

        Args:
            checkpoint: Checkpoint or its path.
            *args: Passed to [`load`][danling.utils.io.load].
            overrides: Config keys that replace the checkpoint's (`{"log": False}`, `{"dir": ...}`).
            **kwargs: Passed to [`load`][danling.utils.io.load].

        Returns:
            The restored runner.
        """
        return runner_from_checkpoint(cls, checkpoint, *args, overrides=overrides, **kwargs)

    def load_pretrained(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Load only the model weights from a checkpoint (or a bare state dict).

        Args:
            checkpoint: Checkpoint or its path.
            *args: Passed to [`load`][danling.utils.io.load].
            **kwargs: Passed to [`load`][danling.utils.io.load].

        Raises:
            ValueError: If `model` is not set or `checkpoint` is not a checkpoint.
            FileNotFoundError: If the path does not exist.
        """
        self._checkpoints.load_pretrained(checkpoint, *args, **kwargs)

    # Identity

    @cached_property
    def name(self) -> str:
        r"""`config.name`, else `"{experiment_name}-{run_name}"`."""
        if self.config.get("name") is not None:
            return self.config["name"]
        return f"{self.config.experiment_name}-{self.config.run_name}"

    @cached_property
    def id(self) -> str:
        r"""First 8 characters of `experiment_id` followed by the first 8 of `run_id`."""
        return f"{str(self.config.experiment_id)[:8]}{str(self.config.run_id)[:8]}"

    @cached_property
    def uuid(self) -> UUID:
        r"""UUID5 of the config's `run_uuid` and `id`."""
        return uuid5(self.config.run_uuid, self.id)

    @property
    def mode(self) -> RunnerMode:
        r"""`train`, `evaluate` or `infer`; a string is converted and an unknown one raises `ValueError`."""
        return self._mode

    @mode.setter
    def mode(self, mode: str | RunnerMode) -> None:
        self._mode = RunnerMode(mode)

    @property
    def config(self) -> Config:
        r"""The run's [`Config`][danling.runner.Config]."""
        return self._config

    # Processes

    world_size = property(lambda self: dist_utils.get_world_size(), doc="Number of processes.")
    rank = property(lambda self: dist_utils.get_rank(), doc="Global rank of this process.")
    local_rank = property(lambda self: dist_utils.get_local_rank(), doc="Rank of this process on its node.")
    distributed = property(lambda self: self.world_size > 1, doc="Whether more than one process runs.")
    is_main_process = property(lambda self: self.rank == 0, doc="Whether this is the global main process (rank 0).")
    is_local_main_process = property(lambda self: self.local_rank == 0, doc="Whether this is its node's main process.")

    # Progress: counters live in the config, so checkpoints hold them

    steps = ConfigCounter("steps", "Optimizer steps taken so far.")
    epochs = ConfigCounter("epochs", "Index of the current (or last finished) epoch.")
    step_begin = ConfigCounter("step_begin", "Step this run started from.")
    step_end = ConfigCounter("step_end", "Step to stop at (`None` for no limit).", optional=True)
    epoch_begin = ConfigCounter("epoch_begin", "First epoch of this run.")
    epoch_end = ConfigCounter("epoch_end", "Epoch to stop before (`None` for no limit).", optional=True)
    accum_steps = property(lambda self: progress.accum_steps_of(self.config), doc="Micro-batches per optimizer step.")

    @property
    def train_splits(self) -> list[str]:
        r"""Splits trained on: set it, or [`infer_train_splits`][danling.runner.loop.progress.infer_train_splits]."""
        if self._train_splits is not None:
            return self._train_splits
        return progress.infer_train_splits(self.config, self.datasets)

    @train_splits.setter
    def train_splits(self, splits: list[str]) -> None:
        self._train_splits = list(splits)

    @property
    def evaluate_splits(self) -> list[str]:
        r"""Set it, or [`infer_evaluate_splits`][danling.runner.loop.progress.infer_evaluate_splits]."""
        if self._evaluate_splits is not None:
            return self._evaluate_splits
        return progress.infer_evaluate_splits(self.config, self.datasets, self.train_splits if self.datasets else ())

    @evaluate_splits.setter
    def evaluate_splits(self, splits: list[str]) -> None:
        self._evaluate_splits = list(splits)

    @property
    def batch_size(self) -> int:
        r"""
        Batch size of the current split's loader, else of the first train/evaluate loader, else of any loader,
        else `config.dataloader.batch_size` ([`infer_batch_size`][danling.runner.loop.progress.infer_batch_size]).
        """
        candidates = [] if self.split is None else [self.split]
        for splits in ("train_splits", "evaluate_splits") if self.dataloaders else ():
            try:
                candidates.extend(getattr(self, splits))
            except ValueError:
                continue
        return progress.infer_batch_size(self.config, self.dataloaders, candidates)

    @property
    def batch_size_equivalent(self) -> int:
        r"""Samples per optimizer step over all processes: `batch_size * world_size * accum_steps`."""
        return self.batch_size * self.world_size * self.accum_steps

    @property
    def total_epochs(self) -> int:
        r"""Epochs in this run, `epoch_end - epoch_begin` (`ValueError` if `epoch_end` is not set)."""
        if self.epoch_end is None:
            raise ValueError("total_epochs needs config.epoch_end, which is not set")
        return self.epoch_end - self.epoch_begin

    @property
    def total_steps(self) -> int:
        r"""Optimizer steps in the whole run ([`infer_total_steps`][danling.runner.loop.progress.infer_total_steps])."""
        try:
            train_splits = self.train_splits
        except ValueError:
            train_splits = []
        return progress.infer_total_steps(self.config, self.datasets, self.dataloaders, train_splits, self.world_size)

    @property
    def progress(self) -> float:
        r"""Fraction of the run done: `steps / total_steps` (also right after a resume)."""
        return self.steps / self.total_steps

    # Directories and files

    @cached_ensure_dir
    def dir(self) -> str:
        r"""
        Directory of the run: `config.dir`, else `project_root/{name}-{id}/{timestamp}`. Created on access.

        The main process that first reads it takes the directory's lock (`run.lock`, see
        [`RunLock`][danling.runner.rundir.lock.RunLock]): a second process writing into the same directory stops with
        [`RunDirectoryLocked`][danling.runner.rundir.lock.RunDirectoryLocked] naming the first.
        """
        path = run_dir_of(self.config, f"{self.name}-{self.id}", self.timestamp)
        self._run_dir_claim.claim(path, self.is_main_process)
        self._log_run_dir_note()
        return path

    def _log_run_dir_note(self) -> None:
        # A takeover of a stale lock, logged once the run's logger exists (the lock is often taken while it is made).
        if self.logger is not None and (note := self._run_dir_claim.pop_note()) is not None:
            self.log(note, logging.WARNING)

    @cached_ensure_parent_dir
    def log_file(self) -> str:
        r"""Log file: `config.log_file`, else `dir/run.log`."""
        if self.config.get("log_file") is not None:
            return self.config["log_file"]
        return os.path.join(self.dir, "run.log")

    @cached_ensure_dir
    def checkpoint_dir(self) -> str:
        r"""Checkpoint directory: `config.checkpoint_dir`, else `dir/{checkpoint_dir_name}`. Created on access."""
        if self.config.get("checkpoint_dir") is not None:
            return self.config["checkpoint_dir"]
        return os.path.join(self.dir, self.config.get("checkpoint_dir_name", "checkpoints"))

    def check_dir(self, action: str = "warn") -> bool:
        r"""Whether `dir` is empty: [`check_dir_empty`][danling.runner.rundir.files.check_dir_empty] of it."""
        return check_dir_empty(self.dir, action)

    @catch(OSError)
    def save(self, obj: Any, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> PathStr:
        r"""[`save`][danling.utils.io.save] on the main process only (unless told otherwise); errors are logged."""
        return save(obj, file, *args, **kwargs) if self.is_main_process or not main_process_only else file

    load = staticmethod(load)

    def dict(self, cls: Callable = dict) -> Mapping:
        r"""The config as a `cls` mapping."""
        return cls(self.config.dict())

    def json(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        r"""Write the config to a JSON file (main process only unless told otherwise)."""
        if not main_process_only or self.is_main_process:
            self.config.json(file, *args, **kwargs)

    def jsons(self, *args: Any, **kwargs: Any) -> str:
        r"""The config as a JSON string."""
        return self.config.jsons(*args, **kwargs)

    def yaml(self, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> None:
        r"""Write the config to a YAML file (main process only unless told otherwise)."""
        if not main_process_only or self.is_main_process:
            self.config.yaml(file, *args, **kwargs)

    def yamls(self, *args: Any, **kwargs: Any) -> str:
        r"""The config as a YAML string."""
        return self.config.yamls(*args, **kwargs)

    @classmethod
    def from_json(cls, file: PathStr, *args: Any, **kwargs: Any) -> Self:
        r"""A runner of the config in a JSON file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_jsons(fp.read(), *args, **kwargs)

    @classmethod
    def from_jsons(cls, string: str, *args: Any, **kwargs: Any) -> Self:
        r"""A runner of the config in a JSON string."""
        return cls(Config.from_jsons(string, *args, **kwargs))

    @classmethod
    def from_yaml(cls, file: PathStr, *args: Any, **kwargs: Any) -> Self:
        r"""A runner of the config in a YAML file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_yamls(fp.read(), *args, **kwargs)

    @classmethod
    def from_yamls(cls, string: str, *args: Any, **kwargs: Any) -> Self:
        r"""A runner of the config in a YAML string."""
        return cls(Config.from_yamls(string, *args, **kwargs))

    # Callbacks

    @property
    def callbacks(self) -> tuple[Any, ...]:
        r"""The callbacks in calling order (read-only): the built-in ones (when on), then those passed or added."""
        return self._callbacks.callbacks

    def add_callback(self, callback: Callback) -> Callback:
        r"""
        Add a [`Callback`][danling.runner.Callback] (an instance): its hooks run after those of the callbacks
        before it; added during an epoch, it gets `on_step_end` from the next epoch on. Callbacks can also be passed
        at construction: `TorchRunner(config, callbacks=[...])`.

        Raises:
            TypeError: If `callback` is a class, or not a callback.

        Examples:
            >>> import tempfile
            >>> from danling.runner import BaseRunner, Callback
            >>> runner = BaseRunner({"log": False, "dir": tempfile.mkdtemp()})
            >>> runner.add_callback(Callback()) is runner.callbacks[-1]
            True
        """
        return self._callbacks.add(callback)

    # Config passthrough

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fall through to existing config keys, nothing else.
        return config_attribute(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Precedence: an attribute of the runner (instance or class) stays on the runner; otherwise an existing
        # config key is written; otherwise a new runner attribute is created (see `write_config_attribute`).
        if name.startswith("_"):  # private state is never a config key
            object.__setattr__(self, name, value)
        elif write_config_attribute(type(self), self.__dict__, self.__dict__.get("_config"), name, value):
            self.config_changed(name)
        else:
            object.__setattr__(self, name, value)

    def config_changed(self, name: str) -> None:
        r"""
        Called after `runner.<name> = value` wrote the config key `name`; framework runners re-read what they
        cache from the config (the clipping settings of `TorchRunner` take effect at the next optimizer step).

        Args:
            name: The config key written.
        """

    def __contains__(self, name: str) -> bool:
        return hasattr(type(self), name) or name in self.__dict__ or name in self.config

    def __repr__(self) -> str:
        return runner_repr(self)
