"""Data edge cases of TorchRunner: iterable datasets, evaluating train splits, what infer() accepts, empty data."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from ..conftest import DictDataset, LinearRegressionRunner, make_regression_data, parameters_of


class Stream(IterableDataset):
    """The samples of a TensorDataset, streamed: no `__len__`."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __iter__(self):
        return iter(self.base)


class StreamRunner(LinearRegressionRunner):
    def __init__(self, config):
        super().__init__(config)
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.datasets.train = Stream(self.datasets.train)
        self.datasets.val = Stream(self.datasets.val)


def reference_weights(dataset: TensorDataset, batch_size: int, accum_steps: int, epochs: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = dataset.tensors
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    for _ in range(epochs):
        for start in range(0, len(batches), accum_steps):
            window = batches[start : start + accum_steps]
            for inputs, targets in window:
                (nn.functional.mse_loss(model(inputs), targets) / len(window)).backward()
            optimizer.step()
            optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


def test_an_iterable_dataset_trains_evaluates_and_infers(make_runner):
    runner = make_runner(StreamRunner, accum_steps=3, epoch_end=2, progress_bar=True)
    results = runner.train()
    # 5 batches per epoch in windows of 3 and 2: the short last window is stepped, as its mean
    assert runner.steps == 4
    expected = reference_weights(make_regression_data(40, 0), 8, 3, 2)
    for actual, wanted in zip(parameters_of(runner), expected):
        torch.testing.assert_close(actual, wanted)
    x, y = make_regression_data(13, 1).tensors
    with torch.no_grad():
        val_loss = nn.functional.mse_loss(runner.model(x), y).item()
    assert results[1]["val"]["loss"] == pytest.approx(val_loss, rel=1e-5)
    assert runner.evaluate(["val"])["val"]["loss"] == pytest.approx(val_loss, rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(runner.infer("val"), runner.model(x))


def test_evaluating_a_train_split_counts_every_sample_once(make_runner):
    class DropLastRunner(LinearRegressionRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasets.train = make_regression_data(43, 0)  # 5 full batches of 8 and 3 samples dropped

    runner = make_runner(DropLastRunner, dataloader={"batch_size": 8, "drop_last": True}, epoch_end=1)
    runner.train()
    assert len(runner.dataloaders.train) == 5
    x, y = runner.datasets.train.tensors
    with torch.no_grad():
        expected = nn.functional.mse_loss(runner.model(x), y).item()
    assert runner.evaluate(["train"])["train"]["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["split", "dataset", "dataloader", "tensor"])
def test_infer_accepts_a_split_a_dataset_a_dataloader_or_a_tensor(make_runner, kind):
    runner = make_runner(LinearRegressionRunner)
    dataset = make_regression_data(11, 7)
    x = dataset.tensors[0]
    data = {
        "split": "predict",
        "dataset": dataset,
        "dataloader": DataLoader(dataset, batch_size=4),
        "tensor": x,
    }[kind]
    runner.datasets.predict = dataset  # assigned after construction: no build_dataloaders() needed
    predictions = runner.infer(data)
    with torch.no_grad():
        torch.testing.assert_close(predictions, runner.model(x))


def test_infer_rejects_what_it_cannot_batch(make_runner):
    runner = make_runner(LinearRegressionRunner)
    with pytest.raises(ValueError, match="int"):
        runner.infer(42)


def test_an_empty_dataset_is_a_clear_error(make_runner):
    class EmptyRunner(LinearRegressionRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasets.train = TensorDataset(torch.empty(0, 4), torch.empty(0, 1))

    with pytest.raises(ValueError, match="'train' is empty"):
        make_runner(EmptyRunner).train()


def test_an_empty_iterable_dataset_is_a_clear_error(make_runner):
    # No `__len__` to check up front: the loops notice that nothing came, instead of reporting a NaN loss.
    class EmptyStreamRunner(StreamRunner):
        def __init__(self, config):
            super().__init__(config)
            empty = TensorDataset(torch.empty(0, 4), torch.empty(0, 1))
            self.datasets.train = Stream(empty)
            self.datasets.val = Stream(empty)

    runner = make_runner(EmptyStreamRunner)
    with pytest.raises(ValueError, match="'train' yielded no batches to train on.*iterable dataset"):
        runner.train()
    with pytest.raises(ValueError, match="'val' yielded no batches to evaluate"):
        runner.evaluate(["val"])


def test_a_train_split_without_batches_is_a_clear_error(make_runner):
    runner = make_runner(LinearRegressionRunner, dataloader={"batch_size": 64, "drop_last": True})
    with pytest.raises(ValueError, match="no batches.*40 samples, batch_size 64, drop_last True"):
        runner.train()


def test_a_mapping_batch_without_target_is_a_clear_error_in_training(make_runner):
    class NoTarget(DictDataset):
        def __getitem__(self, index):
            return {"input": super().__getitem__(index)["input"]}

    class NoTargetRunner(LinearRegressionRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasets.train = NoTarget(self.datasets.train)

    with pytest.raises(ValueError, match=r"target.*\['input'\]"):
        make_runner(NoTargetRunner).train()


def test_infer_on_a_shuffled_train_split_is_in_dataset_order(make_runner):
    runner = make_runner(LinearRegressionRunner, seed=0)
    x = runner.datasets.train.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(runner.infer("train"), runner.model(x))


def test_total_steps_of_an_iterable_train_split_says_why_it_is_unknown(make_runner):
    runner = make_runner(StreamRunner)
    with pytest.raises(ValueError, match=r"epoch_end=2 and train splits \['train'\].*step_end.*IterableDataset"):
        runner.total_steps
    assert make_runner(StreamRunner, step_end=3).total_steps == 3


def test_samples_of_a_batch_weigh_its_loss():
    from danling.runner.loop.data import samples_of

    assert samples_of(torch.zeros(4, 3), torch.zeros(4, 2)) == 4
    assert samples_of(None, torch.zeros(6, 2)) == 6
    assert samples_of(torch.tensor(1.0), ["a", "b"]) == 2
    assert samples_of("label", "prediction") == 1


def test_has_more_consumes_one_item():
    from danling.runner.loop.data import has_more

    items = iter([1, 2])
    assert has_more(items)
    assert has_more(items)
    assert not has_more(items)
