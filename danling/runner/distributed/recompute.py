"""Activation checkpointing: blocks whose activations are recomputed in the backward pass instead of being kept.

[`ActivationCheckpointing`][danling.runner.distributed.recompute.ActivationCheckpointing] replaces the `forward`
of each chosen block, on the instance, by
[`CheckpointedForward`][danling.runner.distributed.recompute.CheckpointedForward], which runs the block's own
forward under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`. No module is added or renamed, so
state dicts (and checkpoints) keep their keys, with or without it. The parallelism policy applies it before it
compiles, wraps in DDP or shards with FSDP2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ActivationCheckpointing", "CheckpointedForward"]


class CheckpointedForward:
    r"""
    A block's forward that keeps no activation for the backward pass: it runs the block's own forward under
    `torch.utils.checkpoint.checkpoint` (non-reentrant, random state preserved so dropout recomputes the same mask),
    which recomputes it when the backward pass needs it. Without gradients (evaluation, inference) it runs the
    forward as it is.

    Args:
        forward: The block's own forward (a bound method).

    Examples:
        >>> block = nn.Linear(3, 3)
        >>> block.forward = CheckpointedForward(block.forward)
        >>> block(torch.ones(1, 3)).shape, list(block.state_dict())
        (torch.Size([1, 3]), ['weight', 'bias'])
    """

    __slots__ = ("forward",)

    def __init__(self, forward: Any) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        return self.forward(*args, **kwargs)


class ActivationCheckpointing:
    r"""
    Which blocks of a model recompute their activations, from `config.activation_checkpointing`.

    `True` chooses the blocks `fsdp.shard_modules` finds (see
    [`shard_targets`][danling.runner.distributed.parallel.shard_targets]: those classes, else the model's
    `_no_split_modules`, else every module held in an `nn.ModuleList`), and when there are none, the blocks of an
    `nn.Sequential` ([`sequential_blocks`][danling.runner.distributed.recompute.sequential_blocks]); a list of class
    names chooses every submodule of those classes; `False` or `None` none. A chosen block inside another chosen block
    is left alone: the outer one recomputes it already.

    Args:
        setting: `True`, `False`, `None`, or a list of class names (or module classes).
        shard_modules: `fsdp.shard_modules`, for `True`.

    Raises:
        ValueError: If `setting` is of another form (see
            [`parse_activation_checkpointing`][danling.runner.config.parsing.parse_activation_checkpointing]).

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> [type(block).__name__ for block in ActivationCheckpointing(["Linear"]).apply(model)]
        ['Linear', 'Linear']
        >>> ActivationCheckpointing(True).apply(model)
        Traceback (most recent call last):
        ValueError: activation_checkpointing is True, but the model has no blocks to recompute: ...
    """

    def __init__(self, setting: Any = False, shard_modules: Sequence[str] | str | None = None) -> None:
        from ..config.parsing import parse_activation_checkpointing

        self.setting = parse_activation_checkpointing(setting)
        self.shard_modules = [shard_modules] if isinstance(shard_modules, str) else shard_modules

    @property
    def enabled(self) -> bool:
        r"""Whether any block is to be recomputed."""
        return self.setting is not False

    def targets(self, model: nn.Module) -> list[nn.Module]:
        r"""
        The blocks to recompute, outermost only, in `model.modules()` order.

        Raises:
            ValueError: If a listed class matches no submodule, or `True` finds no block.
        """
        if self.setting is False:
            return []
        if self.setting is True:
            from .parallel import shard_targets

            chosen = shard_targets(model, self.shard_modules)
            if not chosen and self.shard_modules is None:
                chosen = sequential_blocks(model)
            if not chosen:
                raise ValueError(
                    "activation_checkpointing is True, but the model has no blocks to recompute: it sets no "
                    "_no_split_modules, holds no nn.ModuleList nor an nn.Sequential of blocks, and "
                    "fsdp.shard_modules is not set; list the block classes instead, e.g. "
                    "activation_checkpointing: ['Block']"
                )
        else:
            chosen = _of_classes(model, self.setting)
        return list(_outermost(model, {id(module) for module in chosen}))

    def apply(self, model: nn.Module) -> list[nn.Module]:
        r"""
        Make every target block of `model` recompute its activations (once: applying it again changes nothing).

        Returns:
            The blocks.
        """
        blocks = self.targets(model)
        for block in blocks:
            if not isinstance(block.__dict__.get("forward"), CheckpointedForward):
                block.forward = CheckpointedForward(block.forward)  # type: ignore[method-assign]
        return blocks


def sequential_blocks(model: nn.Module) -> list[nn.Module]:
    r"""
    The blocks of the `nn.Sequential` containers of `model` (the model itself included): their children that are
    modules of modules with parameters, such as `nn.Sequential(nn.Linear(...), nn.ReLU(), nn.Linear(...))` or a
    `Block`. A flat stack of layers has none: recomputing one layer alone saves nothing.

    Examples:
        >>> mlp = nn.Sequential(*[nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)) for _ in range(3)])
        >>> len(sequential_blocks(mlp)), sequential_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        (3, [])
    """
    return [
        child
        for module in model.modules()
        if isinstance(module, nn.Sequential)
        for child in module
        if next(child.children(), None) is not None and next(child.parameters(), None) is not None
    ]


def _of_classes(model: nn.Module, names: list[str]) -> list[nn.Module]:
    chosen = [module for module in model.modules() if module is not model and type(module).__name__ in names]
    missing = sorted(set(names) - {type(module).__name__ for module in chosen})
    if missing:
        present = sorted({type(module).__name__ for module in model.modules() if module is not model})
        raise ValueError(
            f"activation_checkpointing names {missing}, which match no submodule of the model; its submodules' "
            f"classes are {present}"
        )
    return chosen


def _outermost(module: nn.Module, chosen: set[int], seen: set[int] | None = None) -> Iterator[nn.Module]:
    # Depth-first in `modules()` order; a chosen module's children are not searched.
    seen = set() if seen is None else seen
    for child in module.children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        if id(child) in chosen:
            yield child
        else:
            yield from _outermost(child, chosen, seen)
