"""`BaseRunner`: config, experiment directories, results, logging and checkpoints, for any framework."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Callable
from uuid import UUID, uuid5

from chanfig import FlatDict, NestedDict

from danling.metrics import AverageMeters

from .callbacks import CallbackList, CallbacksMixin, LogCallback, ProgressBarCallback, TensorBoardCallback
from .callbacks.trackers import record_callbacks
from .checkpointing import AsyncCheckpointWriter, CheckpointManager
from .checkpointing import files as ckpt
from .checkpointing.rng import SEED_RANGE, biased_seed, seed_of, seed_python_and_numpy
from .checkpointing.runner_state import RUN_LOCATION_KEYS, RunnerCheckpoints, runner_from_checkpoint
from .config import Config, scaling
from .config.attributes import config_attribute, runner_repr, write_config_attribute
from .config.checks import prepare_config
from .distributed.processes import ProcessMixin
from .loop.progress import ProgressMixin
from .reporting.log import close_logger, create_logger, create_tensorboard_writer
from .reporting.printing import install_print, restore_print
from .reporting.reporter import ReportingMixin
from .rundir.files import SerializationMixin
from .rundir.startup import RunDirGuard, run_dir_of
from .utils import RunnerMeta, RunnerMode, get_time_str, on_main_process

__all__ = ["BaseRunner", "SEED_RANGE", "RUN_LOCATION_KEYS"]


class BaseRunner(ReportingMixin, SerializationMixin, ProgressMixin, ProcessMixin, CallbacksMixin, metaclass=RunnerMeta):
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
            self._log_run_dir_lock()  # a stale lock of the run directory taken over, now that the log exists
            self._checkpoints.log_notes()
            self._checkpoints.remove_temporaries()  # left by killed saves
            self.setup()
            self.init_resume()

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
        self._release_run_dir()

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
