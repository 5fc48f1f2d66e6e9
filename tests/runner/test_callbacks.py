"""
Callbacks, the runner's extension point: every hook in order and with its arguments, passing them at construction
or with `add_callback`, a failing callback stopping the run (on every rank, naming the callback and the rank), a
per-batch hook that adds no host sync, and the built-in log, TensorBoard and progress-bar callbacks.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import danling as dl
from danling.runner import Callback, CallbackError
from danling.runner.callbacks import CallbackList, LogCallback, MetricsFileCallback, TensorBoardCallback

from .conftest import ClassifierRunner

_spec = importlib.util.spec_from_file_location("host_sync", Path(__file__).parent / "workers" / "host_sync.py")
host_sync = sys.modules.setdefault("host_sync", importlib.util.module_from_spec(_spec))  # Dynamo imports it by name
_spec.loader.exec_module(host_sync)

WORKER = Path(__file__).parent / "workers" / "callback_failure_worker.py"
DIST_TIMEOUT = 120  # what the worker sets: a rank left waiting would take this long


class Recorder(Callback):
    """Records every hook as `(hook, split, steps)`, and the arguments it got."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.arguments: list[tuple] = []

    def record(self, hook: str, runner: Any, split: str | None = None, value: Any = None) -> None:
        self.calls.append((hook, split, runner.steps))
        self.arguments.append((hook, split, value))

    def on_train_begin(self, runner):
        self.record("on_train_begin", runner)

    def on_epoch_begin(self, runner, split):
        self.record("on_epoch_begin", runner, split)

    def on_step_end(self, runner, split):
        self.record("on_step_end", runner, split)

    def on_log(self, runner, split, result):
        self.record("on_log", runner, split, result)

    def on_epoch_end(self, runner, split, result):
        self.record("on_epoch_end", runner, split, result)

    def on_evaluate_end(self, runner, split, result):
        self.record("on_evaluate_end", runner, split, result)

    def on_save_checkpoint(self, runner, path):
        self.record("on_save_checkpoint", runner, None, path)

    def on_train_end(self, runner):
        self.record("on_train_end", runner)


def config_of(tmp_path: Path, **config: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"log": False, "dir": str(tmp_path / "run"), "epoch_end": 2, "device": "cpu"}
    settings["dataloader"] = {"batch_size": 8}  # 5 train batches of 40 samples, 2 val batches of 13
    settings.update(config)
    return settings


def train_epoch_calls(steps: range, logs: set[int], saves: set[int]) -> list[tuple]:
    # One batch = one optimizer step here: step end, then its log line, then a save_steps checkpoint.
    calls: list[tuple] = [("on_epoch_begin", "train", steps.start - 1)]
    for step in steps:
        calls.append(("on_step_end", "train", step))
        if step in logs:
            calls.append(("on_log", "train", step))
        if step in saves:
            calls.append(("on_save_checkpoint", None, step))
    return [*calls, ("on_epoch_end", "train", steps.stop - 1)]


def epoch_end_calls(steps: int) -> list[tuple]:
    # Evaluation of val (2 batches, one log line), then the epoch's checkpoint.
    return [
        ("on_epoch_begin", "val", steps),
        ("on_log", "val", steps),
        ("on_evaluate_end", "val", steps),
        ("on_save_checkpoint", None, steps),
    ]


def test_every_hook_in_order_with_its_arguments(tmp_path):
    recorder = Recorder()
    runner = ClassifierRunner(config_of(tmp_path, log_interval=2, save_steps=2), callbacks=[recorder])
    results = runner.train()
    expected = [
        ("on_train_begin", None, 0),
        # Log steps count batches over the run (2, 4, 6...); save_steps saves at 2, 4, 6, 8 (not at an epoch's end).
        *train_epoch_calls(range(1, 6), logs={2, 4}, saves={2, 4}),
        *epoch_end_calls(5),
        *train_epoch_calls(range(6, 11), logs={6, 8, 10}, saves={6, 8}),
        *epoch_end_calls(10),
        ("on_train_end", None, 10),
    ]
    assert recorder.calls == expected
    latest = runner.checkpoint_manager.path("latest")
    ends = [(hook, split, value) for hook, split, value in recorder.arguments if hook.endswith("_end") and value]
    assert ends == [
        ("on_epoch_end", "train", results[0]["train"]),
        ("on_evaluate_end", "val", results[0]["val"]),
        ("on_epoch_end", "train", results[1]["train"]),
        ("on_evaluate_end", "val", results[1]["val"]),
    ]
    assert {value for hook, _, value in recorder.arguments if hook == "on_save_checkpoint"} == {latest}
    for hook, split, value in recorder.arguments:
        if hook == "on_log":
            assert isinstance(value, Mapping)
            assert "loss" in value
            assert ("lr" in value) == (split == "train")


