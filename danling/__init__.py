"""DanLing: the PyTorch training loop you would write, written once, correct and fast.

Subclass a runner, assign `model`, `criterion`, `optimizer` and `datasets` in `__init__`, and call `train()`.
"""

from . import metrics, optim, runner, utils
from ._version import __version__
from .metrics import METRICS, AverageMeter, AverageMeters, MetricMeter, MetricMeters, Metrics, MultiTaskMetrics
from .optim import OPTIMIZERS, SCHEDULERS, LRScheduler
from .runner import BaseRunner, Callback, CallbackError, Config, Runner, TorchRunner
from .utils import catch, debug, ensure_dir, flexible_decorator, is_json_serializable, load, method_cache, save

__all__ = [
    "__version__",
    "metrics",
    "optim",
    "runner",
    "utils",
    "Config",
    "BaseRunner",
    "TorchRunner",
    "Runner",
    "Callback",
    "CallbackError",
    "AverageMeter",
    "AverageMeters",
    "MetricMeter",
    "MetricMeters",
    "Metrics",
    "MultiTaskMetrics",
    "METRICS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "LRScheduler",
    "save",
    "load",
    "catch",
    "debug",
    "ensure_dir",
    "flexible_decorator",
    "is_json_serializable",
    "method_cache",
]
