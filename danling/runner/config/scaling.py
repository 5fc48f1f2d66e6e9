"""The linear scaling rule of learning rates (Goyal et al., 2017), from config values.

[`BaseRunner.scale_lr`][danling.runner.BaseRunner.scale_lr] delegates here with its config and a way to read its
`batch_size_equivalent` (read only when needed: without dataloaders it may not be known).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from warnings import warn


def lr_scale_factor(
    config: MutableMapping,
    batch_size_equivalent: Callable[[], int],
    factor: float | None = None,
    batch_size_base: int | None = None,
) -> float:
    r"""
    The factor to scale a learning rate by, stored in `config.lr_scale_factor`: `factor`, else (without
    `batch_size_base` either) `config.lr_scale_factor`, else `batch_size_equivalent() / batch_size_base` with the
    base from the argument or `config.batch_size_base`.

    Args:
        config: The run's config (read, and written with the factor).
        batch_size_equivalent: Reads the samples per optimizer step over all processes.
        factor: The factor to use.
        batch_size_base: Batch size the learning rate was tuned for.

    Returns:
        The factor.

    Raises:
        ValueError: If neither a factor nor a base batch size is known.

    Examples:
        >>> config = {}
        >>> lr_scale_factor(config, lambda: 256, batch_size_base=64), config
        (4.0, {'lr_scale_factor': 4.0})
        >>> lr_scale_factor({"lr_scale_factor": 2.0}, lambda: 256)
        2.0
    """
    if factor is None and batch_size_base is None:
        factor = config.get("lr_scale_factor")
    if factor is None:
        if batch_size_base is None:
            batch_size_base = config.get("batch_size_base")
        if batch_size_base is None:
            raise ValueError("scale_lr needs lr_scale_factor or batch_size_base (argument or config key)")
        factor = batch_size_equivalent() / batch_size_base
    elif batch_size_base is not None:
        warn("batch_size_base is ignored when lr_scale_factor is given", RuntimeWarning, stacklevel=3)
    config["lr_scale_factor"] = factor
    return factor
