"""Mixed precision: the autocast context and the gradient scaler, chosen once from `config.precision`."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

_NULL_CONTEXT = nullcontext()  # reusable and reentrant

# Idle autocast contexts a `Precision` keeps for reuse: enough for a few nested or concurrent uses.
POOL_SIZE = 4


class PooledAutocast(torch.autocast):
    r"""
    A `torch.autocast` that goes back to its pool when its `with` block ends, so the next micro-step reuses it
    instead of paying `torch.autocast`'s constructor (a few microseconds of Python, per micro-step).

    Each object is used by one `with` block at a time: [`Precision.autocast`][danling.runner.precision.Precision]
    never hands out one that is inside a block, so nesting and threads each get their own.

    Examples:
        >>> pool = []
        >>> with PooledAutocast(pool, "cpu", dtype=torch.bfloat16) as context:
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype, context.entered
        (torch.bfloat16, True)
        >>> pool == [context], context.entered
        (True, False)
    """

    def __init__(self, pool: list, device_type: str, dtype: torch.dtype) -> None:
        super().__init__(device_type, dtype=dtype)
        self.pool = pool
        self.entered = False

    def __enter__(self) -> PooledAutocast:
        self.entered = True
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return super().__exit__(*exc_info)
        finally:
            self.entered = False
            if len(self.pool) < POOL_SIZE:
                self.pool.append(self)


# Accepted spellings of each precision; `None` (or any "full" spelling) trains in float32.
PRECISION_ALIASES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "16-mixed": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "fp32": None,
    "float32": None,
    "32": None,
    "no": None,
}


class Precision:
    r"""
    Autocast and gradient scaling for one precision, decided once so the training loop has no branches.

    `fp16` runs the forward pass in float16 under `torch.autocast` and scales the loss with a
    `torch.amp.GradScaler` (steps with inf/NaN gradients are skipped); `bf16` autocasts to bfloat16 and needs
    no scaler; `None` runs in float32.

    Args:
        precision: `"fp16"`, `"bf16"`, `None` (or an alias such as `"float16"`, `"bfloat16"`, `"fp32"`).
        device_type: `"cpu"` or `"cuda"`, the device the model runs on.

    Raises:
        ValueError: If `precision` is not one of the accepted values.

    Examples:
        >>> precision = Precision("bf16", "cpu")
        >>> with precision.autocast():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        >>> precision.scaler.is_enabled()
        False
    """

    def __init__(self, precision: str | None, device_type: str) -> None:
        if precision is not None and str(precision).lower() not in PRECISION_ALIASES:
            accepted = ", ".join(["None", *(repr(name) for name in PRECISION_ALIASES)])
            raise ValueError(f"unknown precision {precision!r}; accepted values are {accepted}")
        self.name = None if precision is None else str(precision).lower()
        self.dtype = None if precision is None else PRECISION_ALIASES[self.name]
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.dtype is torch.float16)
        self._pool: list[PooledAutocast] = []  # idle autocast contexts, reused across micro-steps

    @property
    def enabled(self) -> bool:
        r"""Whether autocast is on."""
        return self.dtype is not None

    def autocast(self) -> AbstractContextManager:
        r"""
        A context manager for one `with` block: `torch.autocast` for mixed precision (an idle one reused, see
        [`PooledAutocast`][danling.runner.precision.PooledAutocast]), else a shared `nullcontext`.

        Returns:
            The context manager (entered by the caller's `with`).
        """
        if self.dtype is None:
            return _NULL_CONTEXT
        pool = self._pool
        while pool:
            context = pool.pop()
            if not context.entered:  # one a caller kept and re-entered itself stays with that caller
                return context
        return PooledAutocast(pool, self.device_type, self.dtype)