def test_callbacks_at_construction_need_no_argument_in_the_subclass(tmp_path):
    class MyRunner(ClassifierRunner):
        def __init__(self, config):  # takes no callbacks: the metaclass handles them
            super().__init__(config)
            self.seen_in_init = list(self.callbacks)

    first, second = Recorder(), Recorder()
    runner = MyRunner(config_of(tmp_path, epoch_end=1), callbacks=[first, second])
    assert runner.seen_in_init == []  # added once the subclass's __init__ returned
    assert list(runner.callbacks) == [first, second]
    runner.train()
    assert first.calls == second.calls
    assert first.calls[0] == ("on_train_begin", None, 0)
    assert first.calls[-1] == ("on_train_end", None, 5)


def test_add_callback(tmp_path):
    runner = ClassifierRunner(config_of(tmp_path, epoch_end=1))
    recorder = Recorder()
    assert runner.add_callback(recorder) is recorder
    assert runner.add_callback(recorder) is recorder  # once only
    assert list(runner.callbacks) == [recorder]
    with pytest.raises(TypeError, match="not the class Recorder"):
        runner.add_callback(Recorder)
    with pytest.raises(TypeError, match="is not a Callback"):
        runner.add_callback(object())
    with pytest.raises(AttributeError):
        runner.callbacks = []
    runner.evaluate(["val"])
    assert [call[0] for call in recorder.calls] == ["on_epoch_begin", "on_log", "on_log", "on_evaluate_end"]


def test_callbacks_run_in_order_after_the_built_in_ones(tmp_path):
    class LineSeen(Callback):
        def __init__(self, log_file: str) -> None:
            self.log_file = log_file
            self.lines: list[bool] = []

        def on_log(self, runner, split, result):
            self.lines.append(runner.format_log_step(result, split) in Path(self.log_file).read_text())

    runner = ClassifierRunner(config_of(tmp_path, log=True, tensorboard=True, epoch_end=1, log_interval=2))
    seen = runner.add_callback(LineSeen(runner.log_file))
    builtins = [LogCallback, TensorBoardCallback, MetricsFileCallback]
    assert [type(callback) for callback in runner.callbacks] == [*builtins, LineSeen]
    runner.train()
    runner.close()
    assert seen.lines == [True, True, True]  # the line was logged before this callback ran (2 train, 1 val)


def test_a_raising_callback_stops_train_naming_it(tmp_path):
    class Boom(Callback):
        def on_epoch_end(self, runner, split, result):
            raise ValueError("no space for the plot")

    after = Recorder()
    runner = ClassifierRunner(config_of(tmp_path), callbacks=[Boom(), after])
    message = r"callback Boom failed in on_epoch_end on rank 0: ValueError: no space"
    with pytest.raises(CallbackError, match=message) as info:
        runner.train()
    error = info.value
    assert (error.callback, error.hook, error.rank) == ("Boom", "on_epoch_end", 0)
    assert isinstance(error.__cause__, ValueError)
    assert runner.steps == 5  # stopped at the end of the first epoch's training, before evaluating
    assert "on_epoch_end" not in [call[0] for call in after.calls]  # the callbacks after it did not run
    assert "on_train_end" not in [call[0] for call in after.calls]


@pytest.mark.parametrize("hook", ["on_train_begin", "on_log", "on_save_checkpoint", "on_train_end"])
def test_every_hook_that_raises_stops_the_run(tmp_path, hook):
    class Boom(Callback):
        pass

    setattr(Boom, hook, lambda self, runner, *args: 1 / 0)
    runner = ClassifierRunner(config_of(tmp_path, log_interval=2), callbacks=[Boom()])
    with pytest.raises(CallbackError, match=rf"callback Boom failed in {hook} on rank 0: ZeroDivisionError"):
        runner.train()


def test_on_step_end_costs_no_host_sync(tmp_path):
    # From the end of one batch's `on_step_end` to the end of the next (loading, the step, the dispatch), nothing
    # reads a tensor on the host; log_interval is longer than the run, so no log step falls inside.
    class Window(Callback):
        def __init__(self, counter: Any, read: bool = False) -> None:
            self.counter, self.read, self.ends = counter, read, 0

        def on_step_end(self, runner, split):
            self.ends += 1
            if self.read:
                float(runner.meters.loss.val)  # what a callback must not do per batch
            self.counter.enabled = self.ends % 5 != 0  # off before the epoch's end, which may sync

    for read, expected in [(False, 0), (True, 8)]:
        counter = host_sync.HostSyncCounter()
        window = Window(counter, read)
        runner = ClassifierRunner(config_of(tmp_path, dir=str(tmp_path / str(read)), log_interval=100))
        runner.add_callback(window)
        with counter:
            runner.train()
        assert window.ends == 10
        assert len(counter.calls) == expected, counter.report()


def test_a_hook_nobody_implements_is_not_called_per_batch():
    class Logs(Callback):
        def on_log(self, runner, split, result):
            pass

    callbacks = CallbackList()
    callbacks.add(Callback())
    callbacks.add(Logs())
    assert callbacks.hook("on_step_end") is None  # the loop skips the call altogether
    assert callbacks.hook("on_log") is not None


