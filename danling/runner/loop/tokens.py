"""Token-weighted losses (`loss_normalization: tokens`): each optimizer step follows the mean over every counted element
of its global batch, however that batch is split into micro-batches and ranks.

With the default `loss_normalization: batch`, each micro-batch's loss is a mean and the runner averages those means:
when micro-batches hold different numbers of tokens (padded sequences), a token of a short micro-batch weighs more
than one of a long micro-batch, and the step depends on how the batch was split. With `tokens`, the criterion
returns the sum over the counted elements (`reduction="sum"`), the runner counts them
([`count`][danling.runner.loop.tokens.TokenNormalization.count]) and, before the optimizer step, multiplies the
gradients by `world_size / global count` ([`normalize`][danling.runner.loop.tokens.TokenNormalization.normalize]):
DDP (or FSDP) divided them by the world size, so they become the gradient of the global token mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

import torch
import torch.distributed

from danling.utils import distributed as dist_utils

from .gradients import scale_

# Accepted values of `config.loss_normalization`.
LOSS_NORMALIZATIONS = ("batch", "tokens")


def check_loss_normalization(value: Any) -> str:
    r"""
    `value` if it is an accepted `loss_normalization`.

    Raises:
        ValueError: Naming the value and the accepted ones.

    Examples:
        >>> check_loss_normalization("tokens")
        'tokens'
        >>> check_loss_normalization("token")
        Traceback (most recent call last):
        ValueError: loss_normalization: got 'token'; accepted values are 'batch', 'tokens'
    """
    if value not in LOSS_NORMALIZATIONS:
        accepted = ", ".join(repr(name) for name in LOSS_NORMALIZATIONS)
        raise ValueError(f"loss_normalization: got {value!r}; accepted values are {accepted}")
    return value


def token_normalization(config: Mapping, world_size: int = 1) -> TokenNormalization | None:
    r"""
    The [`TokenNormalization`][danling.runner.loop.tokens.TokenNormalization] that `config.loss_normalization`
    asks for (with `config.ignore_index`), or `None` for `"batch"` (the default).

    Examples:
        >>> token_normalization({}) is None, token_normalization({"loss_normalization": "tokens"}).ignore_index
        (True, -100)
    """
    if check_loss_normalization(config.get("loss_normalization", "batch")) == "batch":
        return None
    ignore_index = config.get("ignore_index", -100)
    return TokenNormalization(-100 if ignore_index is None else ignore_index, world_size)


class TokenNormalization:
    r"""
    Counts the elements of each micro-batch and turns the summed gradients of an accumulation window into the
    gradient of the mean over every counted element of the global batch.

    The count of a micro-batch is the `num_tokens` entry of a mapping batch when it has one (a number, or a tensor
    whose sum is taken), else the number of target elements not equal to `ignore_index`. The window's count stays
    on the device; distributed, it is summed across ranks by an asynchronous `all_reduce` started on the window's
    last micro-step, before its backward pass, and waited for (by the device, not the host, under NCCL) just
    before the gradients are scaled. No value is read on the host.

    Args:
        ignore_index: Target value of the elements that are not counted.
        world_size: Ranks whose gradients DDP (or FSDP) averages.

    Raises:
        ValueError: If `ignore_index` is not an integer or `world_size` not positive.

    Examples:
        >>> normalization = TokenNormalization(ignore_index=-100)
        >>> target = torch.tensor([[3, 1, -100], [2, -100, -100]])
        >>> normalization.count({"input": None}, target)
        tensor(3)
        >>> normalization.add(normalization.count(None, target), closes=False)
        >>> normalization.add(normalization.count({"num_tokens": 5}, None), closes=True)
        >>> gradients = [torch.full((2,), 16.0)]
        >>> normalization.normalize(gradients)  # the sum over 8 elements becomes their mean
        >>> gradients
        [tensor([2., 2.])]
    """

    __slots__ = ("ignore_index", "reduced", "total", "work", "world_size")

    def __init__(self, ignore_index: int = -100, world_size: int = 1) -> None:
        if not isinstance(ignore_index, Integral) or isinstance(ignore_index, bool):
            raise ValueError(f"ignore_index: got {ignore_index!r}; accepted values are integers")
        if world_size < 1:
            raise ValueError(f"world_size must be a positive integer, but got {world_size!r}")
        self.ignore_index = int(ignore_index)
        self.world_size = world_size
        self.total: Any = None  # the window's count on this rank: an int, or a tensor on the device
        self.reduced: torch.Tensor | None = None  # the count being summed across ranks
        self.work: Any = None  # the asynchronous all-reduce of `reduced`

    def count(self, data: Any, target: Any) -> Any:
        r"""
        Elements of one micro-batch: `data["num_tokens"]` (summed when a tensor), else the elements of `target`
        not equal to `ignore_index`, as a tensor on the target's device (no host read).

        Raises:
            ValueError: If the batch has no `num_tokens` and its target is not a tensor.
        """
        if isinstance(data, Mapping) and "num_tokens" in data:
            tokens = data["num_tokens"]
            if isinstance(tokens, torch.Tensor):
                return tokens.detach().sum()
            if isinstance(tokens, Integral) and not isinstance(tokens, bool):
                return int(tokens)
            raise ValueError(f"num_tokens must be an integer or a tensor, but got {type(tokens).__name__}")
        if isinstance(target, torch.Tensor):
            return (target.detach() != self.ignore_index).sum()
        raise ValueError(
            "loss_normalization 'tokens' counts the target elements not equal to ignore_index, but the target is "
            f"{type(target).__name__}; give mapping batches a 'num_tokens' entry, or pass the count yourself"
        )

    def check_criterion(self, criterion: Any) -> None:
        r"""
        Refuse a criterion that says it does not sum (`reduction` other than `"sum"`) or ignores another index.

        Raises:
            ValueError: Naming the criterion's setting and what `loss_normalization: tokens` needs.
        """
        reduction = getattr(criterion, "reduction", None)
        name = type(criterion).__name__
        if isinstance(reduction, str) and reduction != "sum":
            raise ValueError(
                f"loss_normalization 'tokens' needs a criterion that returns the summed loss, but {name} has "
                f"reduction={reduction!r}; use reduction='sum' (the runner divides by the global count)"
            )
        ignore_index = getattr(criterion, "ignore_index", None)
        if isinstance(ignore_index, int) and ignore_index != self.ignore_index:
            raise ValueError(
                f"{name} ignores index {ignore_index} but config.ignore_index is {self.ignore_index}: the runner "
                "would count elements the loss leaves out; set both to the same value"
            )

    def add(self, tokens: Any, closes: bool) -> None:
        r"""
        Add a micro-batch's count to its window; when the micro-batch `closes` the window and the run is
        distributed, start summing the window's count across ranks (asynchronously). Call before its backward.

        Raises:
            ValueError: If `tokens` is `None` (a custom `train_step` that did not count).
        """
        if tokens is None:
            raise ValueError(
                "loss_normalization is 'tokens' but advance() got no element count: call "
                "advance(loss, tokens=self.count_tokens(data, target)) in a custom train_step"
            )
        self.total = tokens if self.total is None else self.total + tokens
        if closes and self.world_size > 1:
            self._start_reduce()

    def _start_reduce(self) -> None:
        # A copy (the count may be the very tensor a meter holds), where the backend can reduce it: NCCL needs
        # the GPU (a host-to-device copy, no wait), gloo takes a tensor where it is.
        total, device = self.total, dist_utils.communication_device()
        if not isinstance(total, torch.Tensor):
            self.reduced = torch.tensor(total, dtype=torch.int64, device=device)
        else:
            dtype = total.dtype if total.is_floating_point() else torch.int64
            self.reduced = total.to(device if device.type == "cuda" else total.device, dtype, copy=True)
        self.work = torch.distributed.all_reduce(self.reduced, async_op=True)

    def normalize(self, gradients: list[torch.Tensor]) -> None:
        r"""
        Scale the window's summed gradients by `world_size / count` (the count summed across ranks, at least 1),
        then start a new window. A window cut short (its end unknown beforehand) starts its all-reduce here.
        """
        if self.total is None:
            return
        if self.world_size > 1:
            if self.work is None:
                self._start_reduce()
            self.work.wait()  # under NCCL the device waits, not the host
            total = self.reduced
        else:
            total = self.total
        if isinstance(total, torch.Tensor):
            factor = self.world_size / total.clamp(min=1).to(torch.float32)
        else:
            factor = self.world_size / max(total, 1)
        self.total, self.reduced, self.work = None, None, None
        if gradients:
            scale_(gradients, factor)

    def reset(self) -> None:
        r"""Forget the open window (a new epoch)."""
        self.total, self.reduced, self.work = None, None, None


def loss_entry(loss: torch.Tensor, weight: Any, per_element: bool, finite_only: bool) -> tuple[torch.Tensor, Any]:
    r"""
    The value and weight a batch's loss adds to the loss meter, without a host read.

    Args:
        loss: The batch's loss (a sum when `per_element`).
        weight: Its samples, or its counted elements when `per_element`.
        per_element: The loss is a sum over `weight` elements: the value is the mean per element.
        finite_only: A NaN or infinite value weighs nothing (`skip_nonfinite_steps`).

    Examples:
        >>> loss_entry(torch.tensor(6.0), torch.tensor(4), per_element=True, finite_only=False)
        (tensor(1.5000), tensor(4))
        >>> loss_entry(torch.tensor(float("nan")), 8, per_element=False, finite_only=True)
        (tensor(0.), tensor(0))
    """
    value = loss.detach()
    if value.dim() != 0:
        value = value.sum()
    if per_element:
        value = value / (weight.clamp(min=1) if isinstance(weight, torch.Tensor) else max(weight, 1))
    if finite_only:
        finite = value.isfinite()
        value, weight = torch.where(finite, value, 0.0), finite * weight
    return value, weight
