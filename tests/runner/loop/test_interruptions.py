"""`Recovery` on its own: it keeps no runner, so a stand-in with the runner's public attributes drives it."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from chanfig import NestedDict

from danling.metrics import AverageMeters
from danling.runner.checkpointing.restore import ResumePoint
from danling.runner.distributed.preemption import Preempted
from danling.runner.loop.interruptions import Recovery


class StandIn(SimpleNamespace):
    r"""The public attributes of a single-process runner that `Recovery` reads, and a log of what it was asked."""

    def __init__(self, **config: Any) -> None:
        super().__init__(
            config=dict(config),
            distributed=False,
            rank=0,
            world_size=1,
            steps=0,
            epochs=0,
            epoch_begin=0,
            epoch_end=2,
            step_end=None,
            total_steps=8,
            batch_size_equivalent=4,
            train_splits=["train"],
            datasets={"train": list(range(16))},
            dataloaders={},
            meters=AverageMeters(),
            current_metrics=None,
            telemetry=SimpleNamespace(run_batches={"train": 3}),
            async_saver=None,
            writer=None,
            scheduler=None,
            resume_record=None,
            checkpoint_manager=SimpleNamespace(path=lambda name: f"checkpoints/{name}.pth"),
        )
        self.saves: list[tuple] = []
        self.messages: list[tuple[int, str]] = []

    def save_position(self, split: str, batches: int, best: bool = False) -> None:
        self.saves.append((split, batches, best, self.steps))

    def checkpoint_state(self) -> dict:
        return {"runner": {"steps": self.steps}}

    def log(self, message: str, level: int = logging.INFO) -> None:
        self.messages.append((level, message))


def test_recovery_keeps_no_runner():
    runner = StandIn()
    recovery = Recovery()
    recovery.add_to(runner, {})
    recovery.boundary_hook(runner)
    assert all(value is not runner for value in vars(recovery).values())


def test_the_checkpoint_part_has_no_side_effect():
    runner = StandIn()
    recovery = Recovery()
    first, second = {}, {}
    recovery.add_to(runner, first)
    recovery.add_to(runner, second)
    assert torch.equal(first["rng"][0]["torch"], second["rng"][0]["torch"])
    assert first["position"] == second["position"]
    assert first["position"]["split"] is None
    assert first["position"]["plan"]["total_steps"] == 8
    assert first["position"]["run_batches"] == {"train": 3}


def test_a_mid_epoch_state_records_the_split_and_batches_then_forgets_them():
    runner = StandIn()
    runner.meters.update(loss=torch.tensor(0.5))
    recovery = Recovery()
    state = recovery.mid_epoch_state(runner, "train", 6)
    assert state == {"runner": {"steps": 0}}
    assert recovery.collected[0]["meters"] == runner.meters.state_dict()
    assert recovery.collected_at == (0, 0, "train", 6)
    assert (recovery.position.split, recovery.position.batches) == (None, 0)


def test_nothing_to_do_at_a_step_boundary_gives_no_hook():
    assert Recovery().boundary_hook(StandIn()) is None


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4"])
def test_save_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=f"save_steps must be a positive integer.*{value!r}"):
        Recovery().boundary_hook(StandIn(save_steps=value))


def test_save_steps_saves_once_at_each_due_step_and_never_after_the_last_batch():
    runner = StandIn(save_steps=2)
    recovery = Recovery()
    hook = recovery.boundary_hook(runner)
    for step, batches in ((1, 1), (2, 2), (3, 3), (4, 4)):
        runner.steps = step
        hook(runner, "train", batches, 4)
    assert runner.saves == [("train", 2, False, 2)]  # step 4 is the epoch's end: its checkpoint comes then
    hook(runner, "train", 4, None)  # a loader without a length: saved
    assert runner.saves[-1] == ("train", 4, False, 4)


def test_a_step_a_step_evaluation_saved_is_not_saved_again():
    runner = StandIn(save_steps=1)
    recovery = Recovery()
    hook = recovery.boundary_hook(runner)
    runner.steps = 1
    recovery.save_position_agreed(runner, "train", 1, best=True)
    hook(runner, "train", 1, 10)
    assert runner.saves == [("train", 1, True, 1)]


def test_finished_splits_of_a_resumed_epoch_keep_their_results():
    recovery = Recovery()
    recovery.resume = ResumePoint(epoch=1, split="second", batches=2, finished={"first": {"loss": 0.25}})
    ran = []

    def train_epoch(split: str) -> NestedDict:
        ran.append(split)
        return NestedDict({"loss": 1.0})

    result = recovery.train_splits(1, ["first", "second"], train_epoch, lambda: False)
    assert ran == ["second"]
    assert result["first"]["loss"] == 0.25
    assert result["second"]["loss"] == 1.0
    assert recovery.resume is None


def test_a_preempted_run_exits_with_128_plus_the_signal_and_says_where():
    runner = StandIn()
    runner.steps, runner.epochs = 7, 1
    with pytest.raises(Preempted) as raised:
        Recovery().exit_preempted(runner)
    assert raised.value.code == 143
    assert runner.messages[-1][1].startswith("preempted by a signal: stopped at step 7 of epoch 1, saved checkpoints/")
