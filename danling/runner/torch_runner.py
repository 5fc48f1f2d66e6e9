"""`TorchRunner`: PyTorch training, evaluation and inference loops with DDP, AMP and gradient accumulation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

import torch
from chanfig import NestedDict
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from danling.utils import distributed as dist_utils

from .base_runner import BaseRunner
from .callbacks import CallbackList, ProfilerCallback
from .checkpointing.async_writer import drained
from .checkpointing.rng import use_deterministic_algorithms
from .checkpointing.torch_methods import TorchCheckpointingMixin
from .checkpointing.torch_state import TorchRunnerCheckpoints
from .distributed.parallel import build_parallelism, evaluation_context, unwrap_model
from .distributed.processes import init_process_group, resolve_device, share_run_identity
from .loop.accumulation import AccumulationWindows
from .loop.data import check_has_batches, loader_length, set_sampler_epoch
from .loop.epoch import EpochCursor, reset_for_epoch
from .loop.finite import NonFiniteLossGuard
from .loop.gradients import GradientNorms
from .loop.inference import gather_predictions, infer_input
from .loop.interruptions import Recovery
from .loop.loaders import SplitLoaders, default_log_interval
from .loop.precision import Precision
from .loop.stepping import OptimizationMixin, StepProbe
from .loop.training import completion_reason, epoch_range, patience_exhausted, step_end_reached
from .reporting.flops import model_flops
from .reporting.telemetry import Telemetry, average_numbers
from .utils import RunnerMode


class TorchRunner(OptimizationMixin, TorchCheckpointingMixin, BaseRunner):
    r"""
    Runner for PyTorch: seeding, DDP under `torchrun`, mixed precision, gradient accumulation and clipping,
    EMA, exact resume, and the train / evaluate / infer loops.

    Subclass it and assign `model`, `criterion`, `optimizer` (and optionally `scheduler`, `ema`, `metrics`) and
    `datasets.<split>` in `__init__`; then call [`train`][danling.runner.TorchRunner.train].
    Batches are `(input, target)` pairs or mappings with `input` and `target` keys; override
    [`train_step`][danling.runner.TorchRunner.train_step] for anything else.

    Config keys used here: `precision` (`"fp16"`, `"bf16"`, `None`), `accum_steps`, `max_grad_norm`,
    `max_grad_value`, `patience`, `backend`, `device`, `progress_bar`, `strategy` (`"ddp"`, `"fsdp"`),
    `fsdp.shard_modules`, `compile`, `compile_options`, `dataloader.*` and `dataloader.<split>.*`.

    Examples:
        >>> import tempfile
        >>> from torch.utils.data import TensorDataset
        >>> class Runner(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.datasets.train = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        ...         self.model = nn.Linear(4, 1)
        ...         self.criterion = nn.MSELoss()
        ...         self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        >>> config = {"epoch_end": 2, "log": False, "dir": tempfile.mkdtemp(), "dataloader": {"batch_size": 16}}
        >>> runner = Runner(config)
        >>> results = runner.train()
        >>> runner.steps, sorted(results.keys())
        (8, [0, 1])
    """

    model: nn.Module | None = None
    _checkpoints_type = TorchRunnerCheckpoints
    _cursor: EpochCursor | None = None  # the epoch `begin_epoch` started

    def __init__(self, config: Any) -> None:
        self._windows = AccumulationWindows()
        self._loss_guard = NonFiniteLossGuard()
        self._step_probe = StepProbe()
        self._grad_norms = GradientNorms()
        self._recovery = Recovery(self)
        self._callbacks = CallbackList(self._recovery.failures)  # failures agreed where recovery's are
        super().__init__(config)
        self._device = resolve_device(self.config.get("device"), self.local_rank)
        self._loaders = SplitLoaders(self.rank, self.world_size, pin_memory=self._device.type == "cuda")
        self._batches_stay = self._device.type == "cpu"  # batches are already where the model is
        self._precision = Precision(self.config.get("precision"), self._device.type)
        self.telemetry = Telemetry(self._device, self.world_size, model_flops(self.config, self._device))
        self._parallel = build_parallelism(self.config, self._precision.dtype)
        if self.config.get("profile_steps") is not None:
            self._callbacks.add(ProfilerCallback(*self.config["profile_steps"]), builtin=True)

    # Set-up

    def init_distributed(self) -> None:
        r"""
        Join the process group `torchrun` describes (`gloo` on CPU, `nccl` on CUDA, or `config.backend`) and make
        `timestamp`, ids and seed identical on every rank. `config.dist_timeout` (seconds) bounds how long a
        collective waits for a hung rank before the job fails with an error. Collective.
        """
        if init_process_group(self.config.get("backend"), self.config.get("dist_timeout")):
            self.timestamp = share_run_identity(self.timestamp, self.config)

    def setup(self) -> None:
        r"""
        Build the dataloaders, set a default `log_interval`, move the model (and EMA) to `device` and let the
        parallelism policy (`config.strategy`, `config.compile`) compile it and wrap it in
        `DistributedDataParallel` or shard it with FSDP2 when distributed.
        """
        self.build_dataloaders()
        if self.config.get("log_interval") is None and self.dataloaders:
            self.config["log_interval"] = default_log_interval(self.dataloaders.values())
        if self.model is not None:
            self.model = self._parallel.wrap(self.model.to(self.device), self.device, self.optimizer)
        if self.ema is not None:
            self.ema = self._parallel.wrap_ema(self.ema.to(self.device))
        self._begin_accumulation(None)

    def build_dataloaders(self) -> None:
        r"""
        Build a dataloader for every dataset without one, from `config.dataloader` and `config.dataloader.<split>`.

        Train splits shuffle (unless `shuffle` says otherwise) and use a `DistributedSampler` when distributed;
        other splits keep their order and are sharded without padding.
        """
        splits, options, seed = lambda: self.train_splits, self.config.get("dataloader"), self.config.get("seed")
        self._loaders.build(self.datasets, self.dataloaders, self.datasamplers, splits, options, seed)

    # Environment

    @property
    def device(self) -> torch.device:
        r"""`config.device`, else `cuda:LOCAL_RANK` when CUDA is available, else CPU (decided at construction)."""
        return self._device

    def _seed_generators(self, seed: int) -> None:
        super()._seed_generators(seed)
        torch.manual_seed(seed)  # seeds CUDA too

    def set_deterministic(self) -> None:
        r"""
        Use deterministic algorithms (`torch.use_deterministic_algorithms`), turn cuDNN benchmarking off and set
        `CUBLAS_WORKSPACE_CONFIG` as CUDA requires.
        """
        use_deterministic_algorithms()

    def unwrap(self, model: Any) -> Any:
        r"""The model inside `DistributedDataParallel` (and `torch.compile`) wrappers."""
        return unwrap_model(model)

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        r"""Mean of `tensor` over all processes (for logging); a copy, the input is unchanged. Collective."""
        return dist_utils.all_reduce(tensor, op="mean")

    # The schedule of epochs

    def train(self, train_splits: list[str] | None = None, evaluate_splits: list[str] | None = None) -> NestedDict:
        r"""
        Train from `epoch_begin` to `epoch_end` (or until `step_end`): each epoch trains every train split, then
        evaluates every evaluate split ([`run_epoch`][danling.runner.TorchRunner.run_epoch]), records and saves the
        results and the checkpoint ([`record_epoch`][danling.runner.TorchRunner.record_epoch]), and stops early
        after `patience` epochs without improvement ([`should_stop`][danling.runner.TorchRunner.should_stop]).

        Training stops at exactly `step_end` optimizer steps (a run that already reached it trains nothing more);
        the epoch it cuts short is marked `partial: True` in its result. A `ReduceLROnPlateau` scheduler is
        stepped once per epoch with the epoch's score; other schedulers once per optimizer step. Preemption
        signals are caught for the duration (see the fault-tolerance guide).

        Args:
            train_splits: Splits to train on (default: [`train_splits`][danling.runner.BaseRunner.train_splits]).
            evaluate_splits: Splits to evaluate (default: `evaluate_splits`).

        Returns:
            All results, `epoch -> split -> metric -> value`.

        Raises:
            ValueError: If neither `epoch_end` nor `step_end` is set, or `epoch_end < epoch_begin`.
            FloatingPointError: If the training loss goes NaN/inf, or the fp16 loss scale collapses (the gradients
                overflow step after step); the message names the step.
        """
        train_splits = self.train_splits if train_splits is None else train_splits
        evaluate_splits = self.evaluate_splits if evaluate_splits is None else evaluate_splits
        epochs = epoch_range(self.epoch_begin, self.epoch_end, self.step_end)
        self.check_score_split([*train_splits, *evaluate_splits])
        complete = self.completion()
        if complete is not None:
            self.log(f"the run is already complete ({complete}): nothing to train; returning its results")
            return self.results
        self.announce("train")
        recovery = self._recovery
        recovery.check_world_size()
        self._callbacks.dispatch("on_train_begin", self)  # distributed: every rank agrees on its failures here
        # Inside, a callback's failure on one rank waits for the loop's own agreements (see `CallbackList`).
        training = self._callbacks.training(self.world_size)
        with training, recovery.catch_preemption(), recovery.explain_timeouts(), drained(self.async_saver):
            for epoch in epochs:
                if step_end_reached(self.steps, self.step_end):
                    self.log(f"step_end ({self.step_end}) already reached at step {self.steps}: nothing left to train")
                    break
                self.epochs = epoch
                self.record_epoch(epoch, self.run_epoch(train_splits, evaluate_splits))
                if self.should_stop():
                    break
        self._callbacks.dispatch("on_train_end", self)  # after the last save committed; agreed here too
        return self.results

    def run_epoch(self, train_splits: list[str], evaluate_splits: list[str]) -> NestedDict:
        r"""
        One epoch of [`train`][danling.runner.TorchRunner.train]:
        [`train_epoch`][danling.runner.TorchRunner.train_epoch] on each train split (until `step_end`), then
        [`evaluate_epoch`][danling.runner.TorchRunner.evaluate_epoch] on each evaluate split.
        Train splits a mid-epoch checkpoint had finished keep their saved results.

        Returns:
            The epoch's result, `split -> metric -> value` (`partial: True` when `step_end` cut it short).
        """
        done = lambda: step_end_reached(self.steps, self.step_end)  # noqa: E731
        result = self._recovery.train_splits(train_splits, self.train_epoch, done)
        for split in evaluate_splits:
            result[split] = self.evaluate_epoch(split)
        return result

    def record_epoch(self, epoch: int, result: NestedDict) -> None:
        r"""
        After an epoch: append and log its result, step a `ReduceLROnPlateau` scheduler, save the checkpoint and
        then the results that describe it, and stop on a preemption request (or a failure of any rank, a
        callback's included). Collective when distributed. Its TensorBoard scalars were written as each split ended.

        Args:
            epoch: The epoch's index.
            result: Its result, as [`run_epoch`][danling.runner.TorchRunner.run_epoch] returned it.
        """
        self.append_result(result, index=epoch)
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.latest_score is not None:
            self.scheduler.step(self.latest_score)
        self.log(self.format_epoch_result(result))
        # Commit order: the checkpoint first, then the JSON files that describe it.
        self._recovery.end_of_epoch()
        with self._recovery.contain():  # a failed save stops every rank at the agreement just below
            self.save_checkpoint(epochs=epoch)
            if self.async_saver is None:
                self.save_result()
            elif self.is_main_process:  # the results of now, written once the checkpoint is committed
                self.after_checkpoint(self.result_writer())
        if self.writer is not None:
            self.writer.flush()
        self._recovery.stop_if_preempted()

    def should_stop(self) -> bool:
        r"""Whether to stop after this epoch: `step_end` reached, or `patience` epochs without improvement."""
        if step_end_reached(self.steps, self.step_end):
            return True
        patience = self.config.get("patience")
        waited = patience_exhausted(patience, (self.scores or {}) if self.results else None, self.best_fn)
        if waited is not None:
            self.log(f"stopping early: no improvement in the last {waited} epochs (patience {patience})")
        return waited is not None

    def completion(self) -> str | None:
        r"""
        Why a run that already has results has nothing left to train (`epoch_end` or `step_end` reached, or
        `patience` exhausted), or `None` when it has something left (or no results).

        Examples:
            >>> import tempfile
            >>> runner = TorchRunner({"log": False, "dir": tempfile.mkdtemp(), "epoch_begin": 3, "epoch_end": 3})
            >>> runner.completion() is None  # no results: a run that never trained
            True
            >>> runner.append_result({"val": {"loss": 1.0}}, index=2)
            >>> runner.completion()
            'epoch_end 3 reached'
        """
        if not self.results:
            return None
        patience = self.config.get("patience")
        waited = patience_exhausted(patience, self.scores or {}, self.best_fn)
        return completion_reason(self.epoch_begin, self.epoch_end, self.steps, self.step_end, patience, waited)

    # The loop of an epoch

    def train_epoch(self, split: str = "train") -> NestedDict:
        r"""
        Train one epoch on `split` and return its result (losses are sample-weighted means over all ranks).

        The loop is built from public methods only: override it (see the custom-loops guide) to change what an
        epoch does and keep the checkpoints, resume, preemption and logging of
        [`begin_epoch`][danling.runner.TorchRunner.begin_epoch] and [`end_step`][danling.runner.TorchRunner.end_step].

        Args:
            split: Split to train on.

        Returns:
            The epoch's result, `metric -> value`, with `partial: True` when `step_end` cut the epoch short.
        """
        batches = self.begin_epoch(split)
        for batch in batches:
            self.train_step(self.to_device(batch))
            if self.end_step(split):
                break
        return self.end_epoch(split)

    @evaluation_context
    def evaluate_epoch(self, split: str = "val") -> NestedDict:
        r"""
        Evaluate `split` once: no gradients, same autocast as training, every sample counted exactly once. The
        loop mirrors [`train_epoch`][danling.runner.TorchRunner.train_epoch], with
        [`evaluate_step`][danling.runner.TorchRunner.evaluate_step] for the batch.

        Returns:
            The split's result, `metric -> value`, averaged over all ranks.
        """
        batches = self.begin_epoch(split, RunnerMode.evaluate)
        for batch in batches:
            self.evaluate_step(self.to_device(batch))
            if self.end_step(split):
                break
        return self.end_epoch(split)

    def begin_epoch(self, split: str, mode: str | RunnerMode = RunnerMode.train, loader: Any = None) -> Iterator:
        r"""
        Start an epoch of `split`, and return its batches (timed, through the progress bar when shown).

        It sets `mode` and `split`, the model's train/eval mode, fresh meters and metrics and the sampler's epoch,
        then calls the callbacks' `on_epoch_begin` (not for `infer`). To train, it also opens the accumulation
        windows and, when a mid-epoch checkpoint was loaded, resumes into the epoch: the batches then start after
        the last one the checkpoint had consumed, with meters, metrics and random state as they were.

        Args:
            split: The split.
            mode: `"train"`, `"evaluate"` or `"infer"`.
            loader: Batches to read instead of the split's dataloader (inference of other data).

        Returns:
            An iterator over the batches, on the host: move each with
            [`to_device`][danling.runner.TorchRunner.to_device], and call
            [`end_step`][danling.runner.TorchRunner.end_step] after each (but in `infer`).

        Raises:
            KeyError: If the split has neither a dataloader nor a dataset.
            ValueError: If a train split has no batches.
        """
        mode = RunnerMode(mode)
        loader = self._start_epoch(split, mode, loader)
        length = loader_length(loader)
        if mode == RunnerMode.infer:  # no callbacks, no log lines
            return iter(self._callbacks.progress(self, self.telemetry.iterate(loader), split, length))
        training = mode == RunnerMode.train
        if training:
            check_has_batches(split, loader, length)
        self._callbacks.dispatch("on_epoch_begin", self, split)
        cursor = EpochCursor(split, length, self.telemetry.batches_before)
        cursor.loader, cursor.log_interval = loader, self.config.get("log_interval")
        batches = self._begin_training(split, loader, length, cursor) if training else loader
        cursor.stream = iter(self._callbacks.progress(self, self.telemetry.iterate(batches), split, length))
        self._cursor = cursor
        return cursor.stream

    def _begin_training(self, split: str, loader: Any, length: int | None, cursor: EpochCursor) -> Iterable:
        # The training half of the cursor; the batches to read (after those a resumed checkpoint had consumed).
        cursor.on_step_end = self._callbacks.hook("on_step_end")  # None unless a callback overrides it
        self._begin_accumulation(length)
        self._loss_guard.start(split, self.epochs, self.steps, self.accum_steps)
        batches, start = self._recovery.enter_epoch(split, loader)
        cursor.offset += start
        cursor.step_end, cursor.at_boundary = self.step_end, self._recovery.boundary_hook()
        # `self.steps`, read up to three times a batch, without a Python call each time.
        cursor.steps_now = partial(dict.__getitem__, self._config, "steps")
        cursor.stepped = cursor.steps_now()
        return batches

    def end_step(self, split: str) -> bool:
        r"""
        After each batch of an epoch [`begin_epoch`][danling.runner.TorchRunner.begin_epoch] started: the callbacks'
        `on_step_end` (training), the log line every `log_interval` batches, and, after an optimizer step, the
        `save_steps` checkpoint and the preemption check (which saves `latest` and exits). No device sync, no
        collective but at those boundaries.

        Args:
            split: The split of the epoch.

        Returns:
            Whether to stop the epoch: `step_end` is reached (never in evaluation).
        """
        cursor = self._cursor
        cursor.iteration = iteration = cursor.iteration + 1  # batches over the run: log lines are counted so
        if cursor.on_step_end is not None:
            cursor.on_step_end(self, split)
        if cursor.log_interval is not None and iteration % cursor.log_interval == 0:
            self._log_step(split, iteration, cursor.length)
        if cursor.at_boundary is not None and cursor.steps_now() != cursor.stepped:
            cursor.at_boundary(split, iteration + cursor.offset, cursor.length)  # batches of this epoch so far
            cursor.stepped = cursor.steps_now()
        if cursor.step_end is None or cursor.steps_now() < cursor.step_end:
            return False
        cursor.partial = cursor.cut_short()
        return True

    def end_epoch(self, split: str) -> NestedDict:
        r"""
        End the epoch [`begin_epoch`][danling.runner.TorchRunner.begin_epoch] started. Training: step the optimizer
        on the last accumulation window when it was cut short, check the losses were finite, and call the
        callbacks' `on_epoch_end`; evaluation: call their `on_evaluate_end`.

        Args:
            split: The split of the epoch.

        Returns:
            The epoch's result ([`get_epoch_result`][danling.runner.TorchRunner.get_epoch_result]), with
            `partial: True` when `step_end` cut a training epoch short.

        Raises:
            ValueError: If the loader yielded no batch (a loader without a length).
            FloatingPointError: If a training loss was NaN/inf.
        """
        cursor = self._cursor
        training = self.mode == RunnerMode.train
        cursor.check_yielded(self.telemetry.batches, training, self.distributed)
        if training:
            self._flush_accumulation()
            self._loss_guard.check(self.distributed)
        result = self.get_epoch_result()
        if cursor.partial:  # cut short by step_end
            result["partial"] = True
        self._callbacks.dispatch("on_epoch_end" if training else "on_evaluate_end", self, split, result)
        return result

    def _start_epoch(self, split: str, mode: RunnerMode, loader: Any = None) -> Any:
        # The loader to read (the split's, unless given), and the runner's state at the start of an epoch.
        if loader is None:
            loader = self._loaders.loader(split, mode, self.dataloaders, self.datasets, self.build_dataloaders)
            if mode == RunnerMode.train:  # the sampler's shuffle follows the epoch
                set_sampler_epoch(self.datasamplers.get(split), self.epochs, self.config.get("seed"))
        self.mode, self.split = mode, split
        reset_for_epoch(mode, self.model, self.meters, self.current_metrics, self.telemetry, self.steps)
        self._loss_meter = self.meters.loss
        return loader

    def _log_step(self, split: str, iteration: int, length: int | None) -> None:
        # `iteration` counts batches over the run; the line shows the position in the epoch.
        if self.mode == RunnerMode.train:
            self._loss_guard.check(self.distributed)
        self.step_log(split, self.telemetry.batches - 1, None if length is None else length - 1)

    @evaluation_context
    def evaluate(self, evaluate_splits: list[str] | None = None) -> NestedDict:
        r"""
        Evaluate every split in `evaluate_splits` (default: all evaluate splits).

        Returns:
            `split -> metric -> value`.
        """
        splits = self.evaluate_splits if evaluate_splits is None else evaluate_splits
        self.announce("evaluate")
        return NestedDict({split: self.evaluate_epoch(split) for split in splits})

    @evaluation_context
    def infer(self, data: Any = "infer") -> torch.Tensor:
        r"""
        Predictions of the model, in dataset order, gathered from all ranks.

        Args:
            data: A split name, or a dataset, a `DataLoader` or a tensor (its rows are the samples); datasets and
                tensors are batched with `config.dataloader` (overlaid with `config.dataloader.infer`).

        Returns:
            The predictions concatenated along the first dimension (on CPU).
        """
        split, loader = data, None
        if not isinstance(data, str):  # batched with config.dataloader (and its `infer` section)
            split, loader = "infer", self._loaders.inference_loader(data, self.config.get("dataloader"))
        batches = self.begin_epoch(split, RunnerMode.infer, loader)
        model = self._parallel.evaluation_module(self.model)
        outputs = []
        for batch in batches:
            with self.autocast():
                outputs.append(model(infer_input(self.to_device(batch))).float())
        return gather_predictions(outputs, self.distributed)

    def get_step_result(self) -> NestedDict:
        r"""Latest batch's meters and metrics; in training, numbers are averaged over ranks (collective)."""
        result = super().get_step_result()
        training = self._mode == RunnerMode.train
        # Only training shards are the same length on every rank, so only there can every rank join the reduce.
        if self.distributed and training:
            # The meters arrive averaged over ranks already (see `BaseRunner.get_step_result`): the metrics' left.
            average_numbers(result, {name for name, _ in self.meters.count.all_items()}, self.reduce)
        extra = {"lr": self.optimizer.param_groups[0]["lr"]} if training and self.optimizer is not None else {}
        extra.update(self._grad_norms.result() if training else {})  # the same on every rank: reduced gradients
        extra.update(self.telemetry.step_stats(self.steps if training else None))
        result.update(extra)  # plain names and numbers: `update` is several times cheaper than a chanfig set each
        return result

    def get_epoch_result(self) -> NestedDict:
        r"""
        The epoch's meters and metrics, the learning rate at its end (training), and its
        [telemetry][danling.runner.reporting.telemetry.Telemetry.epoch_stats]: `samples_per_s`, `epoch_time`,
        `data_time`, `compute_time` (and `tokens_per_s`, `peak_memory_mib` when known).
        """
        result = super().get_epoch_result()
        if self.mode == RunnerMode.train and self.optimizer is not None:
            result["lr"] = self.optimizer.param_groups[0]["lr"]
        result.update(self.telemetry.epoch_stats())
        return result
