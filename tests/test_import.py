"""`import danling` is cheap: no heavy optional package is loaded, and the public names of SPEC section 1 exist."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from functools import lru_cache

import pytest

import danling as dl

# `torch.distributed.checkpoint` (over a second: it loads sympy) is imported when a sharded checkpoint is used.
HEAVY_PACKAGES = (
    "tensorboard",
    "accelerate",
    "torchmetrics",
    "torcheval",
    "deepspeed",
    "pandas",
    "torch.distributed.checkpoint",
    "sympy",
)

# Public names of SPEC section 1.
PUBLIC_NAMES = (
    "Config",
    "BaseRunner",
    "TorchRunner",
    "Runner",
    "save",
    "load",
    "catch",
    "flexible_decorator",
    "method_cache",
    "ensure_dir",
    "is_json_serializable",
    "debug",
    "AverageMeter",
    "AverageMeters",
    "OPTIMIZERS",
    "SCHEDULERS",
    "LRScheduler",
    "MetricMeter",
    "MetricMeters",
    "Metrics",
    "MultiTaskMetrics",
    "METRICS",
)
SUBPACKAGES = ("runner", "utils", "metrics", "optim")
RUNNER_NAMES = (
    "BaseRunner",
    "TorchRunner",
    "Runner",
    "Config",
    "RunnerMode",
    "RunnerMeta",
    "on_main_process",
    "on_local_main_process",
)


# Each fresh interpreter times `import torch`, then `import danling`, and lists the heavy packages loaded.
PROBE = f"""
import json, os, sys, time
start = time.perf_counter()
import torch
middle = time.perf_counter()
import danling
end = time.perf_counter()
heavy = [name for name in {HEAVY_PACKAGES!r} if any(m == name or m.startswith(name + ".") for m in sys.modules)]
print(json.dumps({{"overhead": end - middle, "heavy": heavy}}), flush=True)
os._exit(0)  # skip the slow interpreter teardown of torch
"""


@lru_cache(maxsize=1)
def probe_imports(runs: int = 5) -> tuple[dict, ...]:
    # Run one after the other (in parallel they would time each other); cached, as two tests read the reports.
    reports = []
    for _ in range(runs):
        completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr
        reports.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return tuple(reports)


def test_import_does_not_load_heavy_packages() -> None:
    for report in probe_imports():
        assert report["heavy"] == []


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name(name: str) -> None:
    assert hasattr(dl, name), f"danling.{name} is missing"
    assert name in dl.__all__


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage(name: str) -> None:
    module = getattr(dl, name)
    assert module.__name__ == f"danling.{name}"


@pytest.mark.parametrize("name", RUNNER_NAMES)
def test_runner_exports(name: str) -> None:
    assert hasattr(dl.runner, name)


def test_version() -> None:
    assert isinstance(dl.__version__, str)
    assert dl.__version__


def test_import_overhead_over_torch() -> None:
    # Median over 5 fresh interpreters of (time of import danling) after (import torch). Timings are noisy, so
    # the bound is generous: it catches an accidental eager import of a heavy package, not small regressions.
    overhead = statistics.median(report["overhead"] for report in probe_imports())
    print(f"import danling overhead over import torch: {overhead:.3f} s")
    assert overhead < 1.5
