"""Mixed precision: the autocast context and the gradient scaler, chosen once from `config.precision`."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

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

    @property
    def enabled(self) -> bool:
        r"""Whether autocast is on."""
        return self.dtype is not None

    def autocast(self) -> AbstractContextManager:
        r"""
        A context manager for one `with` block: a new `torch.autocast` for mixed precision, else a new
        `nullcontext`.

        Each call builds its own `torch.autocast`, which saves the autocast state on entering and restores it on
        leaving: blocks nest, and each thread gets its own.

        Returns:
            The context manager (entered by the caller's `with`).

        Examples:
            >>> precision = Precision("fp16", "cpu")
            >>> with precision.autocast(), precision.autocast():
            ...     torch.is_autocast_enabled("cpu")
            True
            >>> torch.is_autocast_enabled("cpu")
            False
        """
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)
