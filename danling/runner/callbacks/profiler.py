"""[`ProfilerCallback`][danling.runner.callbacks.ProfilerCallback]: a `torch.profiler` trace of chosen optimizer steps.

The runner adds it when `config.profile_steps` is set (checked by
[`parse_profile_steps`][danling.runner.config.parsing.parse_profile_steps]).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..config.parsing import parse_profile_steps
from .base import Callback

__all__ = ["ProfilerCallback"]

# Rows of the operator table the log shows.
TOP_OPERATORS = 10


class ProfilerCallback(Callback):
    r"""
    Records a `torch.profiler` trace of the optimizer steps `begin` to `end - 1` (counted from 0: `[10, 13]`
    skips 10 steps of warm-up and records 3), then logs the operators that took the most time of their own.

    The trace holds CPU activity, and CUDA activity when CUDA is available, with tensor shapes and memory; every
    rank writes its own, `profiles/rank{r}.{timestamp}.pt.trace.json` in the run directory, through
    `torch.profiler.tensorboard_trace_handler`: open it in TensorBoard (with the `torch-tb-profiler` plugin),
    in Perfetto (<https://ui.perfetto.dev>) or in `chrome://tracing`. The main process logs the table of the top
    operators by self time (device time when CUDA is on, else CPU time).

    The profiler starts one optimizer step before `begin` to warm up (recording nothing of it; at step 0, or when a
    resumed run is already inside the range, it starts right away), marks each recorded optimizer step in the trace
    (`ProfilerStep#N`), and stops once `runner.steps` reaches `end` (or when training ends first). Outside those
    steps it costs one comparison per batch.

    Args:
        begin: First optimizer step to record.
        end: The step to stop before.

    Attributes:
        trace_files: The trace files this process wrote.
        table: The operator table of the last recording.
    """

    def __init__(self, begin: int, end: int) -> None:
        self.begin, self.end = parse_profile_steps([begin, end])  # type: ignore[misc]
        self.profiler: Any = None
        self.directory = ""
        self.first = self.stepped = 0  # `runner.steps` when recording started, and at the last marked step
        self._before: set[str] = set()  # what `profiles/` held before
        self.trace_files: list[str] = []
        self.table = ""

    def on_epoch_begin(self, runner: Any, split: str) -> None:
        if str(runner.mode) == "train":
            self._maybe_start(runner)

    def on_step_end(self, runner: Any, split: str) -> None:
        profiler = self.profiler
        if profiler is None:
            self._maybe_start(runner)
            return
        steps = runner.steps
        if steps == self.stepped:
            return
        self.stepped = steps
        profiler.step()  # one `ProfilerStep#N` span per optimizer step; the last one writes the trace
        if steps >= self.end:
            self._stop(runner)

    def on_train_end(self, runner: Any) -> None:
        if self.profiler is not None:
            self._stop(runner)

    def _maybe_start(self, runner: Any) -> None:
        steps = runner.steps
        warmup = 1 if steps < self.begin else 0  # one step before `begin`, when there is one, to warm up
        if self.profiler is not None or not self.begin - 1 <= steps < self.end or self.begin - steps > warmup:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.directory = os.path.join(runner.dir, "profiles")
        self._before = set(os.listdir(self.directory)) if os.path.isdir(self.directory) else set()
        self.first = steps + warmup
        with warnings.catch_warnings():  # starting at step 0, or resumed inside the range: no step to warm up on
            warnings.filterwarnings("ignore", "Profiler won't be using warmup", UserWarning)
            self.profiler = profile(
                activities=activities,
                schedule=schedule(wait=0, warmup=warmup, active=self.end - self.first, repeat=1),
                on_trace_ready=tensorboard_trace_handler(self.directory, worker_name=f"rank{runner.rank}"),
                record_shapes=True,
                profile_memory=True,
            )
        self.stepped = steps
        self.profiler.start()

    def _stop(self, runner: Any) -> None:
        profiler, self.profiler = self.profiler, None
        profiler.stop()  # writes the trace, unless the last step did
        directory = self.directory
        written = sorted(set(os.listdir(directory)) - self._before) if os.path.isdir(directory) else []
        self.trace_files += [os.path.join(directory, name) for name in written]
        import torch

        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.table = profiler.key_averages().table(sort_by=sort_by, row_limit=TOP_OPERATORS)
        steps = f"{self.first} to {min(self.end, runner.steps) - 1}"
        runner.log(f"profile of optimizer steps {steps} written to {directory}; top operators:\n{self.table}")
