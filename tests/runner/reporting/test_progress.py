"""Step limits and progress: exact `step_end`, partial epochs, `total_steps`, plateau schedulers, bad limits."""

from __future__ import annotations

import pytest
import torch

import danling as dl

from ..conftest import ClassifierRunner


def test_step_end_is_exact_and_marks_the_cut_epoch_partial(make_runner):
    runner = make_runner(epoch_end=None, step_end=7)  # 5 steps per epoch
    results = runner.train()
    assert runner.steps == 7
    assert "partial" not in results[0]
    assert "partial" not in results[0]["train"]
    assert results[1]["partial"] is True
    assert results[1]["train"]["partial"] is True


class StreamedClassifierRunner(ClassifierRunner):
    """The classifier's 40 training samples from an IterableDataset (no `__len__`): 5 batches of 8."""

    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = Streamed(self.datasets.train)


class Streamed(torch.utils.data.IterableDataset):
    def __init__(self, base):
        self.base = base

    def __iter__(self):
        return iter(self.base)


def test_an_iterable_epoch_cut_by_step_end_is_marked_partial(make_runner):
    results = make_runner(StreamedClassifierRunner, epoch_end=None, step_end=7).train()
    assert list(results) == [0, 1]
    assert "partial" not in results[0]
    assert results[1]["partial"] is True
    assert results[1]["train"]["partial"] is True


def test_an_iterable_epoch_ending_exactly_at_step_end_is_not_partial(make_runner):
    results = make_runner(StreamedClassifierRunner, epoch_end=None, step_end=5).train()
    assert list(results) == [0]
    assert "partial" not in results[0]
    assert "partial" not in results[0]["train"]


def test_step_end_is_exact_with_accumulation(make_runner):
    runner = make_runner(epoch_end=None, step_end=4, accum_steps=2)  # 3 steps per epoch (2 + 2 + 1 batches)
    runner.train()
    assert runner.steps == 4


def test_a_finished_run_launched_again_trains_no_further(make_runner):
    runner = make_runner(epoch_end=None, step_end=7)
    runner.train()
    weights = [p.detach().clone() for p in runner.model.parameters()]
    checkpoint = f"{runner.checkpoint_dir}/latest.pth"
    resumed = make_runner(epoch_end=None, step_end=7, checkpoint=checkpoint, dir=runner.dir)
    results = resumed.train()
    assert resumed.steps == 7
    assert list(results) == [0, 1]
    for before, after in zip(weights, resumed.model.parameters()):
        assert torch.equal(before, after)
    runner.train()  # the same runner object, called again
    assert runner.steps == 7


def test_a_resumed_run_stops_at_step_end_too(make_runner):
    runner = make_runner(epoch_end=None, step_end=7)
    runner.config.step_end = 5
    runner.train()
    assert runner.steps == 5
    resumed = make_runner(epoch_end=None, step_end=12, checkpoint=f"{runner.checkpoint_dir}/latest.pth")
    resumed.train()
    assert resumed.steps == 12


@pytest.mark.parametrize(
    ("dataloader", "expected_per_epoch"),
    [
        ({"batch_size": 8}, 5),  # 40 samples
        ({"batch_size": 16}, 3),
        ({"batch_size": 16, "drop_last": True}, 2),
        ({"batch_size": 8, "train": {"batch_size": 6}}, 7),
        ({"batch_size": 8, "train": {"batch_size": 6, "drop_last": True}}, 6),
    ],
)
def test_total_steps_match_the_loaders_even_before_they_exist(make_runner, dataloader, expected_per_epoch):
    seen = {}

    class EarlyRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            seen["total_steps"] = self.total_steps  # read in __init__, before the dataloaders are built

    runner = make_runner(EarlyRunner, dataloader=dataloader, epoch_end=2)
    assert len(runner.dataloaders.train) == expected_per_epoch
    assert seen["total_steps"] == runner.total_steps == 2 * expected_per_epoch
    runner.train()
    assert runner.steps == runner.total_steps


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, optimizer, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.seen = []

    def step(self, *args, **kwargs):
        self.seen.append(args)
        return super().step(*args, **kwargs)


def test_reduce_on_plateau_gets_the_epoch_score(make_runner):
    class PlateauRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.scheduler = RecordingPlateau(self.optimizer, patience=0, factor=0.5)

    runner = make_runner(PlateauRunner, epoch_end=3, lr=1.0)
    results = runner.train()
    assert runner.scheduler.seen == [(results[epoch]["val"]["loss"],) for epoch in range(3)]


def test_reduce_on_plateau_from_the_registry_lowers_the_lr_on_a_plateau(make_runner):
    class PlateauRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            # The optimizer holds a parameter the model does not use: the loss stays flat, a plateau.
            self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            self.scheduler = dl.optim.SCHEDULERS.build(self.optimizer, type="reduce_on_plateau", patience=0)

    runner = make_runner(PlateauRunner, epoch_end=3)
    runner.train()
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # reduced after epochs 1 and 2


def test_epoch_end_before_epoch_begin_is_a_clear_error(make_runner):
    runner = make_runner(epoch_begin=5, epoch_end=3)
    with pytest.raises(ValueError, match=r"epoch_end \(3\).*epoch_begin \(5\)"):
        runner.train()
