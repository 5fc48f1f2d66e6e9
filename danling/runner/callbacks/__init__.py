"""Callbacks: the hooks a user extends a runner with, their dispatch, and the built-in ones (log lines,
`metrics.jsonl`, TensorBoard, progress bar, experiment trackers, profiler); the callbacks guide
(`docs/guides/callbacks.md`) shows how to write one."""

from .base import HOOKS, Callback, CallbackError
from .builtin import LogCallback, ProgressBarCallback, TensorBoardCallback
from .dispatch import CallbackList
from .jsonl import MetricsFileCallback
from .mlflow_tracker import MLflowCallback
from .profiler import ProfilerCallback
from .trackers import TrackerCallback
from .wandb_tracker import WandbCallback

__all__ = [
    "HOOKS",
    "Callback",
    "CallbackError",
    "CallbackList",
    "LogCallback",
    "TensorBoardCallback",
    "ProgressBarCallback",
    "MetricsFileCallback",
    "TrackerCallback",
    "WandbCallback",
    "MLflowCallback",
    "ProfilerCallback",
]
