"""
What one batch does in a `TorchRunner` beyond its forward: the backward of accumulation windows, clipping, the
optimizer step (through the fp16 `GradScaler`), EMA, the scheduler and step counting.

[`OptimizerStepper`][danling.runner.loop.stepping.OptimizerStepper] holds this state and gets the model, optimizer,
scheduler and EMA as arguments; the runner's `advance`, `optimizer_step`, `accumulate` and `autocast` call it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..config.checks import check_config_value
from .accumulation import AccumulationWindows
from .finite import NonFiniteLossGuard, NonFiniteSteps, loss_guard_for, nonfinite_steps
from .gradients import GradientNorms, gradients_of, nonfinite_flag, total_norm
from .precision import Precision
from .tokens import TokenNormalization, token_normalization

# A GradScaler scale below this means the fp16 gradients overflow step after step: training has diverged. From
# the default initial scale (2**16) it takes 30 overflows in a row (halving it each time) to fall below.
MIN_LOSS_SCALE = 1e-4


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


class OptimizerStepper:
    r"""
    The optimizer side of a `TorchRunner`: precision, accumulation windows, token normalisation, clipping,
    non-finite checks and the optimizer step. It holds no model or optimizer: they are arguments of each call.

    Per epoch, [`begin_epoch`][danling.runner.loop.stepping.OptimizerStepper.begin_epoch] reads the config once;
    per micro-step, [`backward`][danling.runner.loop.stepping.OptimizerStepper.backward] divides (or counts),
    scales and backwards the loss and says whether its window ended; then
    [`step`][danling.runner.loop.stepping.OptimizerStepper.step] clips, steps, clears the gradients, updates the
    EMA and the scheduler and counts the step in `config.steps`. No host-device sync in the default config.

    Args:
        precision: The [`Precision`][danling.runner.loop.precision.Precision] (autocast and the grad scaler).

    Examples:
        >>> model = nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> stepper = OptimizerStepper(Precision(None, "cpu"))
        >>> config = {"steps": 0, "accum_steps": 2}
        >>> stepper.begin_epoch(config, length=4)
        >>> for _ in range(4):
        ...     if stepper.backward(model(torch.ones(1, 2)).sum()):
        ...         stepper.step(model, optimizer, None, None, config)
        >>> config["steps"]
        2
    """

    def __init__(self, precision: Precision) -> None:
        self.precision = precision
        self.probe = StepProbe()
        self.windows = AccumulationWindows()
        self.loss_guard = NonFiniteLossGuard()
        self.grad_norms = GradientNorms()  # `grad_norm` of the steps a log line reports (loop/gradients.py)
        self.tokens: TokenNormalization | None = None  # `loss_normalization: tokens` (loop/tokens.py)
        self.skips: NonFiniteSteps | None = None  # `skip_nonfinite_steps: true` (loop/finite.py)
        self.scale_gradients = False
        self.max_grad_norm: float | None = None
        self.max_grad_value: float | None = None
        self.clips = False

    def configure_clipping(self, config: Mapping) -> None:
        r"""
        Read `max_grad_norm` and `max_grad_value` (at each epoch, and when the runner writes either).

        Raises:
            ValueError: If either is set to a value that is not a number > 0 (written to the config directly).
        """
        for key in ("max_grad_norm", "max_grad_value"):
            check_config_value(key, config.get(key))
        self.max_grad_norm = config.get("max_grad_norm")
        self.max_grad_value = config.get("max_grad_value")
        self.clips = self.max_grad_norm is not None or self.max_grad_value is not None

    def begin_epoch(
        self,
        config: Mapping,
        length: int | None,
        world_size: int = 1,
        distributed: bool = False,
        criterion: Any = None,
    ) -> None:
        r"""
        Read the config once for an epoch of `length` micro-batches (`None`: unknown): accumulation windows,
        clipping, `loss_normalization` (checking `criterion`) and `skip_nonfinite_steps`.
        """
        accum_steps = config.get("accum_steps")
        self.windows = AccumulationWindows(1 if accum_steps is None else int(accum_steps), length)
        self.scale_gradients = self.precision.scaler.is_enabled()
        self.configure_clipping(config)
        self.tokens = token_normalization(config, world_size)
        if self.tokens is not None:
            self.tokens.check_criterion(criterion)
        self.skips = nonfinite_steps(config, distributed, self.skips)
        self.loss_guard = loss_guard_for(self.skips is not None, self.loss_guard)

    def no_sync(self, model: Any, parallel: Any) -> AbstractContextManager:
        r"""
        `model`'s gradient-sync suppression (`parallel.no_sync`) on every micro-step but the last of a window, a
        no-op otherwise. A window of unknown end synchronises unless `parallel.reduces_cut_windows` (DDP can reduce
        a cut window later; FSDP2's sharded gradients cannot).
        """
        windows = self.windows
        if windows.accum_steps > 1 and not windows.is_last() and (windows.length or parallel.reduces_cut_windows):
            return parallel.no_sync(model)
        return nullcontext()

    def backward(self, loss: torch.Tensor, tokens: Any = None) -> bool:
        r"""
        Backward one micro-step's `loss`, divided by its window's real size (the last window of an epoch may be
        short) or, under `loss_normalization: tokens`, with its `tokens` counted for the step; scaled under fp16.

        Returns:
            Whether the micro-step ended its window: the optimizer steps now.
        """
        windows = self.windows
        self.loss_guard.watch(loss, windows.micro_step)
        if self.tokens is not None:
            self.tokens.add(tokens, windows.is_last())
        elif windows.accum_steps != 1:  # without accumulation every window is one micro-step: nothing to divide
            window_size = windows.size()
            if window_size != 1:
                loss = loss / window_size
        if self.scale_gradients:
            loss = self.precision.scaler.scale(loss)
        loss.backward()
        return windows.advance()

    def step(
        self,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        ema: Any,
        config: Any,
        log: Callable | None = None,
        batches: int = 0,
    ) -> None:
        r"""
        Clip, step and clear the gradients (`zero_grad(set_to_none=True)`), then update `ema` (of `model`, the
        unwrapped module) and `scheduler`, and count the step in `config["steps"]`. When a log line will report this
        step (`batches`, the micro-batches seen so far, tells), the gradient norm before clipping is kept on the device
        for it (`grad_norms`).

        A step the fp16 scaler skips (inf/NaN gradients, seen through a post-step hook: no extra sync) or that
        `skip_nonfinite_steps` skips updates none of them.

        Raises:
            FloatingPointError: If a skipped step leaves the fp16 scale below `MIN_LOSS_SCALE`
                ([`collapsed_scale_error`][danling.runner.loop.stepping.collapsed_scale_error]), logged with `log`
                first; or after `max_nonfinite_steps` skipped steps in a row.
        """
        if self.tokens is not None:  # loss_normalization: tokens (loop/tokens.py)
            self.tokens.normalize(gradients_of(model))
        skips = self.skips  # under fp16 the scaler tests the gradients itself
        if skips is not None and not self.scale_gradients and not skips.finite(gradients_of(model)):
            self._clear(optimizer)
            skips.count(True, config["steps"])
            return
        wanted = self.grad_norms.wanted(batches)  # whether a log line will show this step's norm
        if self.clips:
            self.clip(model, optimizer, wanted)
        elif wanted:
            self.precision.scaler.unscale_(optimizer)  # the true gradients' norm (a no-op but under fp16)
            self.grad_norms.record(total_norm(model.parameters()))
        skipped = False
        if self.scale_gradients:
            skipped = self.probe.step(self.precision.scaler, optimizer)
        else:
            optimizer.step()
        self._clear(optimizer)
        if skips is not None:
            skips.count(skipped, config["steps"])
        if skipped:
            self._check_scale(config["steps"], log)
            return
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step()
        count_step(config)

    def _clear(self, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.windows.pending = 0

    def clip(self, model: nn.Module, optimizer: Any, wanted: bool = False) -> None:
        r"""
        Clip the gradients of `model` (unscaled first under fp16): `max_grad_value`, then `max_grad_norm`. The norm
        before clipping is kept for the log: the one `clip_grad_norm_` returns anyway, or one computed when `wanted`.
        """
        self.precision.scaler.unscale_(optimizer)
        parameters = model.parameters()
        if self.max_grad_value is not None:
            parameters = list(parameters)
            if wanted:
                self.grad_norms.record(total_norm(parameters))
            nn.utils.clip_grad_value_(parameters, self.max_grad_value)
        if self.max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            if self.max_grad_value is None:
                self.grad_norms.record(norm)

    def _check_scale(self, steps: int, log: Callable | None) -> None:
        # The scale is read only here, after a skipped step (one sync, on top of the one `GradScaler.step` made).
        # Every rank reads the same value: under DDP the gradients are all-reduced before `unscale_` checks them,
        # so every scaler skips, and backs off at, the same steps; every rank raises at the same step.
        scale = self.precision.scaler.get_scale()
        if scale >= MIN_LOSS_SCALE:  # false for a NaN scale too
            return
        error = collapsed_scale_error(scale, steps)
        if log is not None:
            log(str(error), logging.ERROR)
        raise error

    def flush(self, model: nn.Module, synchronised: bool) -> bool:
        r"""
        Prepare the optimizer step of a window cut short (a loader without a length ended mid-window): rescale the
        gradients of `model` to the mean over the micro-steps it really had and, when its micro-steps ran without
        gradient sync (`synchronised` false, DDP), average them across ranks.

        Returns:
            Whether there was such a window: the optimizer steps now.
        """
        windows = self.windows
        pending = windows.pending
        if pending == 0:
            return False
        window_size = windows.size()  # the size the pending micro-steps were divided by
        parameters = [p for p in model.parameters() if p.grad is not None]
        if pending != window_size and self.tokens is None:  # token sums are normalized at the step
            for parameter in parameters:
                parameter.grad.mul_(window_size / pending)
        if windows.accum_steps > 1 and not synchronised:
            _average_across_ranks([parameter.grad for parameter in parameters])
        return True

    def close(self) -> None:
        r"""Remove the hook put on the optimizer (see [`StepProbe`][danling.runner.loop.stepping.StepProbe])."""
        self.probe.detach()


def unpack_batch(data: Any) -> tuple[Any, Any]:
    r"""
    Split a batch into input and target: `(input, target)` sequences or mappings with those keys.

    Raises:
        ValueError: If the batch has another shape.

    Examples:
        >>> unpack_batch((1, 2)), unpack_batch({"input": 1})
        ((1, 2), (1, None))
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


def missing_target_error(data: Any) -> ValueError:
    r"""The error of a training batch without a target, naming what the batch has."""
    got = f"mapping keys: {list(data)}" if isinstance(data, Mapping) else "its target is None"
    return ValueError(f"training needs a target, but the batch has none ({got}); add one or override train_step")


def has_nan_inf_grad(model: nn.Module) -> bool:
    r"""
    Whether any gradient of `model` holds NaN or infinity (one device sync).

    Examples:
        >>> model = nn.Linear(2, 1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> has_nan_inf_grad(model)
        False
    """
    gradients = gradients_of(model)  # tested in place, one reduction per device: no copy of every gradient
    return bool(gradients) and bool(nonfinite_flag(gradients, gradients[0].device))


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
