"""Runners: `BaseRunner` (config, results, I/O, checkpoints), `TorchRunner` (PyTorch loops) and `Runner`."""

from .base_runner import BaseRunner
from .config import Config
from .utils import RunnerMeta, RunnerMode, on_local_main_process, on_main_process

__all__ = [
    "BaseRunner",
    "Config",
    "RunnerMeta",
    "RunnerMode",
    "on_main_process",
    "on_local_main_process",
]
