"""`BaseRunner`: config, experiment directories, results, logging and checkpoints, for any framework."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import random
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Callable
from uuid import UUID, uuid5
from warnings import warn

from chanfig import FlatDict, NestedDict, Variable

from danling.metrics import AverageMeters
from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, catch
from danling.utils import distributed as dist_utils
from danling.utils.io import PathStr, load, save, to_plain

from . import checkpoints as ckpt
from . import results as res
from .config import Config
from .log import close_logger, create_tensorboard_writer, setup_logger
from .printing import install_print, restore_print
from .progress import ProgressMixin
from .utils import RunnerMeta, RunnerMode, format_result, get_time_str, on_main_process

CHECK_DIR_ACTIONS = ("warn", "raise", "ignore")
SEED_RANGE = (0, 2**32 - 1)


class BaseRunner(ProgressMixin, metaclass=RunnerMeta):
    r"""
    Base class of DanLing runners: owns the config, progress, results, experiment directory and checkpoints.

    Subclass it (usually through [`TorchRunner`][danling.runner.TorchRunner]), assign `model`, `criterion`,
    `optimizer`, `scheduler` and `datasets.<split>` in `__init__`; [`RunnerMeta`][danling.runner.utils.RunnerMeta]
    then calls `__post_init__`, which seeds, sets up logging and TensorBoard and resumes from
    `config.checkpoint` when it is set.

    Reading an attribute the runner does not have reads the config (`runner.lr` is `config.lr`); assigning to
    a name that is a config key (and not a runner attribute) writes the config.

    Attributes: ID:
        timestamp: When the runner was created (see [`get_time_str`][danling.runner.utils.get_time_str]).
        name: `config.name`, or `"{experiment_name}-{run_name}"`.
        id: First 8 characters of `experiment_id` and of `run_id`.
        uuid: UUID5 of `run_uuid` and `id`.

    Attributes: Model:
        model: The model. criterion: The loss function. optimizer: The optimizer. scheduler: The LR scheduler.

    Attributes: Data:
        datasets: Split name to dataset. datasamplers: Split name to sampler.
        dataloaders: Split name to dataloader. split: The split being run.

    Attributes: Results:
        results: `index -> split -> metric -> value`. meters: Running averages (loss...).
        metrics: Metrics computed on predictions. writer: TensorBoard writer when enabled.

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

    def __init__(self, config: Config | Mapping) -> None:
        self.timestamp = get_time_str()
        for name in ("datasets", "datasamplers", "dataloaders"):
            if name not in self.__dict__:
                setattr(self, name, FlatDict())
        if "results" not in self.__dict__:
            self.results = NestedDict()
        self.meters = AverageMeters()
        self._mode = RunnerMode.train
        self._checkpoint: Mapping | None = None
        if not isinstance(config, Config):
            config = Config(config)
        if config.getattr("auto_run_id", False):
            config.refresh_run_id()
        self._config = config
        self.init_distributed()
        self.inited = True
        if self.config.get("checkpoint") is not None:
            self._checkpoint = ckpt.read_checkpoint(self.config["checkpoint"], weights_only=True)
            self.load_config(self._checkpoint)

    def __post_init__(self) -> None:
        r"""
        Called by the metaclass after the subclass's `__init__`: environment, set-up, then resume.
        """
        self.init_environment()
        self.setup()
        self.init_resume()

    def init_environment(self) -> None:
        r"""
        Seed (when `config.seed` is set), deterministic mode, logging and TensorBoard.
        """
        if self.config.get("seed") is not None:
            self.set_seed()
        if self.config.get("deterministic") is True:
            self.set_deterministic()
        if self.config.get("log") is True:
            self.init_logging()
        if self.config.get("tensorboard") is True:
            self.init_tensorboard()

    def setup(self) -> None:
        r"""
        Hook for framework runners: build dataloaders, move and wrap the model. The base does nothing.
        """

    def init_resume(self) -> None:
        r"""
        Load `config.pretrained` (model weights) and resume from `config.checkpoint` when they are set.
        """
        if self.config.get("pretrained") is not None and self._checkpoint is None:
            self.load_pretrained(self.config["pretrained"])
        if self._checkpoint is not None:
            checkpoint, self._checkpoint = self._checkpoint, None
            if self.model is not None:
                self.load_checkpoint(checkpoint)

    def init_distributed(self) -> None:
        r"""
        Set up the process group. The base runner runs in a single process.
        """

    @on_main_process
    def init_logging(self) -> None:
        r"""
        Log to stdout and to [`log_file`][danling.runner.BaseRunner.log_file] (main process only).

        The logger is the runner's own (`danling.runner.<id>`): the root logger and `print` are left alone.
        """
        self.logger = setup_logger(f"danling.runner.{self.id}", self.log_file, main_process=True)

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

    def close(self) -> None:
        r"""
        Flush and close the TensorBoard writer and the log file handlers.
        """
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.logger is not None:
            close_logger(self.logger)

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
        if seed is None:
            seed = self.config.get("seed")
        if seed is None:
            # Drawn on rank 0 and shared, so that every rank agrees (a collective in that case).
            seed = dist_utils.broadcast_object(random.SystemRandom().randint(0, 2**31 - 1))
            self.config["seed"] = seed
        if bias is None:
            bias = self.rank
        elif bias is False:
            bias = 0
        seed = int(seed) + int(bias)
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], but got {seed}")
        self._seed_generators(seed)
        return seed

    def _seed_generators(self, seed: int) -> None:
        random.seed(seed)
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a dependency
            return
        np.random.seed(seed)

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
        if lr_scale_factor is None and batch_size_base is None:
            lr_scale_factor = self.config.get("lr_scale_factor")
        if lr_scale_factor is None:
            if batch_size_base is None:
                batch_size_base = self.config.get("batch_size_base")
            if batch_size_base is None:
                raise ValueError("scale_lr needs lr_scale_factor or batch_size_base (argument or config key)")
            lr_scale_factor = self.batch_size_equivalent / batch_size_base
        elif batch_size_base is not None:
            warn("batch_size_base is ignored when lr_scale_factor is given", RuntimeWarning, stacklevel=2)
        self.config["lr_scale_factor"] = lr_scale_factor
        return lr * lr_scale_factor

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
        state: dict[str, Any] = {ckpt.RUNNER: to_plain(self.config.dict()), ckpt.RESULTS: to_plain(self.results)}
        if self.model is not None:
            state[ckpt.MODEL] = self.unwrap(self.model).state_dict()
        for key, part in ((ckpt.OPTIMIZER, self.optimizer), (ckpt.SCHEDULER, self.scheduler)):
            if part is not None and hasattr(part, "state_dict"):
                state[key] = part.state_dict()
        return cls(state)

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        r"""
        Write [`state_dict`][danling.runner.BaseRunner.state_dict] to `checkpoint_dir/{name}.pth`, atomically.

        Also keeps `epoch-{epochs}.pth` every `save_interval` epochs and `best.pth` when the latest result is
        the best. Call it on all processes (the state may need a collective); only the main process writes.
        A failed write raises.

        Args:
            name: File name without extension.
            epochs: Epoch of the checkpoint (defaults to `epochs`).
            save_best: Also write `best.pth` when [`is_best`][danling.runner.BaseRunner.is_best].
        """
        state = self.state_dict()
        if not self.is_main_process:
            return
        epochs = self.epochs if epochs is None else epochs
        best = save_best and self.is_best
        ckpt.write_checkpoint(state, self.checkpoint_dir, name, epochs, self.config.get("save_interval"), best)

    def load_config(self, checkpoint: ckpt.CheckpointLike, overwrite: bool = False, *args: Any, **kwargs: Any) -> None:
        r"""
        Merge the config of a checkpoint into this runner's config and continue its progress.

        Args:
            checkpoint: Checkpoint or its path.
            overwrite: Let the checkpoint's values replace keys this config already has.
            *args: Passed to [`load`][danling.utils.io.load].
            **kwargs: Passed to [`load`][danling.utils.io.load].

        Raises:
            FileNotFoundError: If the path does not exist.
            ValueError: If `checkpoint` is not a checkpoint.
        """
        loaded = ckpt.read_checkpoint(checkpoint, *args, **kwargs)
        config = dict(loaded.get(ckpt.RUNNER, loaded))
        config.pop("checkpoint", None)
        self.config.merge(config, overwrite=overwrite)
        if self.config.getattr("auto_run_id", False):
            self.config.refresh_run_id()
        self.steps = self.step_begin = int(config.get("steps", 0))
        self.epochs = int(config.get("epochs", 0))
        self.epoch_begin = self.epochs + 1

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
        if self.model is None:
            raise ValueError("cannot load a checkpoint before the model is set: assign self.model first")
        loaded = ckpt.read_checkpoint(checkpoint, *args, **kwargs)
        self.load_state_dict(loaded)
        if ckpt.RUNNER in loaded:
            self.load_config(loaded)
        if not isinstance(checkpoint, Mapping):
            self.config["checkpoint"] = os.fsdecode(checkpoint)

    def load_state_dict(self, state: Mapping) -> None:
        r"""
        Load every stateful part present in a checkpoint; warn about parts the runner has but the checkpoint lacks.

        Args:
            state: A checkpoint as returned by [`state_dict`][danling.runner.BaseRunner.state_dict].
        """
        self.unwrap(self.model).load_state_dict(ckpt.extract_model_state(state))
        for key, part in ((ckpt.OPTIMIZER, self.optimizer), (ckpt.SCHEDULER, self.scheduler)):
            if part is None:
                continue
            if key in state:
                part.load_state_dict(state[key])
            else:
                warn(f"{key} state is not in the checkpoint; {key} starts fresh", RuntimeWarning, stacklevel=3)
        if ckpt.RESULTS in state:
            self.results = NestedDict({index: NestedDict(result) for index, result in state[ckpt.RESULTS].items()})

    @classmethod
    def from_checkpoint(cls, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> BaseRunner:
        r"""
        Build a runner from the config stored in a checkpoint and load its state.

        Args:
            checkpoint: Checkpoint or its path.
            *args: Passed to [`load`][danling.utils.io.load].
            **kwargs: Passed to [`load`][danling.utils.io.load].

        Returns:
            The restored runner.
        """
        loaded = ckpt.read_checkpoint(checkpoint, *args, **kwargs)
        if ckpt.RUNNER not in loaded:
            raise ValueError(f"checkpoint has no {ckpt.RUNNER!r} config (keys: {list(loaded.keys())})")
        config = dict(loaded[ckpt.RUNNER])
        config.pop("checkpoint", None)
        runner = cls(config)
        runner.load_checkpoint(loaded)
        return runner

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
        if self.model is None:
            raise ValueError("cannot load pretrained weights before the model is set: assign self.model first")
        loaded = ckpt.read_checkpoint(checkpoint, *args, what="pretrained", **kwargs)
        self.unwrap(self.model).load_state_dict(ckpt.extract_model_state(loaded))

    # Results

    def append_result(self, result: Mapping, index: int | None = None) -> None:
        r"""
        Add a result (`split -> metric -> value`) at `index` (default: the current epoch), merging if present.
        """
        res.append_result(self.results, result, self.epochs if index is None else index)

    def get_step_result(self) -> NestedDict:
        r"""
        Values of the meters and metrics on the latest batch.
        """
        result = NestedDict(self.meters.value())
        if self.metrics is not None:
            result.merge(_flatten_single(self.metrics.value()))
        return result

    def get_epoch_result(self) -> NestedDict:
        r"""
        Averages of the meters and metrics over the epoch (over all processes).
        """
        result = NestedDict(self.meters.average())
        if self.metrics is not None:
            result.merge(_flatten_single(self.metrics.average()))
        return result

    @property
    def best_fn(self) -> Callable:
        r"""
        `min` when `score_name` is `"loss"`, else `max`; override for other metrics where lower is better.
        """
        return min if self.config.get("score_name", "loss") == "loss" else max

    @property
    def scores(self) -> NestedDict | None:
        r"""
        Score of each result: `results[index][score_split][score_name]`.
        """
        if not self.results:
            return None
        return res.get_scores(self.results, self.config.get("score_name", "loss"), self.config.get("score_split"))

    @property
    def best_index(self) -> Any:
        r"""Index of the best result (ties go to the latest); 0 when there is none."""
        index = res.best_index(self.scores or {}, self.best_fn)
        return 0 if index is None else index

    @property
    def latest_result(self) -> NestedDict | None:
        r"""Copy of the latest result with its `index`."""
        return res.latest_result(self.results)

    @property
    def best_result(self) -> NestedDict | None:
        r"""Copy of the best result with its `index`."""
        if not self.results:
            return None
        return res.result_at(self.results, res.best_index(self.scores or {}, self.best_fn))

    @property
    def latest_score(self) -> float | None:
        r"""Score of the latest result."""
        scores = self.scores
        return next(reversed(list(scores.values()))) if scores else None

    @property
    def best_score(self) -> float | None:
        r"""Score of the best result."""
        scores = self.scores
        return scores[self.best_index] if scores else None

    @property
    def is_best(self) -> bool:
        r"""Whether the latest result is the best so far (`True` when there are no results)."""
        return res.is_best(self.scores or {}, self.best_fn)

    def format_result(self, result: Mapping, format_spec: str = ".4f") -> str:
        r"""Format a result for humans (see [`format_result`][danling.runner.utils.format_result])."""
        return format_result(result, format_spec=format_spec)

    def format_step_result(
        self, result: Mapping, split: str | None, steps: int, length: int | None, format_spec: str = ".4f"
    ) -> str:
        r"""Format a step log line: `"training on train [12/100]\tloss: 0.1234"`."""
        verb = {"train": "training", "evaluate": "evaluating", "infer": "inferring"}[str(self.mode)]
        prefix = f"{verb} on {split} " if split is not None else ""
        position = f"[{steps}/{length}]" if length is not None else f"[{steps}]"
        return f"{prefix}{position}\t{self.format_result(result, format_spec)}"

    def format_epoch_result(
        self, result: Mapping, epochs: int | None = None, epoch_end: int | None = None, format_spec: str = ".4f"
    ) -> str:
        r"""Format an epoch log: `"epoch [3/9]"` followed by the result."""
        epochs = self.epochs if epochs is None else epochs
        epoch_end = self.epoch_end if epoch_end is None else epoch_end
        prefix = f"epoch [{epochs}/{epoch_end - 1}]\n" if epoch_end is not None else f"epoch [{epochs}]\n"
        return prefix + self.format_result(result, format_spec)

    def step_log(self, split: str, iteration: int, length: int | None = None) -> NestedDict:
        r"""Log the step result of `split` and write it to TensorBoard when training."""
        loader = self.dataloaders.get(split)
        if length is None and hasattr(loader, "__len__"):
            length = len(loader) - 1
        result = self.get_step_result()
        self.log(self.format_step_result(result, split, iteration, length))
        if self.mode == RunnerMode.train:
            self.write_result(result, split)
        return result

    def log(self, message: str, level: int = logging.INFO) -> None:
        r"""Log `message` through the runner's logger (main process only; no-op when logging is off)."""
        if self.logger is not None:
            self.logger.log(level, message)

    def print_result(self) -> None:
        r"""Log the latest and the best result."""
        self.log(f"latest result: {self.latest_result}")
        self.log(f"best result: {self.best_result}")

    def write_result(self, result: Mapping, split: str, steps: int | None = None) -> None:
        r"""Write every number of `result` to TensorBoard as `{split}/{metric}` at `steps`."""
        if self.writer is None:
            return
        steps = self.steps if steps is None else steps
        for name, score in NestedDict(result).all_items():
            name = name.replace(".", "/")
            if isinstance(score, (list, tuple)):
                for i, value in enumerate(score):
                    self.write_score(f"{name}/{i}", value, split, steps)
            else:
                self.write_score(name, score, split, steps)

    def write_score(self, name: str, score: float, split: str, steps: int) -> None:
        r"""Write one scalar to TensorBoard as `{split}/{name}`."""
        if self.writer is not None:
            self.writer.add_scalar(f"{split}/{name}", score, steps)

    @on_main_process
    def save_result(self) -> None:
        r"""
        Write `results.json` (every result), `latest.json` and, when the latest is the best, `best.json` in `dir`.
        """
        header = {"name": self.name, "id": self.id, "timestamp": self.timestamp}
        save({**header, "results": to_plain(self.results)}, os.path.join(self.dir, "results.json"), indent=4)
        latest = {**header, **to_plain(self.latest_result or {})}
        latest_path = save(latest, os.path.join(self.dir, "latest.json"), indent=4)
        if self.is_best:
            ckpt.link_or_copy(latest_path, os.path.join(self.dir, "best.json"))

    # I/O

    @catch(OSError)
    def save(self, obj: Any, file: PathStr, main_process_only: bool = True, *args: Any, **kwargs: Any) -> PathStr:
        r"""
        [`save`][danling.utils.io.save] on the main process only (unless `main_process_only=False`).

        Errors of the file system are logged, not raised (use [`save`][danling.utils.io.save] to raise).
        """
        if main_process_only and not self.is_main_process:
            return file
        return save(obj, file, *args, **kwargs)

    @staticmethod
    def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
        r"""Same as [`load`][danling.utils.io.load]."""
        return load(file, *args, **kwargs)

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
    def from_json(cls, file: PathStr, *args: Any, **kwargs: Any) -> BaseRunner:
        r"""Build a runner from a JSON config file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_jsons(fp.read(), *args, **kwargs)

    @classmethod
    def from_jsons(cls, string: str, *args: Any, **kwargs: Any) -> BaseRunner:
        r"""Build a runner from a JSON config string."""
        return cls(Config.from_jsons(string, *args, **kwargs))

    @classmethod
    def from_yaml(cls, file: PathStr, *args: Any, **kwargs: Any) -> BaseRunner:
        r"""Build a runner from a YAML config file."""
        with open(file, encoding="utf-8") as fp:
            return cls.from_yamls(fp.read(), *args, **kwargs)

    @classmethod
    def from_yamls(cls, string: str, *args: Any, **kwargs: Any) -> BaseRunner:
        r"""Build a runner from a YAML config string."""
        return cls(Config.from_yamls(string, *args, **kwargs))

    def check_dir(self, action: str = "warn") -> bool:
        r"""
        Whether [`dir`][danling.runner.BaseRunner.dir] is empty; when not, warn, raise or ignore per `action`.

        Args:
            action: One of `"warn"`, `"raise"`, `"ignore"`.

        Returns:
            `True` if the directory is empty.

        Raises:
            ValueError: If `action` is not one of the accepted values.
            RuntimeError: If the directory is not empty and `action` is `"raise"`.
        """
        if action not in CHECK_DIR_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(CHECK_DIR_ACTIONS)}, but got {action!r}")
        if not os.listdir(self.dir):
            return True
        if action == "warn":
            warn(f"directory {self.dir!r} is not empty", RuntimeWarning, stacklevel=2)
        elif action == "raise":
            raise RuntimeError(f"directory {self.dir!r} is not empty")
        return False

    @cached_ensure_dir
    def dir(self) -> str:
        r"""Directory of the run: `config.dir`, else `project_root/{name}-{id}/{timestamp}`. Created on access."""
        if self.config.get("dir") is not None:
            return self.config["dir"]
        return os.path.join(self.config.get("project_root", "experiments"), f"{self.name}-{self.id}", self.timestamp)

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

    @property
    def world_size(self) -> int:
        r"""Number of processes."""
        return dist_utils.get_world_size()

    @property
    def rank(self) -> int:
        r"""Global rank of this process."""
        return dist_utils.get_rank()

    @property
    def local_rank(self) -> int:
        r"""Rank of this process on its node."""
        return dist_utils.get_local_rank()

    @property
    def distributed(self) -> bool:
        r"""Whether more than one process runs."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        r"""Whether this is the global main process (rank 0)."""
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        r"""Whether this is the main process of its node."""
        return self.local_rank == 0

    # Config passthrough

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fall through to existing config keys, nothing else.
        descriptor = inspect.getattr_static(type(self), name, None)
        if isinstance(descriptor, (property, cached_property)):
            # A property raised AttributeError itself: let its own message through instead of ours.
            return descriptor.__get__(self, type(self))
        config = self.__dict__.get("_config")
        if name.startswith("_"):  # private names are never config keys; fail fast (hasattr/getattr probes)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if config is not None and name in config:
            return config[name]
        keys = list(config.keys()) if config is not None else []
        close = difflib.get_close_matches(name, keys, n=3)
        hint = f"; did you mean {', '.join(repr(k) for k in close)}?" if close else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute or config key {name!r}{hint}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Precedence: an attribute of the runner (instance or class) stays on the runner; otherwise an existing
        # config key is written; otherwise a new runner attribute is created.
        if name.startswith("_"):  # private state is never a config key
            object.__setattr__(self, name, value)
            return
        config = self.__dict__.get("_config")
        on_runner = name in self.__dict__ or name in type(self)._class_attribute_names
        if on_runner or config is None or name not in config:
            object.__setattr__(self, name, value)
        elif isinstance(config[name], Variable):
            config[name].set(value)
        else:
            config[name] = value

    def __contains__(self, name: str) -> bool:
        return hasattr(type(self), name) or name in self.__dict__ or name in self.config

    def __repr__(self) -> str:
        lines = [f"  ({key}): {value!r}".replace("\n", "\n  ") for key, value in self.__dict__.items() if _shown(key)]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)" if lines else f"{type(self).__name__}()"


def _shown(key: str) -> bool:
    return not key.startswith("_") and key != "inited"


def _flatten_single(result: Mapping) -> dict:
    # Metrics of a single task come back as {"task": {...}}: lift them so results read result["acc"].
    return {key: next(iter(v.values())) if isinstance(v, Mapping) and len(v) == 1 else v for key, v in result.items()}
