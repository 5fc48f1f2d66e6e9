"""Callbacks: the hooks a user extends a runner with, their dispatch, and the built-in ones (log lines,
TensorBoard, progress bar, profiler); the callbacks guide (`docs/guides/callbacks.md`) shows how to write one."""

from .base import HOOKS, Callback, CallbackError
from .builtin import LogCallback, ProgressBarCallback, TensorBoardCallback
from .dispatch import CallbackList, CallbacksMixin
from .profiler import ProfilerCallback

__all__ = [
    "HOOKS",
    "Callback",
    "CallbackError",
    "CallbackList",
    "CallbacksMixin",
    "LogCallback",
    "TensorBoardCallback",
    "ProgressBarCallback",
    "ProfilerCallback",
]
