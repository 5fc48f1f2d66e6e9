"""
What one batch does in a `TorchRunner`: `train_step` and `evaluate_step`, mixed precision, gradient accumulation,
clipping, the optimizer step, EMA and step counting.

The epochs that call them are the runner's own ([`train_epoch`][danling.runner.TorchRunner.train_epoch],
[`evaluate_epoch`][danling.runner.TorchRunner.evaluate_epoch]).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..utils import to_device
from .accumulation import AccumulationWindows
from .data import samples_of
from .finite import NonFiniteLossGuard
from .gradients import GradientNorms, total_norm
from .precision import Precision

# A GradScaler scale below this means the fp16 gradients overflow step after step: training has diverged. From
# the default initial scale (2**16) it takes 30 overflows in a row (halving it each time) to fall below.
MIN_LOSS_SCALE = 1e-4

# One shared no-op context (reusable and reentrant): cheaper than a new nullcontext per micro-step.
_NULL_CONTEXT = nullcontext()


def count_step(config: Any) -> None:
    r"""
    Add one optimizer step to `config.steps`, the one place the count lives (through chanfig's own `__setitem__`,
    so every reader sees the live count: `runner.steps`, `config.steps`, `config["steps"]`, a checkpoint).

    Examples:
        >>> from danling.runner import Config
        >>> config = Config()
        >>> count_step(config)
        >>> config.steps, config["steps"], config.dict()["steps"]
        (1, 1, 1)
    """
    config["steps"] = config["steps"] + 1


class StepProbe:
    r"""
    Steps an optimizer through a `GradScaler` and tells whether the scaler skipped the step, without reading the
    device when it can.

    `GradScaler.step` calls `optimizer.step()` only when the gradients are finite, so a post-step hook
    (`Optimizer.register_step_post_hook`) that did not run means a skipped step: the probe adds no synchronisation
    to the one `GradScaler.step` makes. An optimizer that unscales inside its own step (`fused=True` in a parameter
    group, or a `step` taking `grad_scaler`) runs its step, and its hooks, even when it skips, and one without
    post-step hooks says nothing: for these (`blind`) the probe compares the scale before and after
    `GradScaler.update`, which lowers it exactly when the step was skipped (two reads of the scale per step). An
    optimizer that handles the scaler in its own step but says so neither way is not told apart: its skipped steps
    count as steps. [`detach`][danling.runner.loop.stepping.StepProbe.detach] removes the hook; the runner calls it when
    it closes.

    Examples:
        >>> parameter = torch.zeros(1, requires_grad=True)
        >>> optimizer = torch.optim.SGD([parameter], lr=0.1)
        >>> scaler = torch.amp.GradScaler("cpu")
        >>> probe = StepProbe()
        >>> scaler.scale(parameter.sum() * float("inf")).backward()
        >>> probe.step(scaler, optimizer), probe.blind
        (True, False)
        >>> optimizer.zero_grad()
        >>> scaler.scale(parameter.sum()).backward()
        >>> probe.step(scaler, optimizer)
        False
        >>> probe.detach()
    """

    __slots__ = ("blind", "handle", "optimizer", "stepped")

    def __init__(self) -> None:
        self.optimizer: Any = None
        self.handle: Any = None
        self.stepped = False
        self.blind = True

    def attach(self, optimizer: Any) -> None:
        r"""Watch `optimizer` (and stop watching the previous one)."""
        self.detach()
        self.optimizer = optimizer
        observable = hasattr(optimizer, "register_step_post_hook")
        self.handle = optimizer.register_step_post_hook(self._note) if observable else None
        self.blind = not observable or _unscales_in_step(optimizer)
        self.stepped = False

    def detach(self) -> None:
        r"""Remove the hook from the watched optimizer, if any, and forget it."""
        if self.handle is not None:
            self.handle.remove()
        self.handle = None
        self.optimizer = None

    def step(self, scaler: torch.amp.GradScaler, optimizer: Any) -> bool:
        r"""
        `scaler.step(optimizer)` then `scaler.update()`.

        Returns:
            Whether the scaler skipped the step (inf/NaN gradients).
        """
        if self.optimizer is not optimizer:
            self.attach(optimizer)  # decides, once per optimizer, whether its steps can be observed
        if self.blind:
            scaler.step(optimizer)
            scale = scaler.get_scale()
            scaler.update()
            return scaler.get_scale() < scale  # `update` backs off (lowers the scale) only after an overflow
        self.stepped = False
        scaler.step(optimizer)
        scaler.update()
        return not self.stepped

    def _note(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.stepped = True


def _unscales_in_step(optimizer: Any) -> bool:
    # Whether `GradScaler.step` hands the scaling to the optimizer's own step, which then runs even when it skips.
    if any(group.get("fused") for group in getattr(optimizer, "param_groups", ())):
        return True
    try:
        return "grad_scaler" in inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


class OptimizationMixin:
    r"""
    The batch steps of [`TorchRunner`][danling.runner.TorchRunner]: `train_step`, `evaluate_step` and what they
    use (`unpack`, `record`, `to_device`, `autocast`, `accumulate`, `advance`, the optimizer step).
    """

    config: Any
    _config: Any  # the storage behind `config`, read directly once per optimizer step
    model: Any
    optimizer: Any
    scheduler: Any
    ema: Any
    meters: Any
    _precision: Precision
    _windows: AccumulationWindows
    _loss_guard: NonFiniteLossGuard
    _step_probe: StepProbe
    _grad_norms: GradientNorms
    telemetry: Any
    _parallel: Any
    _device: torch.device
    _batches_stay: bool
    _loss_meter: Any
    criterion: Any
    current_metrics: Any
    _clips: bool = False  # whether `max_grad_norm` or `max_grad_value` is set (read once an epoch)

    # One batch

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

    def to_device(self, data: Any) -> Any:
        r"""Move a batch to `device` in the main process (non-blocking from pinned memory on CUDA)."""
        if self._batches_stay:
            return data
        return to_device(data, self._device, non_blocking=True)

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

    # The optimizer step

    def config_changed(self, name: str) -> None:
        r"""`runner.max_grad_norm = 1.0` (or `max_grad_value`) takes effect at the next optimizer step."""
        if name in ("max_grad_norm", "max_grad_value"):
            self._max_grad_norm = self.config.get("max_grad_norm")
            self._max_grad_value = self.config.get("max_grad_value")
            self._clips = self._max_grad_norm is not None or self._max_grad_value is not None

    @property
    def precision(self) -> Precision:
        r"""The [`Precision`][danling.runner.loop.precision.Precision] chosen from `config.precision`."""
        return self._precision

    @property
    def scaler(self) -> torch.amp.GradScaler:
        r"""The gradient scaler (enabled under `fp16` only)."""
        return self._precision.scaler

    def autocast(self) -> AbstractContextManager:
        r"""
        Context manager running the forward pass in `config.precision` (a new `torch.autocast` per call), or a
        no-op in float32.
        """
        return self._precision.autocast()

    def close(self) -> None:
        r"""
        Remove the hook the runner put on the optimizer (see [`StepProbe`][danling.runner.loop.stepping.StepProbe]),
        then close the rest of the runner.
        """
        self._step_probe.detach()
        super().close()  # type: ignore[misc]

    def accumulate(self) -> AbstractContextManager:
        r"""
        Context manager for one micro-step: `model.no_sync()` (or FSDP2's equivalent) on every micro-step but the
        last of an accumulation window (so gradients are reduced once per optimizer step), a no-op otherwise.
        Under FSDP2 with a loader without a length every micro-step synchronises, since a window may end with the
        epoch and its sharded gradients could not be reduced afterwards. Wrap the forward and the backward
        ([`advance`][danling.runner.TorchRunner.advance]) in it. Until the model's FLOPs per sample are known, it
        also counts them (see [`ModelFlops`][danling.runner.reporting.flops.ModelFlops]).
        """
        windows = self._windows
        parallel = self._parallel
        context = _NULL_CONTEXT
        if windows.accum_steps > 1 and not windows.is_last() and (windows.length or parallel.reduces_cut_windows):
            context = parallel.no_sync(self.model)
        telemetry = self.telemetry
        if telemetry.flops.done:
            return context
        return telemetry.flops.count(context, telemetry.batches, telemetry.samples)

    def _begin_accumulation(self, length: int | None) -> None:
        self._windows = AccumulationWindows(self.accum_steps, length)
        self._scale_gradients = self._precision.scaler.is_enabled()
        self._loss_meter = self.meters.loss
        self._max_grad_norm = self.config.get("max_grad_norm")
        self._max_grad_value = self.config.get("max_grad_value")
        self._clips = self._max_grad_norm is not None or self._max_grad_value is not None
        self._grad_norms.plan(self.config.get("log_interval"), self.accum_steps, self.telemetry.batches_before)

    def advance(self, loss: torch.Tensor) -> None:
        r"""
        Backward `loss` and, at the end of each accumulation window, step the optimizer.

        The loss is divided by the window's real size (the last window of an epoch may be short) and scaled
        under `fp16`. At the window end: unscale, clip (`max_grad_norm`, `max_grad_value`), optimizer step
        (skipped by the scaler on inf/NaN gradients), zero the gradients, update the EMA, step the scheduler,
        and count one step in `steps`.

        Args:
            loss: Loss of the micro-batch.
        """
        windows = self._windows
        self._loss_guard.watch(loss, windows.micro_step)
        if windows.accum_steps != 1:  # without accumulation every window is one micro-step: nothing to divide
            window_size = windows.size()
            if window_size != 1:
                loss = loss / window_size
        if self._scale_gradients:
            loss = self._precision.scaler.scale(loss)
        loss.backward()
        if windows.advance():
            self.optimizer_step()

    def optimizer_step(self) -> None:
        r"""
        Clip, step and clear the gradients (`optimizer.zero_grad(set_to_none=True)`), then update the EMA and the
        scheduler, and count the step.

        Under `fp16`, a step whose gradients overflow is skipped by the scaler and neither updates the EMA, nor
        steps the scheduler, nor counts in `steps`. The runner learns that the optimizer did not step from an
        optimizer post-step hook, after the synchronisation `GradScaler.step` makes anyway: no extra one. (An
        optimizer that unscales inside its own step, `fused=True`, runs its step either way: for it the scale is
        read before and after `GradScaler.update`, see [`StepProbe`][danling.runner.loop.stepping.StepProbe].)

        Raises:
            FloatingPointError: If a skipped step leaves the scale below `MIN_LOSS_SCALE`: the gradients overflow
                step after step and training has stopped making progress (see
                [`collapsed_scale_error`][danling.runner.loop.stepping.collapsed_scale_error]). Logged at `ERROR`
                first, and raised on every rank at the same step (their scales are equal).
        """
        wanted = self._grad_norms.wanted(self.telemetry.batches)  # whether a log line will show this step's norm
        if self._clips:
            self._clip_gradients(wanted)
        elif wanted:
            self._precision.scaler.unscale_(self.optimizer)  # the true gradients' norm (a no-op but under fp16)
            self._grad_norms.record(total_norm(self.unwrap(self.model).parameters()))
        skipped = False
        if self._scale_gradients:
            skipped = self._step_probe.step(self._precision.scaler, self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._windows.pending = 0
        if skipped:
            self._skipped_step()
            return
        if self.ema is not None:
            self.ema.update_parameters(self.unwrap(self.model))
        if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        count_step(self._config)

    def _clip_gradients(self, wanted: bool = False) -> None:
        # Unscaled first under fp16 (a no-op otherwise), so the limits apply to the true gradients. The norm before
        # clipping is kept for the log: the one `clip_grad_norm_` returns anyway, or one computed when `wanted`.
        self._precision.scaler.unscale_(self.optimizer)
        parameters = self.unwrap(self.model).parameters()
        if self._max_grad_value is not None:
            parameters = list(parameters)
            if wanted:
                self._grad_norms.record(total_norm(parameters))
            nn.utils.clip_grad_value_(parameters, self._max_grad_value)
        if self._max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(parameters, self._max_grad_norm)
            if self._max_grad_value is None:
                self._grad_norms.record(norm)

    def _skipped_step(self) -> None:
        # The scale is read only here, after a skipped step (one sync, on top of the one `GradScaler.step` made).
        # Every rank reads the same value: under DDP the gradients are all-reduced (averaged by hand for a window
        # cut short) before `unscale_` checks them, so every scaler skips, and backs off at, the same steps (the
        # runner refuses FSDP with fp16). Every rank thus raises at the same step, and none waits in a collective.
        scale = self._precision.scaler.get_scale()
        if scale >= MIN_LOSS_SCALE:  # false for a NaN scale too
            return
        error = collapsed_scale_error(scale, self.steps)
        log = getattr(self, "log", None)
        if log is not None:
            log(str(error), logging.ERROR)
        raise error

    @staticmethod
    def has_nan_inf_grad(model: nn.Module) -> bool:
        r"""
        Whether any gradient of `model` holds NaN or infinity (one device sync).

        Args:
            model: Module to inspect.

        Returns:
            `True` if a gradient is not finite.
        """
        grads = [p.grad.detach().reshape(-1) for p in model.parameters() if p.grad is not None]
        if not grads:
            return False
        return not bool(torch.isfinite(torch.cat(grads)).all())

    def _flush_accumulation(self) -> None:
        # A window cut short (a loader without a length ends mid-window) still gets its optimizer step, with the
        # gradients rescaled to the mean over the micro-steps it really had. Its micro-steps all ran under
        # `no_sync`, so under DDP the gradients are averaged across ranks here, or the replicas would diverge.
        windows = self._windows
        pending = windows.pending
        if pending == 0:
            return
        # The pending micro-steps were divided by the size their window would have had.
        window_size = windows.size()
        parameters = [p for p in self.unwrap(self.model).parameters() if p.grad is not None]
        if pending != window_size:
            for parameter in parameters:
                parameter.grad.mul_(window_size / pending)
        if windows.accum_steps > 1 and hasattr(self.model, "no_sync"):
            _average_across_ranks([parameter.grad for parameter in parameters])
        self.optimizer_step()


def collapsed_scale_error(scale: float, steps: int) -> FloatingPointError:
    r"""
    The error that stops a run whose fp16 loss scale collapsed below `MIN_LOSS_SCALE` after `steps` optimizer
    steps: it names the step, the scale and what to try.

    Examples:
        >>> raise collapsed_scale_error(2**-14, 174)
        Traceback (most recent call last):
        FloatingPointError: fp16 loss scale collapsed to 6.1e-05 (below 0.0001) at step 175, after 174 optimizer ...
    """
    return FloatingPointError(
        f"fp16 loss scale collapsed to {scale:.3g} (below {MIN_LOSS_SCALE:g}) at step {steps + 1}, after {steps} "
        "optimizer steps: the gradients overflow at every step, so the GradScaler skips every step and training "
        "makes no progress. Lower the learning rate, use precision='bf16' (no loss scaling), or check the data "
        "and the loss for inf/NaN"
    )


def _average_across_ranks(tensors: list[torch.Tensor]) -> None:
    # In place, as DDP's own all-reduce would have: one flattened all-reduce for all the gradients.
    from torch import distributed as dist

    if not tensors or not (dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
