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
from .callbacks.trackers import record_callbacks
from .checkpointing import AsyncCheckpointWriter, CheckpointManager
from .checkpointing import files as ckpt
from .checkpointing.rng import SEED_RANGE, biased_seed, seed_of, seed_python_and_numpy
from .checkpointing.runner_state import RUN_LOCATION_KEYS, RunnerCheckpoints, runner_from_checkpoint
from .config import Config, scaling
from .config.attributes import config_attribute, runner_repr, write_config_attribute
from .config.checks import BUILD_TIME_KEYS, check_build_time_write, check_config_value, prepare_config
from .loop import progress
from .loop.data import loader_length
from .loop.progress import ConfigCounter
from .reporting import reporter
from .reporting import results as res
from .reporting.banner import log_banner
from .reporting.log import close_logger, create_logger, create_tensorboard_writer
from .reporting.printing import install_print, restore_print
from .reporting.telemetry import display_values
from .rundir.files import RunDirectoryClaim, check_dir_empty
from .rundir.startup import RunDirGuard, run_dir_of, write_config_file
from .utils import RunnerMeta, RunnerMode, format_result, get_time_str, on_main_process

__all__ = ["BaseRunner", "SEED_RANGE", "RUN_LOCATION_KEYS"]


class BaseRunner(metaclass=RunnerMeta):
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

    Attributes: State:
        inited: Whether `BaseRunner.__init__` has run (config, process group and resume preparation are set up).
        resume_record: What a resume restored: the checkpoint file, the config keys that changed and where training
            continues (`None` for a fresh run); the start banner reads it.

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
    _score_split_warned: bool = False
    _log_position: tuple[int, int | None] = (0, None)  # where the log step being reported is: batch, last batch
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
        self._checkpoints = self._checkpoints_type()
        self.init_distributed()
        self.inited = True
        self._checkpoints.prepare_resume(self)  # auto_resume, then the config of `config.checkpoint`
        # Seed before the subclass's __init__ builds the model, so that its initial weights follow the seed.
        if self.config.get("seed") is not None:
            self.set_seed()
        if self.config.get("deterministic") is True:
            self.set_deterministic()

    def __post_init__(self) -> None:
        r"""
        After the subclass's `__init__` (by the metaclass): environment, set-up, resume; a failed start leaves
        nothing.
        """
        guard = RunDirGuard(run_dir_of(self.config, f"{self.name}-{self.id}", self.timestamp))
        with guard.cleanup_on_failure(self.close, discard=self.is_main_process):
            self.init_environment()
            self._log_run_dir_note()  # a stale lock of the run directory taken over, now that the log exists
            self._checkpoints.log_notes(self)
            self._checkpoints.remove_temporaries(self)  # left by killed saves
            self.setup()
            self.init_resume()
        self._built = True  # from now on, keys read while building cannot be written through the runner

    def init_environment(self) -> None:
        r"""
        Logging (with `metrics.jsonl`), TensorBoard, the progress bar and the experiment trackers (`trackers`), each
        with its built-in callback (seeding and deterministic mode happen in `__init__`, before the model is built).
        """
        if self.config.get("log") is True:
            self.init_logging()
        if self.config.get("tensorboard") is True:
            self.init_tensorboard()
        if ProgressBarCallback.shown(self):
            self._callbacks.add(ProgressBarCallback(), builtin=True)
        for callback in record_callbacks(self.config, self.is_main_process):  # metrics.jsonl, the trackers
            self._callbacks.add(callback, builtin=True)

    def setup(self) -> None:
        r"""
        Hook for framework runners: build dataloaders, move and wrap the model. The base does nothing.
        """

    def init_resume(self) -> None:
        r"""
        Load `config.pretrained` (model weights) and resume from `config.checkpoint` when they are set.
        """
        self._checkpoints.resume(self)

    def init_distributed(self) -> None:
        r"""
        Set up the process group. The base runner runs in a single process.
        """

    @on_main_process
    def init_logging(self) -> None:
        r"""
        Log to stdout and [`log_file`][danling.runner.BaseRunner.log_file] (main process; a logger of this runner
        only).
        """
        if self.logger is not None:
            close_logger(self.logger)
        self.logger = create_logger(f"danling.runner.{self.id}", self.log_file, main_process=True)
        self._callbacks.add(LogCallback(), builtin=True)  # the step lines

    def init_print(self, process: int = 0) -> None:
        r"""Opt in to a `print` that prints only on rank `process` (or with `force=True`); undo with `restore_print`."""
        install_print(enabled=self.rank == process)

    @staticmethod
    def restore_print() -> None:
        r"""
        Put back the built-in `print` replaced by [`init_print`][danling.runner.BaseRunner.init_print].
        """
        restore_print()

    @on_main_process
    def init_tensorboard(self, *args: Any, **kwargs: Any) -> None:
        r"""Create a TensorBoard writer in `dir` (main process only) and its built-in callback."""
        self.writer = create_tensorboard_writer(self.dir, *args, **kwargs)
        self._callbacks.add(TensorBoardCallback(), builtin=True)

    def close(self) -> None:
        r"""Close the TensorBoard writer and the log file handlers and release the run directory's lock."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.logger is not None:
            close_logger(self.logger)
        self._run_dir_claim.release()

    # Environment

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        r"""
        Seed Python's and numpy's generators (framework runners also seed theirs) and return the seed set.

        `seed=None` reads `config.seed` (when that is `None` too, rank 0 draws one and shares it: collective);
        `bias=None` adds the rank, `False` nothing, an int itself (see
        [`biased_seed`][danling.runner.checkpointing.rng.biased_seed]).

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
        Scale `lr` by the linear scaling rule (Goyal et al., 2017): `lr_scale_factor`, else `config.lr_scale_factor`,
        else `batch_size_equivalent / batch_size_base` (stored in `config.lr_scale_factor`; see
        `danling.runner.config.scaling.lr_scale_factor`).
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
        Everything needed to resume, as a `cls` mapping: the config (plain types), the results and every stateful
        part.
        """
        return cls(self._checkpoints.state_dict(self))

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        r"""
        Write [`state_dict`][danling.runner.BaseRunner.state_dict] to `checkpoint_dir/{name}.pth` atomically with a
        verified manifest; a `latest` save also keeps `step-{steps}.pth` (`keep_checkpoints`), `epoch-{epochs}.pth`
        every `save_interval` epochs and `best.pth` when [`is_best`][danling.runner.BaseRunner.is_best]. Only the main
        process writes; callbacks' `on_save_checkpoint` runs once committed. See
        [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] and the checkpoints guide.
        """
        self._checkpoints.save(self, name, epochs, save_best)
        self._checkpoint_saved(name)  # `on_save_checkpoint`, once committed

    def _checkpoint_saved(self, name: str) -> None:
        # After a save: announce it once committed (now, or after a background save), where it was written.
        if not (self.is_main_process or self.checkpoint_manager.collective):
            return
        self.after_checkpoint(partial(self._callbacks.saved, self.checkpoint_manager.path(name)))
        self._callbacks.announce_saves(self)

    def checkpoint_state(self) -> Mapping:
        r"""
        What a checkpoint save writes: [`state_dict`][danling.runner.BaseRunner.state_dict], or, with sharded
        checkpoints (`strategy="fsdp"` on several ranks), the model, optimizer and EMA as sharded state dicts.
        """
        return self._checkpoints.checkpoint_state(self)

    @cached_property
    def async_saver(self) -> AsyncCheckpointWriter | None:
        r"""The background checkpoint writer when `async_save` is on, else `None` (`ValueError` if not a bool)."""
        return self._checkpoints.build_async_saver(self)

    def after_checkpoint(self, callback: Callable[[], None]) -> None:
        r"""Run `callback` once the checkpoint just saved is committed (now, or after a background save)."""
        self._checkpoints.after_commit(self, callback)

    @cached_property
    def checkpoint_manager(self) -> CheckpointManager:
        r"""The [`CheckpointManager`][danling.runner.checkpointing.CheckpointManager] of `checkpoint_dir`."""
        return self._checkpoints.build_manager(self)

    def load_config(self, checkpoint: ckpt.CheckpointLike, overwrite: bool = False, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore a checkpoint's config and progress: keys the user set win (each override logged), keys left at their
        default take the checkpoint's; `overwrite=True` takes every value of the checkpoint. `*args`/`**kwargs` go to
        [`load`][danling.utils.io.load].
        """
        self._checkpoints.load_config(self, checkpoint, overwrite, *args, **kwargs)

    def load_checkpoint(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore model, optimizer, scheduler, results and progress from a checkpoint or its path (anything `--checkpoint`
        accepts); `*args`/`**kwargs` go to [`load`][danling.utils.io.load] (e.g. `map_location`).
        """
        self._checkpoints.load_checkpoint(self, checkpoint, *args, **kwargs)

    def load_state_dict(self, state: Mapping) -> None:
        r"""Load every stateful part of a checkpoint; warn about parts the runner has but the checkpoint lacks."""
        self._checkpoints.load_state_dict(self, state)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: ckpt.CheckpointLike, *args: Any, overrides: Mapping | None = None, **kwargs: Any
    ) -> BaseRunner:
        r"""
        Build a runner from a checkpoint's config and load its state, to evaluate, infer or train on; it gets a
        directory of its own (`overrides={"log": False}` creates none). See
        [`runner_from_checkpoint`][danling.runner.checkpointing.runner_state.runner_from_checkpoint].
        """
        return runner_from_checkpoint(cls, checkpoint, *args, overrides=overrides, **kwargs)

    def load_pretrained(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Load only the model weights of a checkpoint (or a bare state dict); `*args`/`**kwargs` go to
        [`load`][danling.utils.io.load].
        """
        self._checkpoints.load_pretrained(self, checkpoint, *args, **kwargs)

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

    # Results (pure logic in `reporting.results` and `reporting.reporter`)

    def append_result(self, result: Mapping, index: int | None = None) -> None:
        r"""Add a result (`split -> metric -> value`) at `index` (default: the current epoch), merging if present."""
        res.append_result(self.results, result, self.epochs if index is None else index)

    @property
    def current_metrics(self) -> Any:
        r"""`train_metrics` when training, `evaluate_metrics` otherwise, each falling back to `metrics`."""
        specific = self.train_metrics if self._mode == RunnerMode.train else self.evaluate_metrics
        return self.metrics if specific is None else specific

    def get_step_result(self) -> NestedDict:
        r"""
        The meters and the current metrics on this rank's latest batch (DDP training: meters averaged over ranks).
        """
        return reporter.step_result(self._updated_meter_values(), self.current_metrics)

    def _updated_meter_values(self) -> Mapping:
        if self.distributed and self.mode == RunnerMode.train:
            return reporter.reduced_meter_values(self.meters)
        return self.meters.value(skip_empty=True)

    def get_epoch_result(self) -> NestedDict:
        r"""Averages of the meters and the current split's metrics over the epoch (over all processes)."""
        return reporter.epoch_result(self.meters, self.current_metrics)

    @property
    def score_mode(self) -> str:
        r"""`"min"` or `"max"`: `config.score_mode`, else inferred from `score_name` (lower is better for losses)."""
        return res.resolve_score_mode(self.config.get("score_mode"), self.config.get("score_name", "loss"))

    @property
    def best_fn(self) -> Callable:
        r"""`min` or `max`, following `score_mode`; a subclass may override it."""
        return min if self.score_mode == "min" else max

    def check_score_split(self, splits: list[str]) -> None:
        r"""Fail fast (`ValueError`) when `config.score_split` is neither in `splits` nor in the results."""
        reporter.check_score_split(self.config, self.results, splits)

    @property
    def scores(self) -> NestedDict | None:
        r"""Score of each result: `results[index][score_split][score_name]` (`ValueError` for an unknown split)."""
        if not self.results:
            return None
        scores, warning = reporter.checked_scores(
            self.results, self.config, self._score_split_warned, self._unscored_splits()
        )
        if warning is not None:
            self._score_split_warned = True
            reporter.warn_score_split(warning, self.logger)
        return scores

    def _unscored_splits(self) -> list[str]:
        # The train splits, which alone never name the score split (see `checked_scores`).
        try:
            return list(self.train_splits or [])
        except ValueError:  # they cannot be inferred (no datasets)
            return []

    @property
    def best_index(self) -> Any:
        r"""Index of the best result (ties to the latest; NaN/inf never count); 0 without results, else `None`."""
        return res.best_index(self.scores or {}, self.best_fn) if self.results else 0

    @property
    def latest_result(self) -> NestedDict | None:
        r"""Copy of the latest result with its `index`."""
        return res.latest_result(self.results)

    @property
    def best_result(self) -> NestedDict | None:
        r"""Copy of the best result with its `index`."""
        return res.result_at(self.results, self.best_index) if self.results else None

    @property
    def latest_score(self) -> float | None:
        r"""Score of the latest result."""
        scores = self.scores
        return next(reversed(list(scores.values()))) if scores else None

    @property
    def best_score(self) -> float | None:
        r"""Score of the best result."""
        index, scores = self.best_index, self.scores
        return scores[index] if scores and index is not None else None

    @property
    def is_best(self) -> bool:
        r"""Whether the latest result is the best so far (`True` without results, `False` for a NaN/inf score)."""
        return self.best_index == next(reversed(list(self.results.keys()))) if self.results else True

    # Log lines, TensorBoard and results files

    def log(self, message: str, level: int = logging.INFO) -> None:
        r"""Log `message` through the runner's logger (main process only; no-op when logging is off)."""
        if self.logger is not None:
            self.logger.log(level, message)

    def format_result(self, result: Mapping, format_spec: str = ".4f") -> str:
        r"""Format a result for humans: the learning rate reads `3.2e-04` and throughput `samples/s`."""
        return format_result(display_values(result, format_spec), format_spec=format_spec)

    def format_step_result(
        self, result: Mapping, split: str | None, steps: int, length: int | None, format_spec: str = ".4f"
    ) -> str:
        r"""A step log line ([`format_step_line`][danling.runner.reporting.reporter.format_step_line])."""
        return reporter.format_step_line(self.mode, result, split, steps, length, format_spec)

    def format_bar_postfix(self, result: Mapping) -> str:
        r"""What the progress bar shows after a log step: the loss and the throughput."""
        return reporter.bar_postfix(result)

    def format_epoch_result(
        self, result: Mapping, epochs: int | None = None, epoch_end: int | None = None, format_spec: str = ".4f"
    ) -> str:
        r"""Format an epoch log: `"epoch [3/9]"` followed by the result."""
        epochs, epoch_end = (
            self.epochs if epochs is None else epochs,
            self.epoch_end if epoch_end is None else epoch_end,
        )
        return reporter.epoch_prefix(epochs, epoch_end) + self.format_result(result, format_spec)

    def step_log(self, split: str, iteration: int, length: int | None = None) -> NestedDict:
        r"""
        Take the step result of `split` and hand it to the callbacks' `on_log` (log line, TensorBoard, bar); return
        it.
        """
        loader = self.dataloaders.get(split) if length is None else None
        if loader is not None:
            batches = loader_length(loader)  # None for an iterable dataset without a length
            length = None if batches is None else batches - 1
        result = self.get_step_result()
        self._log_position = (iteration, length)
        self._callbacks.dispatch("on_log", self, split, result)
        return result

    @property
    def log_position(self) -> tuple[int, int | None]:
        r"""Where the log step being reported is: its batch in the epoch (from 0) and the epoch's last batch."""
        return self._log_position

    def format_log_step(self, result: Mapping, split: str | None, format_spec: str = ".4f") -> str:
        r"""The line of the log step being reported, at the position `step_log` was given."""
        return self.format_step_result(result, split, *self._log_position, format_spec)

    def print_result(self) -> None:
        r"""Log the latest and the best result; print them (main process) when logging is off."""
        for line in (f"latest result: {self.latest_result}", f"best result: {self.best_result}"):
            if self.logger is not None:
                self.log(line)
            elif self.is_main_process:
                print(line)

    def write_result(self, result: Mapping, split: str, steps: int | None = None) -> None:
        r"""Write every number of `result` to TensorBoard as `{split}/{metric}` at `steps` (default: `steps`)."""
        reporter.write_result(self.writer, result, split, self.steps if steps is None else steps)

    def write_score(self, name: str, score: float, split: str, steps: int) -> None:
        r"""Write one scalar to TensorBoard as `{split}/{name}`."""
        if self.writer is not None:
            self.writer.add_scalar(f"{split}/{name}", score, steps)

    def write_epoch_result(self, result: Mapping) -> None:
        r"""Write every split's epoch result to TensorBoard as `{split}/{metric}`, at the global step."""
        reporter.write_epoch_result(self.writer, result, self.steps)

    def write_hparams(self) -> None:
        r"""Write the hyper-parameters and `hparams/best_{score_name}` to TensorBoard's hparams view."""
        reporter.write_best_hparams(self.writer, self.config, self.best_score, self.steps)

    def announce(self, mode: str) -> None:
        r"""At the start of `train`/`evaluate`: log the start banner and write `config.yaml` (main process only)."""
        if not self.is_main_process:
            return
        log_banner(self, mode)
        if mode == "train" or self.logger is not None or self.writer is not None:
            self.write_config()

    @on_main_process
    def write_config(self) -> str:
        r"""Write `dir/config.yaml` without progress counters (rerun it with `--config`); returns the path."""
        return write_config_file(self.config, self.dir, log=self.logger)

    @on_main_process
    def save_result(self) -> None:
        r"""Write `results.json`, `latest.json` and, when the latest is the best, `best.json` in `dir`."""
        self.result_writer()()

    def result_writer(self) -> Callable[[], None]:
        r"""What `save_result` writes, taken now, as a function that writes it later."""
        header = {"name": self.name, "id": self.id, "timestamp": self.timestamp}
        return reporter.results_writer(header, self.results, self.latest_result, self.dir, self.is_best)

    # Processes

    world_size = property(lambda self: dist_utils.get_world_size(), doc="Number of processes.")
    rank = property(lambda self: dist_utils.get_rank(), doc="Global rank of this process.")
    local_rank = property(lambda self: dist_utils.get_local_rank(), doc="Rank of this process on its node.")
    distributed = property(lambda self: self.world_size > 1, doc="Whether more than one process runs.")
    is_main_process = property(lambda self: self.rank == 0, doc="Whether this is the global main process (rank 0).")
    is_local_main_process = property(lambda self: self.local_rank == 0, doc="Whether this is its node's main process.")

    # Progress: counters live in the config, so checkpoints hold them

    steps = ConfigCounter("steps", "Optimizer steps taken so far.", check=check_config_value)
    epochs = ConfigCounter("epochs", "Index of the current (or last finished) epoch.", check=check_config_value)
    step_begin = ConfigCounter("step_begin", "Step this run started from.", check=check_config_value)
    step_end = ConfigCounter("step_end", "Step to stop at (`None`: no limit).", True, check_config_value)
    epoch_begin = ConfigCounter("epoch_begin", "First epoch of this run.", check=check_config_value)
    epoch_end = ConfigCounter("epoch_end", "Epoch to stop before (`None`: no limit).", True, check_config_value)
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
        Add a [`Callback`][danling.runner.Callback] instance (`TypeError` otherwise): its hooks run after those before
        it; added during an epoch, it gets `on_step_end` from the next epoch on. Also `TorchRunner(config,
        callbacks=[...])`.

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
        elif self.__dict__.get("_built") is True and name not in self.__dict__ and name in BUILD_TIME_KEYS:
            check_build_time_write(name, value)  # raises: a key only building reads, set or not in the config
        elif write_config_attribute(
            type(self), self.__dict__, self.__dict__.get("_config"), name, value, check_config_value
        ):
            self.config_changed(name)
        else:
            object.__setattr__(self, name, value)

    def config_changed(self, name: str) -> None:
        r"""Called after `runner.<name> = value` wrote config key `name`; framework runners re-read what they cache."""

    def __contains__(self, name: str) -> bool:
        return hasattr(type(self), name) or name in self.__dict__ or name in self.config

    def __repr__(self) -> str:
        return runner_repr(self)
