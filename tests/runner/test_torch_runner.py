"""Training, evaluation and inference loops of TorchRunner."""

from __future__ import annotations

import json
import os

import pytest
import torch
from chanfig import NestedDict
from torch import nn

import danling as dl

from .conftest import ClassifierRunner, DictDataset, parameters_of


def full_loss(runner: dl.TorchRunner, dataset) -> float:
    x, y = dataset.tensors
    model = runner.unwrap(runner.model)
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def test_train_records_every_epoch_and_counts_steps(make_runner):
    runner = make_runner(epoch_end=3)
    results = runner.train()
    assert list(results.keys()) == [0, 1, 2]
    assert set(results[0].keys()) == {"train", "val"}
    assert runner.steps == 3 * 5  # ceil(40 / 8) optimizer steps per epoch
    assert runner.epochs == 2


class MovingRunner(ClassifierRunner):
    # Overrides `to_device` on the CPU, where the runner's own would hand every batch back unchanged.
    def __init__(self, config) -> None:
        super().__init__(config)
        self.moved = 0

    def to_device(self, data):
        self.moved += 1
        return super().to_device(data)


def test_an_overridden_to_device_sees_every_training_batch_on_the_cpu(make_runner):
    runner = make_runner(MovingRunner, epoch_end=2)
    runner.train(evaluate_splits=[])
    assert runner.moved == 2 * 5  # ceil(40 / 8) batches per epoch
    assert runner.steps == 2 * 5


def test_epoch_loss_is_the_sample_weighted_mean_over_every_batch(make_runner):
    # lr = 0: the model never changes, so the epoch losses must equal the loss over the whole split.
    runner = make_runner(lr=0.0, epoch_end=1, train_size=42, val_size=13)
    result = runner.train()[0]
    assert result["val"]["loss"] == pytest.approx(full_loss(runner, runner.datasets.val), rel=1e-6)
    assert result["train"]["loss"] == pytest.approx(full_loss(runner, runner.datasets.train), rel=1e-6)


def test_drop_last_applies_to_training_only(make_runner):
    runner = make_runner(lr=0.0, epoch_end=1, train_size=42, dataloader={"batch_size": 8, "drop_last": True})
    result = runner.train()[0]
    assert len(runner.dataloaders.train) == 5
    assert len(runner.dataloaders.val) == 2
    assert runner.dataloaders.val.drop_last is False
    assert result["val"]["loss"] == pytest.approx(full_loss(runner, runner.datasets.val), rel=1e-6)


def test_mapping_batches_are_supported(make_runner):
    class MappingRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasets.train = DictDataset(self.datasets.train)
            self.datasets.val = DictDataset(self.datasets.val)

    runner = make_runner(MappingRunner, lr=0.0, epoch_end=1)
    result = runner.train()[0]
    assert result["val"]["loss"] == pytest.approx(full_loss(runner, runner.datasets.val.base), rel=1e-6)


