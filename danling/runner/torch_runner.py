"""`TorchRunner`: PyTorch training, evaluation and inference loops with DDP, AMP and gradient accumulation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
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
from .checkpointing.torch_state import TorchRunnerCheckpoints
from .checkpointing.verification import ResumeCheck, verify_resume
from .distributed.heartbeat import Heartbeat, loop_progress
from .distributed.parallel import build_parallelism, evaluation_context, unwrap_model
from .distributed.processes import init_process_group, resolve_device, share_run_identity
from .loop.data import check_has_batches, loader_length, samples_of, set_sampler_epoch
from .loop.epoch import EpochCursor, reset_for_epoch
from .loop.evaluation_schedule import EvaluationSchedule, training_set_aside
from .loop.inference import gather_predictions, infer_input
from .loop.interruptions import Recovery
from .loop.loaders import SplitLoaders, default_log_interval
from .loop.precision import Precision
from .loop.stepping import OptimizerStepper, has_nan_inf_grad, missing_target_error, unpack_batch
from .loop.tokens import loss_entry
from .loop.training import completion_reason, epoch_range, patience_exhausted, step_end_reached
from .reporting.flops import model_flops
from .reporting.telemetry import Telemetry, average_numbers
from .utils import RunnerMode, to_device


class TorchRunner(BaseRunner):
    r"""
    Runner for PyTorch: seeding, DDP under `torchrun`, mixed precision, gradient accumulation and clipping,
    EMA, exact resume, and the train / evaluate / infer loops.

    Subclass it and assign `model`, `criterion`, `optimizer` (and optionally `scheduler`, `ema`, `metrics`) and
    `datasets.<split>` in `__init__`; then call [`train`][danling.runner.TorchRunner.train].
    Batches are `(input, target)` pairs or mappings with `input` and `target` keys; override
    [`train_step`][danling.runner.TorchRunner.train_step] for anything else.

    Config keys used here: `precision` (`"fp16"`, `"bf16"`, `None`), `accum_steps`, `max_grad_norm`,
    `max_grad_value`, `patience`, `eval_steps`, `eval_at_epoch_end`, `backend`, `device`, `progress_bar`,
    `strategy` (`"ddp"`, `"fsdp"`), `fsdp.shard_modules`, `compile`, `compile_options`, `dataloader.*` and
    `dataloader.<split>.*`.

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
        self._heartbeat = Heartbeat()  # this rank's step and phase, published while `train` runs (distributed)
        self._recovery = Recovery()
        self._evaluations = EvaluationSchedule()  # `train()` reads `eval_steps` and `eval_at_epoch_end`
        self._callbacks = CallbackList(self._recovery.failures)  # failures agreed where recovery's are
        super().__init__(config)
        self._device = resolve_device(self.config.get("device"), self.local_rank)
        self._loaders = SplitLoaders(self.rank, self.world_size, pin_memory=self._device.type == "cuda")
        self._batches_stay = self._device.type == "cpu"  # batches are already where the model is
        self._stepper = OptimizerStepper(Precision(self.config.get("precision"), self._device.type))
        self.telemetry = Telemetry(self._device, self.world_size, model_flops(self.config, self._device))
        self._parallel = build_parallelism(self.config, self._stepper.precision.dtype)
        self._checkpoints.connect(self._recovery, self._parallel, self._stepper)
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

    # One batch: the loop's steps (override them; see the custom-loops guide)

    def train_step(self, data: Any) -> tuple[Any, torch.Tensor]:
        r"""
        One micro-step: forward under [`autocast`][danling.runner.TorchRunner.autocast], loss, meters and metrics
        ([`record`][danling.runner.TorchRunner.record]), then [`advance`][danling.runner.TorchRunner.advance], all
        inside [`accumulate`][danling.runner.TorchRunner.accumulate]. Returns the predictions and the loss.
        """
        input, target = self.unpack(data)
        if target is None:
            raise missing_target_error(data)
        tokens = self.count_tokens(data, target)
        with self.accumulate():
            with self.autocast():
                pred = self.model(input)
                loss = self.criterion(pred, target)
            if tokens is None:  # the signatures of `record` and `advance` that overrides may still have
                self.record(pred, target, loss)
                self.advance(loss)
            else:  # loss_normalization: tokens (loop/tokens.py)
                self.record(pred, target, loss, tokens)
                self.advance(loss, tokens)
        return pred, loss

    def evaluate_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        r"""One evaluation batch: forward under autocast, the loss when a criterion is set, meters and metrics."""
        input, target = self.unpack(data)
        with self.autocast():
            # Without DDP (its collectives per batch would hang on shards that differ by a batch), still compiled.
            pred = self._parallel.evaluation_module(self.model)(input)
            loss = None if self.criterion is None or target is None else self.criterion(pred, target)
        tokens = None if target is None else self.count_tokens(data, target)
        if tokens is not None:  # loss_normalization: tokens (loop/tokens.py)
            self.record(pred, target, loss, tokens)
        elif target is not None:
            self.record(pred, target, loss)
        return pred, loss

    def count_tokens(self, data: Any, target: Any) -> Any:
        r"""
        Elements a batch's loss sums over under `loss_normalization: tokens` (`data["num_tokens"]`, else the target
        elements not equal to `ignore_index`); `None` under `batch`.
        """
        tokens = self._stepper.tokens
        return None if tokens is None else tokens.count(data, target)

    def record(self, pred: Any, target: Any, loss: torch.Tensor | None, tokens: Any = None) -> None:
        r"""
        Add a batch to the meters (`loss`, weighted by the batch size, or per element under
        `loss_normalization: tokens`) and to the current metrics, without a device sync.
        """
        if loss is not None:
            stepper = self._stepper
            if stepper.tokens is None and stepper.skips is None:
                self._loss_meter.update(loss, n=samples_of(target, pred))
            else:  # loss_normalization: tokens (per element), skip_nonfinite_steps (non-finite losses weigh 0)
                tokens = self.count_tokens(None, target) if tokens is None else tokens
                weight = samples_of(target, pred) if tokens is None else tokens
                finite_only = stepper.skips is not None and self._mode == RunnerMode.train
                self._loss_meter.update(*loss_entry(loss, weight, tokens is not None, finite_only))
        metrics = self.current_metrics
        if metrics is not None:
            metrics.update(pred.detach(), target)

    unpack = staticmethod(unpack_batch)

    def to_device(self, data: Any) -> Any:
        r"""Move a batch to `device` in the main process (non-blocking from pinned memory on CUDA)."""
        return data if self._batches_stay else to_device(data, self._device, non_blocking=True)

    # Precision, accumulation and the optimizer step (state in `OptimizerStepper`)

    @property
    def precision(self) -> Precision:
        r"""The [`Precision`][danling.runner.loop.precision.Precision] chosen from `config.precision`."""
        return self._stepper.precision

    @property
    def scaler(self) -> torch.amp.GradScaler:
        r"""The gradient scaler (enabled under `fp16` only)."""
        return self._stepper.precision.scaler

    def autocast(self) -> AbstractContextManager:
        r"""The forward pass's context: a new `torch.autocast` in `config.precision` per call, a no-op in float32."""
        return self._stepper.precision.autocast()

    def accumulate(self) -> AbstractContextManager:
        r"""
        One micro-step's context: gradient sync suppressed (`no_sync`) on every micro-step but the last of an
        accumulation window, so gradients are reduced once per optimizer step; wrap the forward and `advance`. Until
        the model's FLOPs per sample are known, it also counts them
        ([`ModelFlops`][danling.runner.reporting.flops.ModelFlops]).
        """
        context = self._stepper.no_sync(self.model, self._parallel)
        flops = self.telemetry.flops  # counted on the first training batch (see `ModelFlops`), unless given
        return context if flops.done else flops.count(context, self.telemetry.batches, self.telemetry.samples)

    def advance(self, loss: torch.Tensor, tokens: Any = None) -> None:
        r"""
        Backward `loss` (divided by its window's size, or counted by `tokens` under `loss_normalization: tokens`, scaled
        under fp16) and, at the end of each accumulation window,
        [`optimizer_step`][danling.runner.TorchRunner.optimizer_step].
        """
        if self._stepper.backward(loss, tokens):
            self.optimizer_step()

    def optimizer_step(self) -> None:
        r"""
        Clip, step and clear the gradients, update the EMA and the scheduler and count the step; a step the fp16
        scaler (or `skip_nonfinite_steps`) skips changes none of them. See
        [`OptimizerStepper.step`][danling.runner.loop.stepping.OptimizerStepper.step].
        """
        telemetry = self.telemetry  # the batch of the epoch taking the step, those a resume skipped included
        model, batches = self.unwrap(self.model), telemetry.replayed + telemetry.batches
        self._stepper.step(model, self.optimizer, self.scheduler, self.ema, self._config, self.log, batches)

    def _begin_accumulation(self, length: int | None) -> None:
        stepper, telemetry = self._stepper, self.telemetry
        stepper.begin_epoch(self.config, length, self.world_size, self.distributed, self.criterion)
        stepper.grad_norms.plan(self.config.get("log_interval"), stepper.windows.accum_steps, telemetry.batches_before)
        self._loss_meter = self.meters.loss

    def config_changed(self, name: str) -> None:
        r"""`runner.max_grad_norm = 1.0` (or `max_grad_value`) takes effect at the next optimizer step."""
        if name in ("max_grad_norm", "max_grad_value"):
            self._stepper.configure_clipping(self.config)

    has_nan_inf_grad = staticmethod(has_nan_inf_grad)

    def close(self) -> None:
        r"""Remove the hook the runner put on the optimizer, stop the heartbeat, then close the rest of the runner."""
        self._stepper.close()
        self._heartbeat.stop()  # the watchdog thread of a `train` still running
        super().close()

    # Checkpoints beyond BaseRunner's

    def save_position(self, split: str, batches: int, best: bool = False) -> None:
        r"""
        Save `latest` after `batches` micro-batches of the train split `split` (an optimizer-step boundary), to
        resume at the next batch; `best` also keeps it as `best.pth` (a step evaluation, `eval_steps`, that is the
        best so far). Collective when distributed (every rank's RNG state, meters and metrics).
        """
        with self._heartbeat.during("save_checkpoint"):
            self._stepper.loss_guard.check(self.distributed)  # never checkpoint non-finite weights (every rank)
            state = self._recovery.mid_epoch_state(self, split, batches)
            if self.is_main_process or self.checkpoint_manager.collective:
                self._checkpoints.commit(self, state, "latest", self.epochs, best=best, epoch_copy=False)
                self._checkpoint_saved("latest")

    def export_model(self, path: str | None = None) -> str | None:
        r"""
        Write the model's full state dict (clean names) with a manifest to `path` (default `checkpoint_dir/model.pth`)
        on rank 0 and return it (`None` elsewhere); under FSDP2 the shards are gathered (collective).
        """
        return self._checkpoints.export_model(self, path)

    def verify_resume(self, steps: int = 2, split: str | None = None) -> ResumeCheck:
        r"""
        Check that this script resumes bit for bit (trains this runner: call it on a fresh one); see
        [`verify_resume`][danling.runner.checkpointing.verification.verify_resume].
        """
        return verify_resume(self, self._recovery, steps, split, self._stepper)

    # The schedule of epochs

    def train(self, train_splits: list[str] | None = None, evaluate_splits: list[str] | None = None) -> NestedDict:
        r"""
        Train from `epoch_begin` to `epoch_end` (or exactly `step_end` optimizer steps): each epoch trains and evaluates
        ([`run_epoch`][danling.runner.TorchRunner.run_epoch]), records and saves
        ([`record_epoch`][danling.runner.TorchRunner.record_epoch]) and may stop early
        ([`should_stop`][danling.runner.TorchRunner.should_stop], `patience`); with `eval_steps` it also evaluates every
        that many steps (one record per evaluation, keyed by step). An epoch cut short is marked `partial: True`.
        Preemption signals are caught meanwhile (see the fault-tolerance guide).

        Returns:
            All results, `epoch -> split -> metric -> value` (`step -> record` with `eval_steps`).

        Raises:
            ValueError: If neither `epoch_end` nor `step_end` is set, or `epoch_end < epoch_begin`.
            FloatingPointError: If the training loss goes NaN/inf or the fp16 loss scale collapses (naming the step).
        """
        train_splits = self.train_splits if train_splits is None else train_splits
        evaluate_splits = self.evaluate_splits if evaluate_splits is None else evaluate_splits
        epochs = epoch_range(self.epoch_begin, self.epoch_end, self.step_end)
        self.check_score_split([*train_splits, *evaluate_splits])
        self._evaluations = EvaluationSchedule.from_config(self.config)
        self._evaluations.start(self.results, train_splits, evaluate_splits)
        complete = self.completion()
        if complete is not None:
            self.log(f"the run is already complete ({complete}): nothing to train; returning its results")
            return self.results
        self._check_trainable(train_splits, evaluate_splits)
        self.announce("train")
        recovery = self._recovery
        recovery.check_world_size(self)
        self._callbacks.dispatch("on_train_begin", self)  # distributed: every rank agrees on its failures here
        # Inside, a callback's failure on one rank waits for the loop's own agreements (see `CallbackList`).
        training = self._callbacks.training(self.world_size)
        progress, timeout = loop_progress(self.config, self.telemetry), self.config.get("dist_timeout")
        hangs = self._heartbeat.watch(self.dir, timeout, progress, self.logger)  # names a hung rank on a timeout
        preemption = recovery.catch_preemption(self.config, self.distributed)
        finished = None
        with training, preemption, recovery.explain_timeouts(self), hangs, drained(self.async_saver):
            for epoch in epochs:
                if step_end_reached(self.steps, self.step_end):
                    self.log(f"step_end ({self.step_end}) already reached at step {self.steps}: nothing left to train")
                    break
                self.epochs = epoch
                self.record_epoch(epoch, self.run_epoch(train_splits, evaluate_splits))
                finished = None if recovery.cut_pending else epoch
                if self.should_stop():
                    break
        if finished is not None:  # a later `train()` goes on after it, as a resume from its checkpoint does
            self.epoch_begin = finished + 1
        self._callbacks.dispatch("on_train_end", self)  # after the last save committed; agreed here too
        return self.results

    def _check_trainable(self, train_splits: list[str], evaluate_splits: list[str]) -> None:
        # What `train()` refuses before it starts: a split both trained and evaluated (an epoch keeps one result
        # per split), and going on in place from an epoch a step budget cut short (its loader position is gone).
        both = [split for split in evaluate_splits if split in train_splits]
        if both:
            raise ValueError(
                f"splits {both} are both trained on and evaluated in train(); an epoch keeps one result per split. "
                f"Evaluate them after training with runner.evaluate({both}), or give the evaluation its own split name"
            )
        if self._recovery.cut_pending:
            raise ValueError(
                f"epoch {self.epochs} stopped at step {self.steps} in the middle of its data; this runner cannot go "
                f"on from there in place: build one with config.checkpoint set to its latest checkpoint "
                f"({self.checkpoint_manager.path('latest')}) and the new step_end, which resumes at the next batch"
            )

    def run_epoch(self, train_splits: list[str], evaluate_splits: list[str]) -> NestedDict:
        r"""
        One epoch of [`train`][danling.runner.TorchRunner.train]:
        [`train_epoch`][danling.runner.TorchRunner.train_epoch] on each train split (until `step_end`), then
        [`evaluate_epoch`][danling.runner.TorchRunner.evaluate_epoch] on each evaluate split.
        Train splits a mid-epoch checkpoint had finished keep their saved results.

        Returns:
            The epoch's result, `split -> metric -> value` (`partial: True` when `step_end` cut it short).
        """
        schedule = self._evaluations  # with `eval_steps`, the epoch end evaluates a step at most once
        done = lambda: step_end_reached(self.steps, self.step_end) or schedule.stop_requested  # noqa: E731
        result = self._recovery.train_splits(self.epochs, train_splits, self.train_epoch, done)
        final = done() or (self.epoch_end is not None and self.epochs + 1 >= self.epoch_end)
        if schedule.due_at_epoch_end(self.steps, final):
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
        self._heartbeat.phase = "end_epoch"
        self.append_result(*self._evaluations.place(result, epoch, self.steps))  # keyed by step with eval_steps
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.latest_score is not None:
            self.scheduler.step(self.latest_score)
        self.log(self.format_epoch_result(result))
        # Commit order: the checkpoint first, then the JSON files that describe it.
        self._stepper.loss_guard.check(self.distributed)  # every rank's losses, before the epoch's checkpoint
        self._recovery.end_of_epoch(self)
        with self._recovery.contain(), self._heartbeat.during("save_checkpoint"):  # a failed save stops every rank
            self.save_checkpoint(epochs=epoch)
            if self.async_saver is None:
                self.save_result()
            elif self.is_main_process:  # the results of now, written once the checkpoint is committed
                self.after_checkpoint(self.result_writer())
        if self.writer is not None:
            self.writer.flush()
        self._recovery.stop_if_preempted(self)

    def should_stop(self) -> bool:
        r"""Whether to stop after this epoch: `step_end` reached, or `patience` epochs without improvement."""
        if step_end_reached(self.steps, self.step_end):
            return True
        patience = self.config.get("patience")
        waited = patience_exhausted(patience, (self.scores or {}) if self.results else None, self.best_fn)
        if waited is not None:
            unit = self._evaluations.unit  # epochs, or evaluations with eval_steps
            self.log(f"stopping early: no improvement in the last {waited} {unit} (patience {patience})")
        return waited is not None

    def completion(self) -> str | None:
        r"""
        Why a run that has results has nothing left to train (`epoch_end` or `step_end` reached, `patience` exhausted),
        or `None`.

        Examples:
            >>> import tempfile
            >>> runner = TorchRunner({"log": False, "dir": tempfile.mkdtemp(), "epoch_begin": 3, "epoch_end": 3})
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
        Train one epoch on `split` and return its result (sample-weighted means over all ranks). Built from public
        methods only: override it to change an epoch and keep checkpoints, resume, preemption and logging (custom-loops
        guide).
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
        Start an epoch of `split` in `mode` and return its batches (on the host: move each with `to_device`; call
        [`end_step`][danling.runner.TorchRunner.end_step] after each but in `infer`). Sets `mode`, `split`, the model's
        mode, fresh meters and metrics and the sampler's epoch, calls `on_epoch_begin` (not in `infer`) and, training,
        opens the accumulation windows and resumes into a mid-epoch checkpoint's epoch after its last batch. `loader`
        replaces the split's dataloader. Raises `KeyError` for an unknown split, `ValueError` for a train split without
        batches.
        """
        mode = RunnerMode(mode)
        self._heartbeat.enter(mode)
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
        self._stepper.loss_guard.start(split, self.epochs, self.steps, self.accum_steps)
        batches, start = self._recovery.enter_epoch(self, split, loader)
        if start:  # resumed mid-epoch: windows of accum_steps from the first batch left
            self._stepper.windows.resume_at(start)
            self._loss_meter = self.meters.loss  # the meters the checkpoint restored
        cursor.iteration += start  # batches a resume replayed count toward log steps, as in an uninterrupted run
        self.telemetry.replayed = start
        cursor.step_end, cursor.at_boundary = self.step_end, self._recovery.boundary_hook(self)
        cursor.steps_now = partial(self._config.get, "steps")  # `self.steps`, read through the config's own API
        cursor.stepped = cursor.steps_now()
        cursor.at_boundary = self._evaluations.around(
            cursor.at_boundary, type(self)._evaluate_at_step, cursor.steps_now, self.step_end
        )
        return batches

    def _evaluate_at_step(self, split: str, batches: int, length: int | None) -> None:
        # A step evaluation (`eval_steps`) inside a training epoch, whose state is set aside meanwhile; recorded as
        # an epoch's result is: the record, the checkpoint when it is the best so far, then the JSON files.
        cursor, schedule = self._cursor, self._evaluations
        evaluate_metrics = self.metrics if self.evaluate_metrics is None else self.evaluate_metrics
        with training_set_aside(self.meters, self.current_metrics, evaluate_metrics, self.telemetry, self.model):
            result = NestedDict({name: self.evaluate_epoch(name) for name in schedule.splits})
        self.mode, self.split, self._cursor, self._loss_meter = RunnerMode.train, split, cursor, self.meters.loss
        self.append_result(*schedule.place(result, self.epochs, self.steps))
        self.log(f"{schedule.describe(self.epochs, self.steps)}\n{self.format_result(result)}")
        if self.is_best:
            self._recovery.save_position_agreed(self, split, batches, best=True)
        with self._recovery.contain():
            if self.async_saver is None:
                self.save_result()
            elif self.is_main_process:  # after the checkpoint of this step, or any earlier one in flight
                self.after_checkpoint(self.result_writer())
        if patience_exhausted(self.config.get("patience"), self.scores or {}, self.best_fn) is not None:
            schedule.stop_requested, cursor.step_end = True, self.steps  # the epoch stops at this step

    def end_step(self, split: str) -> bool:
        r"""
        After each batch: `on_step_end` (training), the log line every `log_interval` batches and, after an optimizer
        step, the `save_steps` checkpoint, step evaluations and the preemption check. No device sync. Returns whether to
        stop the epoch (`step_end` reached).
        """
        cursor = self._cursor
        cursor.iteration = iteration = cursor.iteration + 1  # batches over the run: log lines are counted so
        if cursor.on_step_end is not None:
            cursor.on_step_end(self, split)
        if cursor.log_interval is not None and iteration % cursor.log_interval == 0:
            self._log_step(split, iteration, cursor.length)
        if cursor.at_boundary is None and cursor.step_end is None:
            return False
        steps = cursor.steps_now()  # one read of the config a batch, only when something follows the steps
        if cursor.at_boundary is not None and steps != cursor.stepped:  # an optimizer step was taken
            cursor.at_boundary(self, split, iteration + cursor.offset, cursor.length)  # batches of this epoch so far
            cursor.stepped = steps
        if cursor.step_end is None or steps < cursor.step_end:
            return False
        training = self.mode == RunnerMode.train
        if training:  # this moment's state, taken before a stream is asked whether a batch is left
            self._recovery.cut(self, split, iteration + cursor.offset)
        cursor.partial = cursor.cut_short()
        if training and not cursor.partial:  # the epoch ended with the budget: an epoch-end checkpoint
            self._recovery.uncut()
        return True

    def end_epoch(self, split: str) -> NestedDict:
        r"""
        End the epoch `begin_epoch` started and return its result (`partial: True` when `step_end` cut it short):
        training, step a last window cut short, check the losses were finite (`FloatingPointError`) and call
        `on_epoch_end`; evaluation, call `on_evaluate_end`. `ValueError` if the loader yielded no batch.
        """
        cursor = self._cursor
        training = self.mode == RunnerMode.train
        cursor.check_yielded(self.telemetry.batches, training, self.distributed)
        if training:
            if self._stepper.flush(self.unwrap(self.model), synchronised=not hasattr(self.model, "no_sync")):
                self.optimizer_step()  # a window cut short by a loader without a length
            self._stepper.loss_guard.check(self.distributed)
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
            self._stepper.loss_guard.check(self.distributed)
        self.step_log(split, self._cursor.batches_done() - 1, None if length is None else length - 1)

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
    def infer(self, split: Any = "infer") -> torch.Tensor:
        r"""
        Predictions of the model for `split`: a split name, or data (a dataset, a `DataLoader` or a tensor whose rows
        are samples, batched with `config.dataloader` overlaid with `config.dataloader.infer`), in order, gathered from
        all ranks and concatenated on the CPU.
        """
        loader = None
        if not isinstance(split, str):  # data, batched with config.dataloader (and its `infer` section)
            split, loader = "infer", self._loaders.inference_loader(split, self.config.get("dataloader"))
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
        extra.update(self._stepper.grad_norms.result() if training else {})  # the same on every rank: reduced gradients
        extra.update(self.telemetry.step_stats(self.steps if training else None))
        result.update(extra)  # plain names and numbers: `update` is several times cheaper than a chanfig set each
        return result

    def get_epoch_result(self) -> NestedDict:
        r"""
        The epoch's meters and metrics, the learning rate at its end (training), and its
        [telemetry][danling.runner.reporting.telemetry.Telemetry.epoch_stats]: `samples_per_s`, `epoch_time`,
        `data_time`, `compute_time` (and `tokens_per_s`, `peak_memory_mib` when known); with
        `skip_nonfinite_steps: true`, `skipped_steps` (optimizer steps of the epoch skipped for non-finite
        gradients).
        """
        result = super().get_epoch_result()
        if self.mode == RunnerMode.train and self.optimizer is not None:
            result["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.mode == RunnerMode.train and self._stepper.skips is not None:  # skip_nonfinite_steps (loop/finite.py)
            result["skipped_steps"] = self._stepper.skips.skipped
        result.update(self.telemetry.epoch_stats())
        return result
