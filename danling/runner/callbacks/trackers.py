"""Experiment trackers (`config.trackers`): Weights & Biases and MLflow, one callback each, on the main process.

Both are optional extras: `pip install "danling[wandb]"`, `pip install "danling[mlflow]"`.
[`check_trackers`][danling.runner.callbacks.trackers.check_trackers] stops a run at its start when `trackers`
names an unknown tracker or one that is not installed;
[`tracker_callbacks`][danling.runner.callbacks.trackers.tracker_callbacks] builds the callbacks, which
[`TrackerCallback`][danling.runner.callbacks.trackers.TrackerCallback] describes.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

from danling.utils.io import to_serializable, write_atomic

from ..reporting.telemetry import scalars, step_view
from ..rundir.continuation import Continuation, continuation_of
from ..rundir.startup import PROGRESS_KEYS
from ..utils import RunnerMode
from .base import Callback

__all__ = ["TRACKERS", "TRACKERS_FILE", "TrackerCallback", "check_trackers", "record_callbacks", "tracker_callbacks"]

# Tracker name -> the module it needs (also the name of danling's extra that installs it).
TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}
# What each tracker run records about itself in the run directory, for a resumed run to continue it.
TRACKERS_FILE = "trackers.json"


def check_trackers(trackers: Any) -> list[str]:
    r"""
    The tracker names of `config.trackers` (a name or a list of names; `None`: none), checked.

    Raises:
        ValueError: If a name is not a tracker's (the message names the accepted ones), or `trackers` is neither a
            string nor a list of strings.
        ImportError: If a named tracker's package is not installed (the message gives the command that installs it).

    Examples:
        >>> check_trackers(None), check_trackers([])
        ([], [])
        >>> check_trackers(["tensorboardX"])
        Traceback (most recent call last):
        ValueError: trackers: unknown tracker 'tensorboardX'; accepted names are 'mlflow', 'wandb'
    """
    if trackers is None:
        return []
    names = [trackers] if isinstance(trackers, str) else trackers
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"trackers must be a list of tracker names ('mlflow', 'wandb'), got {trackers!r}")
    names = list(dict.fromkeys(names))  # each once, in order
    for name in names:
        if name not in TRACKERS:
            accepted = ", ".join(repr(known) for known in sorted(TRACKERS))
            raise ValueError(f"trackers: unknown tracker {name!r}; accepted names are {accepted}")
        if not _installed(TRACKERS[name]):
            raise ImportError(
                f"trackers names {name!r}, but the {TRACKERS[name]} package is not installed; install it with: "
                f'pip install "danling[{name}]"'
            )
    return names


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked), or a broken one
        return False


def tracker_callbacks(trackers: Any, main_process: bool = True) -> list[TrackerCallback]:
    r"""
    A new callback for each tracker `config.trackers` names, on the main process (others get none: only the main
    process talks to a tracker); every process checks the names (see
    [`check_trackers`][danling.runner.callbacks.trackers.check_trackers]), so that a bad one stops them all.

    Examples:
        >>> tracker_callbacks([])
        []
    """
    built: list[TrackerCallback] = []
    names = check_trackers(trackers)
    for name in names if main_process else ():
        if name == "wandb":
            from .wandb_tracker import WandbCallback

            built.append(WandbCallback())
        else:
            from .mlflow_tracker import MLflowCallback

            built.append(MLflowCallback())
    return built


def record_callbacks(config: Mapping, main_process: bool = True) -> list[Callback]:
    r"""
    The callbacks that record a run outside its log: `metrics.jsonl` with `log`, and one for each tracker
    `trackers` names; on the main process only (every process checks `trackers`, so that a bad name stops them
    all).

    Examples:
        >>> [type(callback).__name__ for callback in record_callbacks({"log": True, "trackers": []})]
        ['MetricsFileCallback']
        >>> record_callbacks({"log": True}, main_process=False)
        []
    """
    from .jsonl import MetricsFileCallback

    trackers = tracker_callbacks(config.get("trackers"), main_process)
    if not main_process:
        return []
    return [*([MetricsFileCallback()] if config.get("log") is True else []), *trackers]


class TrackerCallback(Callback):
    r"""
    What the trackers share: which tracker run a runner writes to, what it sends, and when.

    - Sent: the step result of every training log step as `{split}/step/{metric}` (what the log line computed;
      dataset-level metrics left out), and every epoch result of a train or evaluate split as `{split}/{metric}`,
      each at the global optimizer step (`runner.steps`): the names and x-axis of TensorBoard. Nothing is read
      between log steps: no host-device synchronisation is added.
    - The tracker run starts at the first thing to send (`train()`'s start, or a first evaluation), with the
      config (without its progress counters) recorded once, when the tracker run is created.
    - A run that loaded a checkpoint continues the tracker run its run directory's `trackers.json` names (the one
      the checkpoint's run wrote to, also from a new run directory); otherwise the tracker run keyed `runner.id` (the
      W&B run id) starts, or is continued: the run's id names the run, whose launches share it (change `run_name` or
      `experiment_id` for a separate tracker run).
    - One value per metric and step: within a launch, the first value of a step is sent (with accumulation,
      several log lines can share a step); a resumed run skips what the tracker run reports it has already (the
      log steps a killed launch recorded past its checkpoint), as each tracker can tell (see its class).

    The tracker run stays open after `train()` (an `evaluate()` that follows is recorded at the last step) and
    ends when the process exits, or at [`close`][danling.runner.callbacks.trackers.TrackerCallback.close].
    Subclasses implement [`open`][danling.runner.callbacks.trackers.TrackerCallback.open],
    [`send`][danling.runner.callbacks.trackers.TrackerCallback.send] and
    [`end`][danling.runner.callbacks.trackers.TrackerCallback.end].
    """

    name = "tracker"

    def __init__(self) -> None:
        self.opened = False
        self.sent: dict[str, int] = {}  # metric -> the last step sent (or found in the tracker run)
        self.floor = -1  # steps up to this one are in the tracker run already, for every metric
        self.directory: str | None = None

    # Hooks

    def on_train_begin(self, runner: Any) -> None:
        self.start(runner)

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        if runner.mode == RunnerMode.train:
            self.record(runner, scalars(step_view(result), f"{split}/step"))

    def on_epoch_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.record(runner, scalars(result, split))

    def on_evaluate_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.record(runner, scalars(result, split))

    def on_train_end(self, runner: Any) -> None:
        if self.opened:
            self.training_ended()

    # The tracker run

    def start(self, runner: Any) -> None:
        r"""Open the tracker run (once), continuing the run's when the runner loaded a checkpoint."""
        if self.opened:
            return
        self.directory = runner.dir
        at = continuation_of(runner.resume_record, runner.config.get("checkpoint"))
        earlier = self.earlier_state(at)
        key = earlier.get("key") or runner.id
        state = self.open(runner, key, earlier.get(self.name), at)
        self.opened = True
        self.save_state({"key": key, self.name: state})

    def record(self, runner: Any, values: Iterable[tuple[str, float]]) -> None:
        r"""Send the `(name, value)` pairs not sent yet at the runner's step."""
        self.start(runner)
        step = runner.steps
        if step <= self.floor:
            return
        named = ((self.metric_name(name), value) for name, value in values)
        fresh = {name: value for name, value in named if step > self.sent.get(name, -1)}
        if fresh:
            self.send(fresh, step)
            self.sent.update(dict.fromkeys(fresh, step))

    def earlier_state(self, at: Continuation | None) -> dict[str, Any]:
        r"""
        What `trackers.json` of the checkpoint's run directory recorded (of this launch's directory when the
        checkpoint was kept elsewhere), or `{}` for a run that starts afresh.
        """
        if at is None:
            return {}
        for directory in (at.source, self.directory):
            if directory is None:
                continue
            with suppress(OSError, ValueError):
                with open(os.path.join(directory, TRACKERS_FILE), encoding="utf-8") as fp:
                    state = json.load(fp)
                if isinstance(state, dict):
                    return {**state, "directory": directory}
        return {}

    def save_state(self, update: Mapping[str, Any]) -> None:
        r"""Merge `update` into `trackers.json` of the run directory (written atomically)."""
        path = os.path.join(self.directory or ".", TRACKERS_FILE)
        state: dict[str, Any] = {}
        with suppress(OSError, ValueError), open(path, encoding="utf-8") as fp:
            state = json.load(fp)
        state.update(update)
        text = json.dumps(state, indent=2, sort_keys=True)
        write_atomic(path, lambda temporary: _write_text(temporary, text))

    # What a tracker implements

    def open(self, runner: Any, key: str, earlier: Mapping[str, Any] | None, at: Continuation | None) -> dict:
        r"""
        Create or continue the tracker run `key`; set `floor` or `sent` to what it already has.

        Args:
            runner: The runner.
            key: The tracker run's key (the runner's `id`).
            earlier: What this tracker recorded in `trackers.json` before, or `None` (a new tracker run).
            at: The checkpoint the run continues from, or `None`.

        Returns:
            What to record in `trackers.json` under the tracker's name.
        """
        raise NotImplementedError

    def metric_name(self, name: str) -> str:
        r"""The tracker's name for the metric `name` (`val/acc`): the same by default."""
        return name

    def send(self, values: Mapping[str, float], step: int) -> None:
        r"""Send `values` (`name -> number`) at `step`."""
        raise NotImplementedError

    def training_ended(self) -> None:
        r"""`train()` ended: the tracker run stays open for what follows (an `evaluate()`); nothing by default."""

    def close(self) -> None:
        r"""
        End the tracker run now and flush what it holds (else it ends when the process exits); a later record
        continues it.
        """
        if self.opened:
            self.end()
            self.opened = False

    def end(self) -> None:
        r"""End the tracker run."""
        raise NotImplementedError


def run_config(config: Mapping) -> dict[str, Any]:
    r"""
    The config a tracker records: plain values (a value that is not, as its repr), without the progress counters.

    Examples:
        >>> run_config({"optim": {"lr": 0.1}, "steps": 7, "results": {}})
        {'optim': {'lr': 0.1}}
    """
    mapping = config.dict() if hasattr(config, "dict") else dict(config)
    content, _ = to_serializable({key: value for key, value in mapping.items() if key not in PROGRESS_KEYS})
    return content


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(text)
