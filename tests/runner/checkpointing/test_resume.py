"""Exact resume: a run stopped and resumed ends where a straight run ends."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import danling as dl
from danling.runner.reporting.telemetry import without_telemetry

from ..conftest import ClassifierRunner, parameters_of


class DropoutRunner(ClassifierRunner):
    """Shuffling, dropout and a scheduler: everything that makes resume hard."""

    def __init__(self, config):
        super().__init__(config)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.scheduler = dl.optim.SCHEDULERS.build(self.optimizer, total_steps=self.total_steps, type="cosine")


class Crash(Exception):
    pass


class CrashingRunner(DropoutRunner):
    """Dies right after writing the checkpoint of epoch `crash_after`, like a preempted job."""

    def save_checkpoint(self, *args, **kwargs):
        super().save_checkpoint(*args, **kwargs)
        if self.epochs == self.config.crash_after:
            raise Crash


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_two_plus_two_epochs_equal_four_straight(make_runner, accum_steps):
    straight = make_runner(DropoutRunner, seed=7, epoch_end=4, accum_steps=accum_steps)
    straight.train()

    first = make_runner(CrashingRunner, seed=7, epoch_end=4, accum_steps=accum_steps, crash_after=1)
    with pytest.raises(Crash):
        first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    resumed = make_runner(DropoutRunner, seed=7, epoch_end=4, accum_steps=accum_steps, checkpoint=latest)
    assert resumed.epoch_begin == 2
    assert resumed.steps == first.steps
    resumed.train()

    assert resumed.steps == straight.steps
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
    assert list(resumed.results.keys()) == [0, 1, 2, 3]
    # Equal to the straight run's, number for number, but for the timings of the machine.
    assert without_telemetry(resumed.results) == without_telemetry(straight.results)
    assert resumed.best_index == straight.best_index


def test_load_checkpoint_restores_optimizer_state_and_results(make_runner):
    first = make_runner(epoch_end=2)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    other = make_runner(epoch_end=4)
    other.load_checkpoint(latest)
    assert other.steps == first.steps
    assert other.epoch_begin == 2
    assert other.config.checkpoint == latest
    assert list(other.results.keys()) == [0, 1]
    momentum = other.optimizer.state[other.optimizer.param_groups[0]["params"][0]]["momentum_buffer"]
    reference = first.optimizer.state[first.optimizer.param_groups[0]["params"][0]]["momentum_buffer"]
    assert torch.equal(momentum, reference)


def test_best_checkpoint_compares_against_the_whole_run(make_runner):
    first = make_runner(epoch_end=2)
    first.train()
    resumed = make_runner(epoch_end=3, checkpoint=os.path.join(first.checkpoint_dir, "latest.pth"))
    assert resumed.best_score == first.best_score
    assert resumed.scores.dict() == first.scores.dict()


def test_checkpoint_loads_with_weights_only_and_holds_every_part(make_runner):
    runner = make_runner(DropoutRunner, seed=1, epoch_end=1)
    runner.train()
    checkpoint = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert {"runner", "model", "optimizer", "scheduler", "rng", "results"} <= set(checkpoint)
    assert checkpoint["runner"]["seed"] == 1
    assert isinstance(checkpoint["rng"], list)
    assert {"python", "numpy", "torch"} <= set(checkpoint["rng"][0])


def test_from_checkpoint_builds_an_equal_runner(make_runner):
    first = make_runner(epoch_end=1)
    first.train()
    restored = ClassifierRunner.from_checkpoint(os.path.join(first.checkpoint_dir, "latest.pth"))
    assert restored.id == first.id
    for ours, reference in zip(parameters_of(restored), parameters_of(first)):
        assert torch.equal(ours, reference)


def trained_as_on_a_gpu(runner: dl.TorchRunner, monkeypatch: pytest.MonkeyPatch) -> str:
    r"""Train `runner`, writing its checkpoints with every tensor tagged `cuda:0`, as a run on a GPU writes them."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        runner.train()
    return os.path.join(runner.checkpoint_dir, "latest.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a plain torch.load succeeds where there is a GPU")
def test_the_injected_gpu_checkpoint_defeats_a_plain_torch_load(make_runner, monkeypatch):
    path = trained_as_on_a_gpu(make_runner(epoch_end=1), monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)


def test_a_checkpoint_written_on_a_gpu_resumes_exactly_on_the_cpu(make_runner, monkeypatch):
    straight = make_runner(seed=7, epoch_end=2)
    straight.train()
    path = trained_as_on_a_gpu(make_runner(seed=7, epoch_end=1), monkeypatch)

    resumed = make_runner(seed=7, epoch_end=2, checkpoint=path)  # read in __init__, before the device is set
    assert resumed.epoch_begin == 1
    resumed.train()
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
    assert without_telemetry(resumed.results) == without_telemetry(straight.results)


def test_every_way_of_loading_reads_a_gpu_checkpoint_on_the_cpu(make_runner, monkeypatch):
    first = make_runner(epoch_end=1)
    path = trained_as_on_a_gpu(first, monkeypatch)
    loaded, pretrained = make_runner(), make_runner()
    loaded.load_checkpoint(path)
    pretrained.load_pretrained(path)
    built = ClassifierRunner.from_checkpoint(path)
    for runner in (loaded, pretrained, built):
        for ours, reference in zip(parameters_of(runner), parameters_of(first)):
            assert torch.equal(ours, reference)
    # A `map_location` the caller gives wins over the runner's.
    with pytest.raises(dl.runner.checkpointing.CheckpointError, match="cannot be read"):
        make_runner().load_checkpoint(path, map_location=lambda storage, location: None)
