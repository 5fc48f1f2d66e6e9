"""
Counting host-device synchronisations: a `TorchFunctionMode` that records every call that makes the host wait for
a tensor's value (`item`, `tolist`, `__bool__`, `numpy`, copies from an accelerator to the host, ...) and where.

Used by `tests/runner/loop/test_host_sync.py` and the distributed workers; on CPU nothing really waits, but the same
calls would block on an accelerator, so the count is the contract.
"""

from __future__ import annotations

import traceback
from typing import Any

from torch.overrides import TorchFunctionMode

# Calls that read a tensor's value (or a data-dependent shape) back to the host.
SYNCING_CALLS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "__complex__",
        "__format__",
        "__repr__",
        "__array__",
        "nonzero",
        "masked_select",
        "unique",
        "equal",
        "allclose",
        "is_nonzero",
    }
)


class HostSyncCounter(TorchFunctionMode):
    r"""
    Records syncing calls while `enabled`; `calls` holds `(name, short stack)` pairs.

    Enter it once (`with counter:`) and switch `enabled` on only around the code under test.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self.enabled:
            name = getattr(func, "__name__", "")
            if name in SYNCING_CALLS or (name in ("to", "cpu") and _device_to_host(name, args, kwargs)):
                self.calls.append((name, "".join(traceback.format_stack(limit=8)[:-1])))
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        r"""The recorded calls, one stack each, for assertion messages."""
        return "\n".join(f"{name}:\n{stack}" for name, stack in self.calls[:5])


def _device_to_host(name: str, args: tuple, kwargs: dict | None) -> bool:
    # A copy from an accelerator to the host waits for the value; a CPU tensor staying on the CPU does not.
    source = getattr(args[0], "device", None) if args else None
    if source is None or source.type == "cpu":
        return False
    if name == "cpu":
        return True
    targets = [*args[1:], *(kwargs or {}).values()]
    return any(str(target).startswith("cpu") for target in targets if not hasattr(target, "shape"))
