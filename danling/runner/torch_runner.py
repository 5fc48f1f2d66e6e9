"""`TorchRunner`: PyTorch training, evaluation and inference loops with DDP, AMP and gradient accumulation."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

import torch
from chanfig import NestedDict
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from danling.utils import distributed as dist_utils

from .base_runner import BaseRunner
from .callbacks import CallbackList
from .checkpointing import CheckpointManager
from .checkpointing import files as ckpt
from .checkpointing.rng import use_deterministic_algorithms
from .checkpointing.torch_state import TorchRunnerCheckpoints
from .checkpointing.verification import ResumeCheck, verify_resume
from .distributed.parallel import build_parallelism, evaluation_context
from .distributed.processes import init_process_group, resolve_device, share_run_identity
from .loop.accumulation import AccumulationWindows
from .loop.data import describe_loader, has_more, loader_length, samples_of
from .loop.evaluation import EvaluationLoops
from .loop.finite import NonFiniteLossGuard
from .loop.interruptions import Recovery
from .loop.loaders import SplitLoaders
from .loop.precision import Precision
from .loop.stepping import OptimizationMixin, StepProbe
from .loop.training import TrainingLoop
from .reporting.telemetry import Telemetry
from .utils import RunnerMode, to_device


class TorchRunner(OptimizationMixin, BaseRunner):
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

    def __init__(self, config: Any) -> None:
        self._windows = AccumulationWindows()
        self._loss_guard = NonFiniteLossGuard()
        self._step_probe = StepProbe()
        self._recovery = Recovery(self)
        self._callbacks = CallbackList(self._recovery.failures)  # failures agreed where recovery's are
        self._training = TrainingLoop(self)
        self._evaluation = EvaluationLoops(self)
        self._loaders = SplitLoaders(self)
        super().__init__(config)
        self._device = resolve_device(self.config.get("device"), self.local_rank)
        self._batches_stay = self._device.type == "cpu"  # batches are already where the model is
        self._precision = Precision(self.config.get("precision"), self._device.type)
        self.telemetry = Telemetry(self._device, self.world_size)
        self._parallel = build_parallelism(self.config, self._precision.dtype)

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
            self.config["log_interval"] = self._loaders.default_log_interval()
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
        self._loaders.build()

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
        while True:
            if isinstance(model, DistributedDataParallel):
                model = model.module
            elif hasattr(model, "_orig_mod"):
                model = model._orig_mod
            else:
                return model

    def config_changed(self, name: str) -> None:
        r"""`runner.max_grad_norm = 1.0` (or `max_grad_value`) takes effect at the next optimizer step."""
        if name in ("max_grad_norm", "max_grad_value"):
            self._max_grad_norm = self.config.get("max_grad_norm")
            self._max_grad_value = self.config.get("max_grad_value")
            self._clips = self._max_grad_norm is not None or self._max_grad_value is not None

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        r"""Mean of `tensor` over all processes (for logging); a copy, the input is unchanged. Collective."""
        return dist_utils.all_reduce(tensor, op="mean")

    # Loops

    def train(self, train_splits: list[str] | None = None, evaluate_splits: list[str] | None = None) -> NestedDict:
        r"""
        Train from `epoch_begin` to `epoch_end` (or until `step_end`): each epoch trains every train split, then
        evaluates every evaluate split, records and saves the results, saves checkpoints and stops early after
        `patience` epochs without improvement.

        Training stops at exactly `step_end` optimizer steps (a run that already reached it trains nothing more);
        the epoch it cuts short is marked `partial: True` in its result. A `ReduceLROnPlateau` scheduler is
        stepped once per epoch with the epoch's score; other schedulers once per optimizer step.

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
        return self._training.run(train_splits, evaluate_splits)

    def train_epoch(self, split: str = "train") -> NestedDict:
        r"""
        Train one epoch on `split` and return its result (losses are sample-weighted means over all ranks).

        Args:
            split: Split to train on.

        Returns:
            The epoch's result, `metric -> value`, with `partial: True` when `step_end` cut the epoch short.
        """
        loader = self._start_epoch(split, RunnerMode.train)
        length = loader_length(loader)
        if length == 0:
            raise ValueError(
                f"split {split!r} has no batches to train on ({describe_loader(loader)}); "
                "add data, lower dataloader.batch_size or set dataloader.drop_last=False"
            )
        self._callbacks.dispatch("on_epoch_begin", self, split)
        step_end_hook = self._callbacks.hook("on_step_end")  # None unless a callback overrides it
        self._begin_accumulation(length)
        self._loss_guard.start(split, self.epochs, self.steps, self.accum_steps)
        batches, start = self._recovery.enter_epoch(split, loader)
        log_interval = self.config.get("log_interval")
        step_end = self.step_end
        partial = False
        first = self.telemetry.batches_before + 1  # log steps count batches over the run, not per epoch
        at_boundary = self._recovery.boundary_hook()
        # `self.steps`, read up to three times a batch, without a Python call each time.
        steps_now = functools.partial(dict.__getitem__, self._config, "steps")
        stepped = steps_now()
        move = self._batch_mover()
        iteration = first - 1
        stream = iter(self._iterate(batches, split, length))
        for iteration, data in enumerate(stream, first):
            self.train_step(data if move is None else move(data))
            if step_end_hook is not None:
                step_end_hook(self, split)
            if log_interval is not None and iteration % log_interval == 0:
                self._log_step(split, iteration, length)
            if at_boundary is not None and steps_now() != stepped:
                at_boundary(split, start + iteration - first + 1, length)  # batches of this epoch so far
                stepped = steps_now()
            if step_end is not None and steps_now() >= step_end:
                # Without a length (IterableDataset), whether the epoch was cut short is known by asking for more.
                done = start + iteration - first + 1
                partial = done < length if length is not None else has_more(stream)
                break
        if iteration < first and start == 0:  # a loader without a length (IterableDataset) that yielded nothing
            raise ValueError(f"split {split!r} yielded no batches to train on ({describe_loader(loader)})")
        self._flush_accumulation()
        self._loss_guard.check(self.distributed)
        result = self.get_epoch_result()
        if partial:  # cut short by step_end
            result["partial"] = True
        self._callbacks.dispatch("on_epoch_end", self, split, result)
        return result

    def save_position(self, split: str, batches: int) -> None:
        r"""
        Save `latest.pth` in the middle of a training epoch, after `batches` micro-batches of `split` (an
        optimizer-step boundary): resuming from it continues with the next batch. Collective when distributed
        (every rank's random state, meters and metrics are gathered).

        Args:
            split: The train split running.
            batches: Micro-batches of it consumed so far.
        """
        state = self._recovery.mid_epoch_state(split, batches)
        if self.is_main_process or self.checkpoint_manager.collective:
            self._checkpoints.commit(state, "latest", self.epochs, best=False, epoch_copy=False)
            self._checkpoint_saved("latest")

    def verify_resume(self, steps: int = 2, split: str | None = None) -> ResumeCheck:
        r"""
        Check that this training script resumes bit for bit: see
        [`verify_resume`][danling.runner.checkpointing.verification.verify_resume]. Trains this runner; call it on a
        fresh one.

        Returns:
            A [`ResumeCheck`][danling.runner.checkpointing.verification.ResumeCheck]: `check.ok`, `check.mismatches`.
        """
        return verify_resume(self, steps, split)

    def _start_epoch(self, split: str, mode: RunnerMode, loader: Any = None) -> Any:
        return self._loaders.start_epoch(split, mode, loader)

    def _log_step(self, split: str, iteration: int, length: int | None) -> None:
        # `iteration` counts batches over the run; the line shows the position in the epoch.
        if self.mode == RunnerMode.train:
            self._loss_guard.check(self.distributed)
        position = self.telemetry.batches - 1
        self.step_log(split, position, None if length is None else length - 1)

    def train_step(self, data: Any) -> tuple[Any, torch.Tensor]:
        r"""
        One micro-step: forward under autocast, loss, meters and metrics, then
        [`advance`][danling.runner.TorchRunner.advance].

        Args:
            data: A batch, `(input, target)` or a mapping with `input` and `target`.

        Returns:
            The predictions and the loss.
        """
        input, target = self.unpack(data)
        if target is None:
            got = f"mapping keys: {list(data)}" if isinstance(data, Mapping) else "its target is None"
            raise ValueError(f"training needs a target, but the batch has none ({got}); add one or override train_step")
        with self.accumulate():
            with self.autocast():
                pred = self.model(input)
                loss = self.criterion(pred, target)
            self.record(pred, target, loss)
            self.advance(loss)
        return pred, loss

    def record(self, pred: Any, target: Any, loss: torch.Tensor | None) -> None:
        r"""
        Add a batch to the meters (`loss`, weighted by the batch size) and metrics, without a device sync.

        Args:
            pred: Predictions.
            target: Targets.
            loss: The batch's loss, or `None`.
        """
        if loss is not None:
            self._loss_meter.update(loss, n=samples_of(target, pred))
        metrics = self.current_metrics
        if metrics is not None:
            metrics.update(pred.detach(), target)

    @staticmethod
    def unpack(data: Any) -> tuple[Any, Any]:
        r"""
        Split a batch into input and target: `(input, target)` sequences or mappings with those keys.

        Raises:
            ValueError: If the batch has another shape.
        """
        cls = type(data)
        if (cls is tuple or cls is list) and len(data) == 2:  # the common case, without the ABC check below
            return data[0], data[1]
        if isinstance(data, Mapping):
            if "input" in data:
                return data["input"], data.get("target")
            raise ValueError(f"a mapping batch needs an 'input' key (and usually 'target'); got keys {list(data)}")
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return data[0], data[1]
        raise ValueError(
            f"cannot split a batch of type {type(data).__name__} into (input, target); "
            "yield (input, target) pairs or mappings, or override train_step/evaluate_step"
        )

    def _batch_mover(self) -> Any:
        # `to_device`, or `None` where it would hand every batch back unchanged (a CPU model, not overridden).
        if self._batches_stay and type(self).to_device is TorchRunner.to_device:
            return None
        return self.to_device

    def to_device(self, data: Any) -> Any:
        r"""Move a batch to `device` in the main process (non-blocking from pinned memory on CUDA)."""
        if self._batches_stay:
            return data
        return to_device(data, self._device, non_blocking=True)

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
    def evaluate_epoch(self, split: str = "val") -> NestedDict:
        r"""
        Evaluate `split` once: no gradients, same autocast as training, every sample counted exactly once.

        Returns:
            The split's result, `metric -> value`, averaged over all ranks.
        """
        return self._evaluation.evaluate_epoch(split)

    def evaluate_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        r"""
        One evaluation batch: forward under autocast, loss when a criterion is set, meters and metrics.

        Returns:
            The predictions and the loss (or `None`).
        """
        input, target = self.unpack(data)
        with self.autocast():
            # Without DDP (its collectives per batch would hang on shards that differ by a batch), still compiled.
            pred = self._parallel.evaluation_module(self.model)(input)
            loss = None
            if self.criterion is not None and target is not None:
                loss = self.criterion(pred, target)
        if target is not None:
            self.record(pred, target, loss)
        return pred, loss

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
        return self._evaluation.infer(data)

    def _iterate(self, loader: Iterable, split: str, length: int | None) -> Iterable:
        return self._loaders.iterate(loader, split, length)

    def get_step_result(self) -> NestedDict:
        r"""Latest batch's meters and metrics; in training, numbers are averaged over ranks (collective)."""
        result = super().get_step_result()
        # Only training shards are the same length on every rank, so only there can every rank join the reduce.
        if self.distributed and self.mode == RunnerMode.train:
            self._average_metric_values(result)
        training = self._mode == RunnerMode.train
        extra = {"lr": self.optimizer.param_groups[0]["lr"]} if training and self.optimizer is not None else {}
        extra.update(self.telemetry.step_stats(self.steps if training else None))
        result.update(extra)  # plain names and numbers: `update` is several times cheaper than a chanfig set each
        return result

    def _average_metric_values(self, result: NestedDict) -> None:
        # The meters arrive averaged over ranks already (see `BaseRunner.get_step_result`); the metrics' numbers
        # are averaged here, all in one collective.
        meters = {name for name, _ in self.meters.count.all_items()}
        keys = [key for key, value in result.all_items() if key not in meters and isinstance(value, (int, float))]
        if not keys:
            return
        averaged = self.reduce(torch.tensor([float(result[key]) for key in keys], dtype=torch.float64)).tolist()
        for key, value in zip(keys, averaged):
            result[key] = value

    def get_epoch_result(self) -> NestedDict:
        r"""
        The epoch's meters and metrics, the learning rate at its end (training), and its
        [telemetry][danling.runner.reporting.telemetry.Telemetry.epoch_stats]: `samples_per_s`, `epoch_time`,
        `data_time`,
        `compute_time` (and `tokens_per_s`, `peak_memory_mib` when known).
        """
        result = super().get_epoch_result()
        if self.mode == RunnerMode.train and self.optimizer is not None:
            result["lr"] = self.optimizer.param_groups[0]["lr"]
        result.update(self.telemetry.epoch_stats())
        return result

    # Checkpoints

    def state_dict(self, cls: Any = dict) -> Mapping:
        r"""
        Config (plain types), results, unwrapped model, optimizer, scheduler, grad scaler, EMA, the RNG states and
        the position in the epoch (`position`: world size, epoch, split and batch of a mid-epoch checkpoint, the
        training plan).

        No collective: the RNG states of every rank are there when the training loop gathered them just before
        (it does for every checkpoint it saves); otherwise only this rank's.

        Raises:
            FloatingPointError: If the training loss went NaN/inf: such weights are never checkpointed.
        """
        return cls(self._checkpoints.state_dict())

    @cached_property
    def checkpoint_manager(self) -> CheckpointManager:
        r"""
        The checkpoint manager: of `torch.distributed.checkpoint` directories (`latest.dcp/`, each rank writing
        its shards, see [`ShardedCheckpointManager`][danling.runner.checkpointing.ShardedCheckpointManager])
        when the model is sharded (`strategy="fsdp"` on several ranks), else of single files (`latest.pth`).
        """
        return self._checkpoints.build_manager()

    def checkpoint_state(self) -> Mapping:
        r"""
        What a checkpoint save writes: [`state_dict`][danling.runner.TorchRunner.state_dict], or with sharded
        checkpoints the model, optimizer and EMA as sharded state dicts (no gathering) and the other parts on rank 0
        only (where the random states of every rank are gathered).
        """
        return self._checkpoints.checkpoint_state()

    def export_model(self, path: str | None = None) -> str | None:
        r"""
        Write the model's full state dict (clean names) as one `torch.save` file with a manifest, on rank 0, for
        inference without `torch.distributed`; under FSDP2 the shards are gathered to rank 0 (a collective: call
        it on every rank).

        Args:
            path: The file (default: `checkpoint_dir/model.pth`).

        Returns:
            The path written on rank 0, `None` on other ranks.
        """
        return self._checkpoints.export_model(path)

    def load_state_dict(self, state: Mapping) -> None:
        r"""
        Restore everything [`state_dict`][danling.runner.TorchRunner.state_dict] saved, including this rank's
        RNG state.
        """
        self._checkpoints.load_state_dict(state)

    def load_checkpoint(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore a checkpoint (see [`BaseRunner.load_checkpoint`][danling.runner.BaseRunner.load_checkpoint]); a
        mid-epoch checkpoint makes [`train`][danling.runner.TorchRunner.train] continue its epoch at the next
        batch. Warns when the training plan (`epoch_end`, `step_end`, dataset lengths) differs from the saved one.
        """
        self._checkpoints.load_checkpoint(checkpoint, *args, **kwargs)

    def load_pretrained(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""[`BaseRunner.load_pretrained`][danling.runner.BaseRunner.load_pretrained], sharding under `fsdp`."""
        self._checkpoints.load_pretrained(checkpoint, *args, **kwargs)
