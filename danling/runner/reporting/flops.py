"""FLOPs of a model per training sample, achieved TFLOP/s per device and model FLOPs utilisation (MFU).

[`ModelFlops`][danling.runner.reporting.flops.ModelFlops] takes `flops_per_sample` from the config, or counts it
once with `torch.utils.flop_counter.FlopCounterMode` during the first training micro-step (forward and backward):
nothing runs twice, no random number is drawn, no optimizer steps more. The rates are host arithmetic on the
telemetry's sample counts and clocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

__all__ = ["PEAK_TFLOPS", "ModelFlops", "model_flops", "peak_tflops_of"]

PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("GB200",), 2500.0),
    (("B200",), 2250.0),
    (("H200", "NVL"), 835.0),
    (("H200",), 989.0),
    (("H100", "NVL"), 835.0),
    (("H100", "PCIE"), 756.0),
    (("H100",), 989.0),  # SXM (HBM3)
    (("H800", "PCIE"), 756.0),
    (("H800",), 989.0),
    (("H20",), 148.0),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10G",), 70.0),
    (("A10",), 125.0),
    (("A30",), 165.0),
    (("V100",), 125.0),  # fp16 only
    (("T4",), 65.0),  # fp16 only
    (("MI300X",), 1307.0),
    (("MI325X",), 1307.0),
    (("MI250X",), 383.0),
)
"""
Dense (no sparsity) bf16/fp16 tensor-core peak of one device in TFLOP/s, from the vendors' data sheets, by the
words of its name (`torch.cuda.get_device_name` reads "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "AMD
Instinct MI300X"...). The first entry whose words are all in the name wins, so the more specific ones come first.
"""


def peak_tflops_of(name: str) -> float | None:
    r"""
    The dense bf16/fp16 peak TFLOP/s of a device from its name (see `PEAK_TFLOPS`), or `None` when unknown.

    Examples:
        >>> peak_tflops_of("NVIDIA H100 80GB HBM3"), peak_tflops_of("NVIDIA H100 PCIe"), peak_tflops_of("NVIDIA L4")
        (989.0, 756.0, 121.0)
        >>> peak_tflops_of("NVIDIA A100-SXM4-80GB"), peak_tflops_of("NVIDIA A10"), peak_tflops_of("cpu") is None
        (312.0, 125.0, True)
    """
    words = set(name.upper().replace("-", " ").replace("_", " ").split())
    for required, tflops in PEAK_TFLOPS:
        if words.issuperset(required):
            return tflops
    return None


class ModelFlops:
    r"""
    The model's training FLOPs per sample, and what they make of a rate of samples: achieved TFLOP/s per device
    (`tflops`) and, when the device's peak is known, MFU (`mfu`, achieved over peak).

    Counting: while nothing is known, [`count`][danling.runner.reporting.flops.ModelFlops.count] wraps the context of
    the first training micro-step of an epoch (its forward and backward) in a `FlopCounterMode` and divides the
    FLOPs by the micro-batch's samples. That micro-step runs with `torch.compile` set aside
    (`torch.compiler.set_stance("force_eager")`): Dynamo does not trace under a dispatch mode and would otherwise
    never compile the model afterwards; it compiles at the next step instead. Under FSDP2 every rank computes on
    gathered parameters, so the count is the whole model's.

    Args:
        per_sample: FLOPs of one training sample (forward and backward), or `None` to count them.
        peak_tflops: Peak TFLOP/s of one device, or `None` to look the device up in `PEAK_TFLOPS`.
        device: The device of this process.
        compiled: Whether the model is compiled: without `torch.compiler.set_stance` (torch < 2.6) nothing is
            counted then.

    Examples:
        >>> flops = ModelFlops(per_sample=6e9, peak_tflops=100.0)
        >>> flops.rates(samples_per_s=5000.0)
        {'tflops': 30.0, 'mfu': 0.3}
        >>> counted = ModelFlops()
        >>> with counted.count(batches=1, samples=8):
        ...     _ = torch.ones(8, 3) @ torch.ones(3, 2)
        >>> counted.per_sample  # 2 x 3 x 2 multiply-adds per sample
        12.0
    """

    def __init__(
        self,
        per_sample: float | None = None,
        peak_tflops: float | None = None,
        device: torch.device | None = None,
        compiled: bool = False,
    ) -> None:
        self.per_sample = None if per_sample is None else float(per_sample)
        set_aside = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        # Nothing left to count: given, or a compiled model that counting would leave uncompiled.
        self.done = per_sample is not None or (compiled and set_aside is None)
        self.device = torch.device("cpu") if device is None else device
        self._peak = peak_tflops
        self._peak_known = peak_tflops is not None

    @property
    def peak_tflops(self) -> float | None:
        r"""Peak TFLOP/s of one device: `peak_tflops` given, else from the CUDA device's name (`None`: unknown)."""
        if not self._peak_known:
            self._peak_known = True
            if self.device.type == "cuda" and torch.cuda.is_available():
                self._peak = peak_tflops_of(torch.cuda.get_device_name(self.device))
        return self._peak

    def count(
        self, context: AbstractContextManager | None = None, batches: int = 1, samples: int = 0
    ) -> AbstractContextManager:
        r"""
        The context of a training micro-step while the FLOPs are unknown: on the first batch of an epoch,
        `context` under a `FlopCounterMode` that sets `per_sample` when it exits; else `context` itself.

        Args:
            context: The micro-step's own context (e.g. `no_sync`), or `None`.
            batches: Batches of the epoch so far, this one included.
            samples: Samples of the epoch so far, this batch's included.
        """
        context = nullcontext() if context is None else context
        if batches != 1 or self.done:  # the first batch of an epoch: its samples are the epoch's so far
            return context
        self.done = True
        return self._counting(context, samples)

    @contextmanager
    def _counting(self, context: AbstractContextManager, samples: int) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        set_aside = getattr(torch.compiler, "set_stance", None)
        eager = nullcontext() if set_aside is None else set_aside("force_eager")
        with eager, context, counter:
            yield
        self.per_sample = counter.get_total_flops() / max(samples, 1)

    def tflops(self, samples_per_s: float) -> float | None:
        r"""Achieved TFLOP/s of one device processing `samples_per_s` samples a second (`None`: FLOPs unknown)."""
        if not self.per_sample:
            return None
        return self.per_sample * samples_per_s / 1e12

    def rates(self, samples_per_s: float) -> dict[str, float]:
        r"""
        `tflops` for a device processing `samples_per_s` samples a second, and `mfu` when the peak is known; empty
        while the FLOPs are unknown (or zero: a model without counted operations).
        """
        tflops = self.tflops(samples_per_s)
        return {} if tflops is None else self.rates_of(tflops)

    def rates_of(self, tflops: float) -> dict[str, float]:
        r"""`tflops`, and `mfu` (`tflops` over the peak) when the device's peak is known."""
        peak = self.peak_tflops
        return {"tflops": tflops} if not peak else {"tflops": tflops, "mfu": tflops / peak}


def model_flops(config: Mapping, device: torch.device) -> ModelFlops:
    r"""
    The [`ModelFlops`][danling.runner.reporting.flops.ModelFlops] of a run: `config.flops_per_sample` and
    `config.peak_tflops` when set.

    Examples:
        >>> model_flops({"flops_per_sample": 1e9}, torch.device("cpu")).per_sample
        1000000000.0
    """
    compiled = bool(config.get("compile"))
    return ModelFlops(config.get("flops_per_sample"), config.get("peak_tflops"), device, compiled)