def test_on_log_gets_the_result_its_line_shows(tmp_path):
    recorder = Recorder()
    runner = ClassifierRunner(config_of(tmp_path, log=True, epoch_end=1, log_interval=1), callbacks=[recorder])
    runner.train()
    runner.close()
    log = Path(runner.log_file).read_text()
    results = [value for hook, split, value in recorder.arguments if hook == "on_log" and split == "train"]
    assert len(results) == 5
    for index, result in enumerate(results, 1):
        shown = {"loss", "lr", "grad_norm", "samples_per_s", "tflops", "time"}
        assert set(result) == shown, result  # no more than the line shows
        assert f"training on train [{index - 1}/4]\tloss: {result['loss']:.4f}" in log


def test_on_save_checkpoint_with_async_save_runs_on_the_training_thread(tmp_path):
    class Saves(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[str, bool, bool]] = []

        def on_save_checkpoint(self, runner, path):
            self.seen.append((path, threading.current_thread() is threading.main_thread(), Path(path).exists()))

    for async_save in (False, True):
        saves = Saves()
        config = config_of(tmp_path, dir=str(tmp_path / str(async_save)), save_steps=2, async_save=async_save)
        runner = ClassifierRunner(config, callbacks=[saves])
        runner.train()
        latest = runner.checkpoint_manager.path("latest")
        assert saves.seen == [(latest, True, True)] * 6  # 4 mid-epoch saves and 2 at the epochs' ends


def test_on_train_end_when_step_end_stops_early(tmp_path):
    recorder = Recorder()
    runner = ClassifierRunner(config_of(tmp_path, epoch_end=None, step_end=7), callbacks=[recorder])
    runner.train()
    assert recorder.calls[-1] == ("on_train_end", None, 7)
    assert [call[0] for call in recorder.calls].count("on_train_end") == 1


def test_callback_error_round_trips_between_ranks():
    error = CallbackError("Uploader", "on_log", 1, "ValueError: a\nb")
    agreed = CallbackError.from_description(f"CallbackError: {error}", world_size=4)
    assert (agreed.callback, agreed.hook, agreed.rank, agreed.problem) == ("Uploader", "on_log", 1, "ValueError: a\nb")
    assert str(agreed).endswith("on rank 1 of 4: ValueError: a\nb; every rank stops")
    assert CallbackError.from_description("OSError: disk full", world_size=4) is None
    assert dl.Callback is Callback
    assert dl.CallbackError is CallbackError


# Two processes: the callback raises on rank 1 only


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict:
    out = tmp_path_factory.mktemp("callback-failure")
    started = time.monotonic()
    result = torchrun(WORKER, str(out), timeout=3 * DIST_TIMEOUT, check=False)
    wall = time.monotonic() - started
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {"result": result, "wall": wall, "reports": reports}


CASES = {
    "epoch_end": "on_epoch_end",
    "step_end": "on_step_end",
    "step_end_no_signals": "on_step_end",
    "evaluate": "on_evaluate_end",
    "train_end": "on_train_end",
}


def test_both_ranks_exit_non_zero_long_before_dist_timeout(launch):
    result = launch["result"]
    assert result.returncode != 0
    assert launch["wall"] < DIST_TIMEOUT, launch["wall"]
    assert result.stderr.count("CallbackError: callback FailsOnRankOne failed in on_train_end on rank 1 of 2") == 2
    assert sorted(launch["reports"][0]) == sorted(CASES) == sorted(launch["reports"][1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rank_raises_naming_the_callback_and_rank_1(launch, case):
    rank0, rank1 = (reports[case] for reports in launch["reports"])
    hook = CASES[case]
    for report in (rank0, rank1):
        assert report["outcome"] == "CallbackError", report
        assert (report["callback"], report["hook"], report["rank"], report["world_size"]) == (
            "FailsOnRankOne",
            hook,
            1,
            2,
        )
        assert report["message"].startswith(f"callback FailsOnRankOne failed in {hook} on rank 1 of 2: ValueError: ")
        assert report["message"].endswith("every rank stops")
        assert report["seconds"] < DIST_TIMEOUT / 3, report
    assert rank0["message"] == rank1["message"]
    assert rank0["steps"] == rank1["steps"]  # stopped at the same point
    assert rank1["cause"].startswith(f"ValueError: {hook} broke on rank 1")  # the original, where it was raised
    assert rank0["cause"] is None
    assert rank1["failed_calls"] == 1  # skipped after its failure, until the ranks agreed


def test_where_each_failure_stopped_the_run(launch):
    reports = launch["reports"][0]
    assert reports["epoch_end"]["steps"] == 4  # the end of the first epoch (4 steps of 4 per rank)
    assert reports["step_end"]["steps"] == 2  # raised at step 2; the ranks agree every 2 steps there
    assert reports["step_end_no_signals"]["steps"] == 4  # no agreement per step: the end of the epoch
    assert reports["evaluate"]["steps"] == 0
    assert reports["train_end"]["steps"] == 8


pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
