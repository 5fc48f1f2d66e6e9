"""[`OPTIMIZERS`][danling.optim.OPTIMIZERS]: optimizers by name.

Every optimizer in [`torch.optim`][torch.optim] is registered under its lower-cased class name (``sgd``,
``adam``, ``adamw``, ``adafactor``, ``rmsprop``, ...), plus the aliases ``torch_adam`` and ``torch_adamw``.
Names are case-insensitive.

Examples:
    >>> import torch
    >>> from danling.optim import OPTIMIZERS
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = OPTIMIZERS.build(params=model.parameters(), type="AdamW", lr=1e-3)
    >>> type(optimizer).__name__, optimizer.defaults["lr"]
    ('AdamW', 0.001)
"""

from __future__ import annotations

from torch import optim

from ._registry import Registry

__all__ = ["OPTIMIZERS", "OptimizerRegistry"]


class OptimizerRegistry(Registry):
    """Case-insensitive registry of optimizers."""

    kind = "optimizer"


def _torch_optimizers() -> dict[str, type[optim.Optimizer]]:
    """Collect the public optimizer classes of the installed [`torch.optim`][torch.optim].

    Returns:
        Mapping from lower-cased class name to class.
    """
    found: dict[str, type[optim.Optimizer]] = {}
    for name in getattr(optim, "__all__", dir(optim)):
        component = getattr(optim, name, None)
        if isinstance(component, type) and issubclass(component, optim.Optimizer) and component is not optim.Optimizer:
            found[name.lower()] = component
    return found


OPTIMIZERS = OptimizerRegistry()

for _name, _optimizer in _torch_optimizers().items():
    OPTIMIZERS.register(_optimizer, _name)
OPTIMIZERS.register(optim.Adam, "torch_adam")
OPTIMIZERS.register(optim.AdamW, "torch_adamw")