class ModeProbe(nn.Module):
    """Records whether it ran in training mode and with gradients enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.linear(x)


def test_model_is_in_train_mode_with_grad_only_while_training(make_runner):
    class ProbeRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = ModeProbe()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    runner = make_runner(ProbeRunner, epoch_end=1)
    runner.train()
    seen = runner.model.seen
    assert seen[:5] == [(True, True)] * 5  # 5 training batches
    assert seen[5:] == [(False, False)] * 2  # 2 evaluation batches
    runner.model.seen.clear()
    runner.evaluate(["val"])
    assert runner.model.seen == [(False, False)] * 2


def test_evaluate_returns_results_per_split_without_training(make_runner):
    runner = make_runner()
    before = parameters_of(runner)
    result = runner.evaluate(["val", "train"])
    assert set(result.keys()) == {"val", "train"}
    assert all(torch.equal(a, b) for a, b in zip(before, parameters_of(runner)))
    assert runner.steps == 0


def test_infer_returns_predictions_in_dataset_order(make_runner):
    runner = make_runner()
    predictions = runner.infer("val")
    x, _ = runner.datasets.val.tensors
    with torch.no_grad():
        expected = runner.model(x)
    assert predictions.shape == (13, 3)
    torch.testing.assert_close(predictions, expected)


def test_results_and_checkpoints_are_written(make_runner):
    runner = make_runner(epoch_end=2, save_interval=1)
    runner.train()
    with open(os.path.join(runner.dir, "results.json")) as fp:
        saved = json.load(fp)
    assert saved["id"] == runner.id
    assert sorted(saved["results"].keys()) == ["0", "1"]
    assert os.path.isfile(os.path.join(runner.dir, "latest.json"))
    files = set(os.listdir(runner.checkpoint_dir))
    assert {"latest.pth", "epoch-0.pth", "epoch-1.pth"} <= files
    checkpoint = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert checkpoint["runner"]["epochs"] == 1
    assert checkpoint["runner"]["steps"] == runner.steps == 10


class ScriptedRunner(ClassifierRunner):
    """Evaluation returns scripted losses, to drive early stopping deterministically."""

    script = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]

    def evaluate_epoch(self, split="val"):
        return NestedDict({"loss": self.script[self.epochs]})


def test_early_stopping_after_patience_epochs_without_improvement(make_runner):
    runner = make_runner(ScriptedRunner, epoch_end=7, patience=2)
    results = runner.train()
    assert list(results.keys()) == [0, 1, 2, 3]
    assert runner.best_index == 1
    assert runner.best_score == 0.5


def test_step_end_stops_in_the_middle_of_an_epoch(make_runner):
    runner = make_runner(epoch_end=None, step_end=7)
    runner.train()
    assert runner.steps == 7
    assert list(runner.results.keys()) == [0, 1]


def test_train_without_end_is_an_error(make_runner):
    runner = make_runner(epoch_end=None)
    with pytest.raises(ValueError, match="epoch_end"):
        runner.train()


def test_dataloaders_shuffle_train_only_and_honour_split_options(make_runner):
    runner = make_runner(dataloader={"batch_size": 8, "val": {"batch_size": 5}})
    assert isinstance(runner.dataloaders.train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(runner.dataloaders.val.sampler, torch.utils.data.SequentialSampler)
    assert runner.dataloaders.train.batch_size == 8
    assert runner.dataloaders.val.batch_size == 5
    unshuffled = make_runner(dataloader={"batch_size": 8, "shuffle": False})
    assert isinstance(unshuffled.dataloaders.train.sampler, torch.utils.data.SequentialSampler)


def test_a_runner_without_datasets_is_valid(make_runner):
    class EmptyRunner(dl.TorchRunner):
        pass

    runner = make_runner(EmptyRunner, device=None)  # the default device: CUDA where there is one
    assert len(runner.dataloaders) == 0
    assert runner.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_batch_shape_is_a_clear_error(make_runner):
    with pytest.raises(ValueError, match="input"):
        dl.TorchRunner.unpack({"x": 1})
    with pytest.raises(ValueError, match="int"):
        dl.TorchRunner.unpack(3)


def test_unknown_split_is_a_clear_error(make_runner):
    runner = make_runner()
    with pytest.raises(KeyError, match="test"):
        runner.evaluate_epoch("test")


def test_runner_picks_the_torch_platform(make_runner):
    class MyRunner(dl.Runner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Linear(2, 2)

    runner = make_runner(MyRunner, device=None)
    assert isinstance(runner, dl.TorchRunner)
    assert isinstance(runner, MyRunner)
    assert runner.model.weight.device == runner.device  # moved to the default device
    with pytest.raises(ValueError, match="torch"):
        make_runner(MyRunner, platform="jax")


def test_metrics_are_recorded_per_split(make_runner):
    class MetricRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.metrics = dl.metrics.multiclass_metrics(num_classes=3)

    runner = make_runner(MetricRunner, lr=0.0, epoch_end=1)
    result = runner.train()[0]
    x, y = runner.datasets.val.tensors
    with torch.no_grad():
        accuracy = (runner.model(x).argmax(-1) == y).float().mean().item()
    assert result["val"]["acc"] == pytest.approx(accuracy)
    assert "acc" in result["train"]


def test_distributed_step_result_averages_the_metrics_in_one_collective_and_not_the_meters_again(
    make_runner, monkeypatch
):
    # The meters reach `TorchRunner.get_step_result` averaged over ranks already; only the metrics' numbers are left.
    runner = make_runner(epoch_end=1)
    runner.train_metrics = dl.metrics.multiclass_metrics(num_classes=3)
    runner._start_epoch("train", dl.runner.RunnerMode.train)
    inputs, target = next(iter(runner.dataloaders.train))
    runner.train_step((inputs, target))
    plain = runner.get_step_result()
    calls = []
    monkeypatch.setattr(type(runner), "distributed", property(lambda self: True))
    monkeypatch.setattr(type(runner), "_updated_meter_values", lambda self: self.meters.value(skip_empty=True))

    def reduce(tensor):
        calls.append(tensor.clone())
        return tensor * 2  # stands in for the mean over ranks, visibly

    monkeypatch.setattr(runner, "reduce", reduce)
    result = runner.get_step_result()
    assert len(calls) == 1
    metric_keys = [key for key in runner.train_metrics.value() if isinstance(plain[key], float)]
    assert metric_keys
    assert calls[0].numel() == len(metric_keys)
    assert result["loss"] == plain["loss"]
    assert result["lr"] == plain["lr"]
    for key in metric_keys:
        assert result[key] == pytest.approx(2 * plain[key], nan_ok=True)


def test_infer_takes_the_split_by_keyword_as_the_reference_does(make_runner):
    runner = make_runner(epoch_end=1)
    runner.train()
    by_keyword, by_position = runner.infer(split="val"), runner.infer("val")
    assert by_keyword.shape[0] == len(runner.datasets.val)
    assert torch.equal(by_keyword, by_position)


def test_a_second_train_trains_nothing_and_keeps_the_results(make_runner):
    runner = make_runner(epoch_end=2)
    first = {index: dict(result["train"]) for index, result in runner.train().items()}
    weights, steps = parameters_of(runner), runner.steps
    second = runner.train()
    assert runner.steps == steps
    assert all(torch.equal(a, b) for a, b in zip(parameters_of(runner), weights))
    assert {index: dict(result["train"]) for index, result in second.items()} == first


def test_raising_epoch_end_and_training_again_goes_on_like_a_longer_run(make_runner):
    straight = make_runner(epoch_end=4)
    straight.train()
    runner = make_runner(epoch_end=2)
    runner.train()
    runner.epoch_end = 4
    runner.train()
    assert runner.steps == straight.steps
    assert sorted(runner.results) == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(parameters_of(runner), parameters_of(straight)))


def test_patience_zero_stops_at_the_first_epoch_without_improvement(make_runner):
    full = make_runner(epoch_end=6, score_split="val")
    full.train()
    losses = [result["val"]["loss"] for result in full.results.values()]
    first_worse = next(i for i in range(1, 6) if losses[i] >= min(losses[:i]))  # 2 with this data and seed
    runner = make_runner(epoch_end=6, patience=0, score_split="val")
    runner.train()
    assert [result["val"]["loss"] for result in runner.results.values()] == losses[: first_worse + 1]


def test_a_split_both_trained_and_evaluated_is_refused_before_training(make_runner):
    runner = make_runner(epoch_end=1)
    with pytest.raises(ValueError, match=r"splits \['train'\] are both trained on and evaluated"):
        runner.train(evaluate_splits=["val", "train"])
    assert runner.steps == 0
    assert not runner.results
