"""Runners: `BaseRunner` (config, results, I/O, checkpoints), `TorchRunner` (PyTorch loops) and `Runner`."""

from .base_runner import BaseRunner
from .callbacks import Callback, CallbackError
from .config import Config
from .loop.ema import ExponentialMovingAverage
from .rundir.lock import RunDirectoryLocked
from .runner import Runner
from .torch_runner import TorchRunner
from .utils import RunnerMeta, RunnerMode, on_local_main_process, on_main_process

__all__ = [
    "BaseRunner",
    "TorchRunner",
    "Runner",
    "Callback",
    "CallbackError",
    "Config",
    "ExponentialMovingAverage",
    "RunDirectoryLocked",
    "RunnerMeta",
    "RunnerMode",
    "on_main_process",
    "on_local_main_process",
]
