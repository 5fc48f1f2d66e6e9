"""Step-based evaluation (`eval_steps`, `eval_at_epoch_end`): records, best, patience, TensorBoard and resume.

The runner trains a small classifier on 40 samples in batches of 8 (5 optimizer steps an epoch) without shuffling,
so that a hand-written loop of plain torch computes every number a record should hold.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.checkpointing.manifest import read_manifest
from danling.runner.distributed.preemption import Preempted
from danling.runner.loop.evaluation_schedule import EvaluationSchedule
from danling.runner.reporting.telemetry import without_telemetry

from ..conftest import ClassifierRunner, make_data

STEPS_PER_EPOCH = 5


class EvaluationRunner(ClassifierRunner):
    r"""The classifier, with actions at given optimizer steps."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.actions: dict[int, Any] = {}

    def optimizer_step(self) -> None:
        super().optimizer_step()
        action = self.actions.get(self.steps)
        if action is not None:
            action()


class Evaluations(dl.Callback):
    r"""Counts every evaluation of a split, with the step it ran at."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_evaluate_end(self, runner: Any, split: str, result: Any) -> None:
        self.steps.append(runner.steps)


def build(tmp_path: Path, name: str, callbacks: list | None = None, **config: Any) -> EvaluationRunner:
    settings: dict[str, Any] = {"device": "cpu", "log": False, "dir": str(tmp_path / name), "epoch_end": 3}
    settings["dataloader"] = {"batch_size": 8, "shuffle": False}
    settings.update(config)
    return EvaluationRunner(settings, callbacks=callbacks or [])


def with_shared_metrics(runner: EvaluationRunner) -> EvaluationRunner:
    runner.metrics = dl.metrics.multiclass_metrics(num_classes=3)  # one object for training and evaluation
    return runner


def reference(epochs: int) -> dict[int, dict[str, Any]]:
    r"""
    The same training in plain torch: after every optimizer step, the weights and the val loss (mean over the 13
    val samples); after every epoch, the mean training loss and accuracy of its batches.
    """
    train, val = make_data(40, seed=0), make_data(13, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    states, step = {}, 0
    for _ in range(epochs):
        losses, correct = [], 0
        for start in range(0, 40, 8):
            x, y = train.tensors[0][start : start + 8], train.tensors[1][start : start + 8]
            output = model(x)
            loss = criterion(output, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            losses.append(loss.item())
            correct += int((output.argmax(1) == y).sum())
            with torch.no_grad():
                val_loss = criterion(model(val.tensors[0]), val.tensors[1]).item()
            states[step] = {"val_loss": val_loss, "weights": [p.detach().clone() for p in model.parameters()]}
        states[step]["train_loss"] = sum(losses) / len(losses)
        states[step]["train_acc"] = correct / 40
    return states


def records(runner: dl.TorchRunner) -> list[tuple[int, int, list[str]]]:
    return [(r["epoch"], r["step"], sorted(k for k in r if k in ("train", "val"))) for r in runner.results.values()]


def test_every_evaluation_is_one_record_of_the_step_it_ran_at(tmp_path):
    evaluations = Evaluations()
    runner = with_shared_metrics(build(tmp_path, "run", [evaluations], eval_steps=2))
    runner.train()
    # Every second step, and each epoch end (5, 10, 15); step 10 is both and is evaluated once.
    expected = [(0, 2), (0, 4), (0, 5), (1, 6), (1, 8), (1, 10), (2, 12), (2, 14), (2, 15)]
    assert [(epoch, step) for epoch, step, _ in records(runner)] == expected
    assert list(runner.results.keys()) == [step for _, step in expected]
    assert evaluations.steps == [step for _, step in expected]
    assert [splits for *_, splits in records(runner)][:3] == [["val"], ["val"], ["train", "val"]]
    states = reference(epochs=3)
    for step, record in runner.results.items():
        assert record["val"]["loss"] == pytest.approx(states[step]["val_loss"], abs=1e-6)
    # The evaluations inside an epoch leave its training result untouched (meters and shared metrics put back).
    for step in (5, 10, 15):
        assert runner.results[step]["train"]["loss"] == pytest.approx(states[step]["train_loss"], abs=1e-6)
        assert runner.results[step]["train"]["acc"] == pytest.approx(states[step]["train_acc"], abs=1e-6)
    for ours, expected_weight in zip(runner.model.parameters(), states[15]["weights"]):
        torch.testing.assert_close(ours.detach(), expected_weight, rtol=0, atol=1e-6)
    saved = json.loads((Path(runner.dir) / "results.json").read_text())["results"]
    assert [(r["epoch"], r["step"]) for r in saved.values()] == expected
    runner.close()


def test_best_json_names_the_step_and_best_pth_holds_its_weights(tmp_path):
    # Higher loss is "better" here, so the best evaluation is an early one, inside the first epoch.
    runner = build(tmp_path, "run", eval_steps=2, score_mode="max")
    runner.train()
    states = reference(epochs=3)
    evaluated = list(runner.results.keys())
    best_step = max(evaluated, key=lambda step: states[step]["val_loss"])
    assert best_step % STEPS_PER_EPOCH != 0  # a step evaluation, not an epoch end
    best = json.loads((Path(runner.dir) / "best.json").read_text())
    assert (best["step"], best["epoch"], best["index"]) == (best_step, 0, best_step)
    assert best["val"]["loss"] == pytest.approx(states[best_step]["val_loss"], abs=1e-6)
    path = os.path.join(runner.checkpoint_dir, "best.pth")
    assert read_manifest(path)["steps"] == best_step
    saved = torch.load(path, weights_only=True)["model"]
    for ours, expected in zip(saved.values(), states[best_step]["weights"]):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    runner.close()


def test_patience_counts_evaluations_and_stops_at_the_evaluation_it_runs_out(tmp_path):
    patience = 3
    states = reference(epochs=3)
    best, waited, stop = None, 0, None
    for step in range(1, 16):  # by hand: "max" of a loss, ties improve
        loss = states[step]["val_loss"]
        if best is None or loss >= best:
            best, waited = loss, 0
        else:
            waited += 1
        if waited >= patience:
            stop = step
            break
    assert stop is not None
    assert stop % STEPS_PER_EPOCH != 0  # it runs out inside an epoch
    evaluations = Evaluations()
    runner = build(tmp_path, "run", [evaluations], eval_steps=1, score_mode="max", patience=patience)
    runner.train()
    assert runner.steps == stop
    assert list(runner.results.keys()) == list(range(1, stop + 1))
    assert evaluations.steps == list(range(1, stop + 1))  # the epoch end at the stop adds no evaluation
    last = runner.results[stop]
    assert last["train"]["partial"] is True
    assert runner.completion() is not None  # resuming this run trains nothing more
    runner.close()


def test_without_epoch_end_evaluations_a_run_still_evaluates_its_last_step(tmp_path):
    evaluations = Evaluations()
    runner = build(tmp_path, "run", [evaluations], eval_steps=3, eval_at_epoch_end=False, epoch_end=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.train()
    assert not [w for w in caught if "score_split" in str(w.message)]  # val is inferred, not a fallback
    # Steps 3, 6, 9, and 10, the last; epoch 0 ends at step 5 with its training result alone.
    expected = [(0, 3, ["val"]), (0, 5, ["train"]), (1, 6, ["val"]), (1, 9, ["val"]), (1, 10, ["train", "val"])]
    assert records(runner) == expected
    assert evaluations.steps == [3, 6, 9, 10]
    states = reference(epochs=2)
    best_step = min((3, 6, 9, 10), key=lambda step: states[step]["val_loss"])
    assert runner.best_index == best_step  # scored on val, though the latest result but one is training alone
    runner.close()

    # A multiple of eval_steps at an epoch's last step is evaluated once, at the epoch end.
    evaluations = Evaluations()
    runner = build(tmp_path, "coincide", [evaluations], eval_steps=5, eval_at_epoch_end=False, epoch_end=2)
    runner.train()
    assert records(runner) == [(0, 5, ["train", "val"]), (1, 10, ["train", "val"])]
    assert evaluations.steps == [5, 10]
    runner.close()


def test_tensorboard_writes_each_evaluation_at_its_global_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = build(tmp_path, "run", eval_steps=2, epoch_end=2, tensorboard=True)
    runner.train()
    runner.close()
    events = EventAccumulator(runner.dir)
    events.Reload()
    scalars = events.Scalars("val/loss")
    assert [event.step for event in scalars] == [2, 4, 5, 6, 8, 10]
    expected = [runner.results[step]["val"]["loss"] for step in (2, 4, 5, 6, 8, 10)]
    assert [event.value for event in scalars] == pytest.approx(expected, rel=1e-6)
    assert [event.step for event in events.Scalars("train/loss")] == [5, 10]


def same_records(ours: dl.TorchRunner, straight: dl.TorchRunner) -> None:
    assert [(r["epoch"], r["step"]) for r in ours.results.values()] == [
        (r["epoch"], r["step"]) for r in straight.results.values()
    ]
    ours_values, straight_values = without_telemetry(ours.results), without_telemetry(straight.results)
    for step, record in straight_values.items():
        for split in ("train", "val"):
            if split in record:
                assert ours_values[step][split] == pytest.approx(record[split], abs=1e-6), (step, split)


@pytest.mark.parametrize(("accum_steps", "resume_at"), [(1, (3, 4, 5)), (2, (3, 4, 5))])
def test_resuming_a_save_steps_checkpoint_repeats_no_evaluation_and_misses_none(tmp_path, accum_steps, resume_at):
    # accum_steps 1: epochs of 5 steps, evaluations at 2, 4, 5, 6...; accum_steps 2: epochs of 3 steps (windows of
    # 2, 2 and 1 batches), evaluations at 2, 3, 4, 6 (an epoch end and a multiple of 2)... `resume_at` holds
    # checkpoints between evaluations, at step evaluations, and at epoch ends.
    # "max" of the loss: only the first evaluation is the best, so the others save no checkpoint of their own.
    settings = {"eval_steps": 2, "seed": 3, "accum_steps": accum_steps, "dataloader": {"batch_size": 8}}
    settings["score_mode"] = "max"
    straight = build(tmp_path, "straight", **settings)
    straight.train()
    saving = build(tmp_path, "saving", save_steps=1, keep_checkpoints=100, **settings)
    saving.train()
    same_records(saving, straight)
    for step in resume_at:
        checkpoint = os.path.join(saving.checkpoint_dir, f"step-{step}.pth")
        evaluations = Evaluations()
        resumed = build(tmp_path, f"resumed{step}", [evaluations], checkpoint=checkpoint, **settings)
        assert resumed.steps == step
        resumed.train()
        same_records(resumed, straight)
        assert evaluations.steps == [s for s in straight.results if s > step]  # nothing evaluated twice
        resumed.close()
    straight.close()
    saving.close()


@pytest.mark.parametrize("signal_at", [4, 5])
def test_a_sigterm_resumed_run_repeats_no_evaluation_and_misses_none(tmp_path, signal_at):
    # Step 4 is a step evaluation, step 5 the last of epoch 0: its evaluation is the epoch end's, which the
    # signal pre-empts; the resumed run must make it, once.
    settings = {"eval_steps": 2, "seed": 3, "dataloader": {"batch_size": 8}}
    straight = build(tmp_path, "straight", **settings)
    straight.train()
    first = build(tmp_path, "job", **settings)
    first.actions[signal_at] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Preempted):
        first.train()
    assert first.steps == signal_at
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    assert read_manifest(latest)["steps"] == signal_at
    first.close()
    evaluations = Evaluations()
    resumed = build(tmp_path, "job", [evaluations], checkpoint=latest, **settings)
    resumed.train()
    same_records(resumed, straight)
    assert evaluations.steps == [step for step in straight.results if step > signal_at or step == 5 == signal_at]
    resumed.close()
    straight.close()


def test_a_run_continued_in_its_directory_repairs_best_pth_to_the_best_step(tmp_path):
    # best.pth one best behind the results, as a kill between a step's latest.pth and its best.pth leaves it.
    settings = {"eval_steps": 2, "epoch_end": 1, "score_mode": "max", "save_steps": 1, "keep_checkpoints": 100}
    runner = build(tmp_path, "run", **settings)
    runner.train()
    assert runner.best_index == 2
    manager = runner.checkpoint_manager
    manager.copy_to(os.path.join(runner.checkpoint_dir, "step-1.pth"), "best")
    assert read_manifest(manager.path("best"))["steps"] == 1
    runner.close()
    continued = build(tmp_path, "run", checkpoint=os.path.join(runner.checkpoint_dir, "latest.pth"), **settings)
    assert read_manifest(manager.path("best"))["steps"] == 2
    best = torch.load(manager.path("best"), weights_only=True)["model"]
    step = torch.load(os.path.join(runner.checkpoint_dir, "step-2.pth"), weights_only=True)["model"]
    for name, tensor in step.items():
        assert torch.equal(best[name], tensor)
    continued.close()


def test_deciding_whether_to_evaluate_reads_no_tensor(tmp_path):
    spec = importlib.util.spec_from_file_location("host_sync", Path(__file__).parents[1] / "workers" / "host_sync.py")
    host_sync = sys.modules.setdefault("host_sync", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(host_sync)

    class Counting(EvaluationRunner):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.counter, self.quiet_steps = host_sync.HostSyncCounter(), 0

        def end_step(self, split: str) -> bool:
            if self.mode != "train":
                return super().end_step(split)
            records, calls = len(self.results), len(self.counter.calls)
            self.counter.enabled = True
            try:
                return super().end_step(split)
            finally:
                self.counter.enabled = False
                if len(self.results) != records:  # this step evaluated: that reads the device, as epoch ends do
                    del self.counter.calls[calls:]
                else:
                    self.quiet_steps += 1

    settings = {"device": "cpu", "log": False, "dir": str(tmp_path / "run"), "epoch_end": 2, "eval_steps": 3}
    settings.update(log_interval=1000, dataloader={"batch_size": 8})
    runner = Counting(settings)
    with runner.counter:
        runner.train()
    assert [record["step"] for record in runner.results.values()] == [3, 5, 6, 9, 10]
    assert runner.quiet_steps == 7  # steps 1, 2, 4, 5 (left to the epoch end), 7, 8, 10
    assert runner.counter.calls == [], runner.counter.report()
    runner.close()


def test_bad_settings_and_mixed_records_are_refused(tmp_path):
    for config, message in [
        ({"eval_steps": 0}, "eval_steps: got 0"),
        ({"eval_steps": True}, "eval_steps: got True"),
        ({"eval_at_epoch_end": False}, "eval_at_epoch_end: got False without eval_steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(tmp_path, "bad", **config)
    with pytest.raises(ValueError, match="eval_steps must be a positive integer or None, but got 2.5"):
        EvaluationSchedule(2.5)
    runner = build(tmp_path, "mixed", epoch_end=1)
    runner.train()  # results keyed by epoch
    runner.config.eval_steps, runner.config.epoch_end = 2, 2
    with pytest.raises(ValueError, match="results are keyed by epoch"):
        runner.train()
    runner.close()


@pytest.mark.parametrize(
    ("train_splits", "split", "batches", "length", "step_end", "due"),
    [
        (["train"], "train", 4, 5, None, True),
        (["train"], "train", 5, 5, None, False),  # the epoch's last batch: the epoch end evaluates
        (["a", "b"], "a", 5, 5, None, True),  # the last batch of a split that is not the epoch's last
        (["train"], "train", 4, None, None, True),  # no length: no way to know the epoch ends here
        (["train"], "train", 4, 5, 4, False),  # training ends at this step: the epoch end evaluates
    ],
)
def test_due_at_step(train_splits, split, batches, length, step_end, due):
    schedule = EvaluationSchedule(eval_steps=4)
    schedule.start({}, train_splits, ["val"])
    assert schedule.due_at_step(4, split, batches, length, step_end) is due
    schedule.place({"val": {"loss": 1.0}}, epoch=0, steps=4)
    assert schedule.due_at_step(4, split, batches, length, step_end) is False  # never twice
