"""
`loss_normalization: tokens`: each optimizer step follows the mean over every counted element of its global batch,
whatever its split into micro-batches and ranks; the logged loss is the token-weighted mean.

The references are hand-written loops over the same padded sequences (lengths 1 to 32, `ignore_index` padding) with
`torch.optim.SGD`: one global batch of 16 per step, its summed cross-entropy divided by its counted tokens.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from danling.runner.config.checks import validate_config
from danling.runner.loop.tokens import TokenNormalization, loss_entry, token_normalization

WORKER = Path(__file__).parents[1] / "workers" / "loss_steps_worker.py"
_spec = importlib.util.spec_from_file_location("loss_steps_worker", WORKER)
worker = sys.modules.setdefault("loss_steps_worker", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(worker)

GLOBAL_BATCH = 16
EPOCHS = 2


def reference(epochs: int = EPOCHS, batch: int = GLOBAL_BATCH) -> tuple[list[torch.Tensor], list[float]]:
    r"""Parameters after training, and each epoch's token-weighted mean loss, by hand."""
    data = worker.sequence_data()
    inputs, targets = data.tensors
    model = worker.token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for start in range(0, len(inputs), batch):
            input, target = inputs[start : start + batch], targets[start : start + batch]
            tokens = int((target != -100).sum())
            loss = criterion(model(input), target)
            optimizer.zero_grad()
            (loss / tokens).backward()
            optimizer.step()
            total, count = total + loss.item(), count + tokens
        losses.append(total / count)
    return [parameter.detach() for parameter in model.parameters()], losses


def train(make_runner: Any, batch_size: int, accum_steps: int, normalization: str = "tokens", **config: Any) -> Any:
    runner = make_runner(
        worker.TokenRunner,
        epoch_end=EPOCHS,
        accum_steps=accum_steps,
        loss_normalization=normalization,
        dataloader={"batch_size": batch_size, "shuffle": False},
        score_split="train",
        **config,
    )
    results = runner.train()
    return runner, [results[epoch]["train"]["loss"] for epoch in range(EPOCHS)]


def assert_parameters_close(actual: Any, expected: list[torch.Tensor], atol: float = 1e-6) -> None:
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=atol)


@pytest.mark.parametrize(("batch_size", "accum_steps"), [(16, 1), (2, 8), (5, 3)])
def test_steps_follow_the_global_token_mean(make_runner, batch_size, accum_steps):
    # 5 x 3 = 15 per window: windows of 15 and 15 samples, then a short one of 2, so another split of the epoch;
    # the reference runs the same windows.
    runner, losses = train(make_runner, batch_size, accum_steps)
    window = batch_size * accum_steps
    parameters, expected = reference(batch=window)
    assert runner.steps == EPOCHS * -(-len(worker.sequence_data()) // window)
    assert_parameters_close(runner.model.parameters(), parameters)
    assert losses == pytest.approx(expected, rel=1e-6)


def test_split_of_the_global_batch_does_not_matter(make_runner):
    # The runner against itself over two splits of a batch of 16, and against the hand loop.
    one, one_losses = train(make_runner, 16, 1)
    split, split_losses = train(make_runner, 2, 8)
    parameters, expected = reference()
    assert_parameters_close(split.model.parameters(), [p.detach() for p in one.model.parameters()])
    assert_parameters_close(split.model.parameters(), parameters)
    assert split_losses == pytest.approx(expected, rel=1e-6)
    assert one_losses == pytest.approx(expected, rel=1e-6)


def test_batch_normalization_depends_on_the_split(make_runner):
    # The control: with means per micro-batch, 2 x 8 and 16 x 1 disagree on these padded sequences.
    one, _ = train(make_runner, 16, 1, normalization="batch", criterion_reduction="mean")
    split, _ = train(make_runner, 2, 8, normalization="batch", criterion_reduction="mean")
    differences = [(p - q).abs().max().item() for p, q in zip(one.model.parameters(), split.model.parameters())]
    assert max(differences) > 1e-3


class MappingSequences(Dataset):
    r"""The padded sequences as mappings, with a `num_tokens` entry that counts what the mask keeps."""

    def __init__(self) -> None:
        self.inputs, self.targets = worker.sequence_data().tensors

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        target = self.targets[index]
        return {"input": self.inputs[index], "target": target, "num_tokens": int((target != -100).sum())}


def test_num_tokens_of_mapping_batches_is_the_count(make_runner):
    class MappingRunner(worker.TokenRunner):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.datasets.train = MappingSequences()

    dataloader = {"batch_size": 4, "shuffle": False}
    config = {"loss_normalization": "tokens", "dataloader": dataloader, "score_split": "train"}
    runner = make_runner(MappingRunner, epoch_end=EPOCHS, accum_steps=4, **config)
    results = runner.train()
    parameters, expected = reference()
    assert_parameters_close(runner.model.parameters(), parameters)
    assert [results[epoch]["train"]["loss"] for epoch in range(EPOCHS)] == pytest.approx(expected, rel=1e-6)


def test_two_ranks_with_accumulation_equal_one_process(tmp_path, torchrun, make_runner):
    # 2 ranks x batch 2 x accum_steps 4 against 1 process x batch 16, and against the hand loop; DDP and FSDP2.
    torchrun(WORKER, str(tmp_path), "tokens")
    single, single_losses = train(make_runner, 16, 1)
    parameters, expected = reference()
    for name, rank in [(name, rank) for name in ("tokens", "tokens-fsdp") for rank in range(2)]:
        state = torch.load(tmp_path / f"{name}-rank{rank}.pt")
        assert state["steps"] == 4
        assert_parameters_close(state["parameters"], [p.detach() for p in single.model.parameters()])
        assert_parameters_close(state["parameters"], parameters)
        losses = [state["results"][epoch]["loss"] for epoch in range(EPOCHS)]
        assert losses == pytest.approx(expected, rel=1e-6)
        assert losses == pytest.approx(single_losses, rel=1e-6)


def test_a_criterion_that_averages_is_refused(make_runner):
    with pytest.raises(ValueError, match=r"reduction='mean'; use reduction='sum'"):
        train(make_runner, 16, 1, criterion_reduction="mean")


def test_a_criterion_ignoring_another_index_is_refused(make_runner):
    with pytest.raises(ValueError, match="ignores index -100 but config.ignore_index is 0"):
        train(make_runner, 16, 1, ignore_index=0)


def test_a_custom_train_step_without_the_count_is_told_what_to_pass(make_runner):
    class CustomRunner(worker.TokenRunner):
        def train_step(self, data: Any) -> Any:
            input, target = data
            with self.accumulate():
                loss = self.criterion(self.model(input), target)
                self.advance(loss)
            return None, loss

    with pytest.raises(ValueError, match=r"advance\(loss, tokens=self.count_tokens\(data, target\)\)"):
        make_runner(CustomRunner, epoch_end=1, loss_normalization="tokens").train()


@pytest.fixture
def make_runner(make_runner):
    # The criterion's reduction from `criterion_reduction` (the conftest factory passes config keys through).
    def factory(runner_class: type, **config: Any) -> Any:
        reduction = config.pop("criterion_reduction", None)
        runner = make_runner(runner_class, **config)
        if reduction is not None:
            runner.criterion = nn.CrossEntropyLoss(reduction=reduction)
        return runner

    return factory


def test_bad_values_name_the_value_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"loss_normalization: got 'token'; accepted values are 'batch', 'tokens'"):
        validate_config({"loss_normalization": "token"})
    with pytest.raises(ValueError, match=r"ignore_index: got 'pad'; accepted values are integers"):
        validate_config({"ignore_index": "pad"})
    with pytest.raises(ValueError, match=r"loss_normalization: got 'mean'"):
        token_normalization({"loss_normalization": "mean"})


def test_count_of_a_micro_batch():
    normalization = TokenNormalization(ignore_index=0)
    target = torch.tensor([[1, 0, 2], [0, 0, 3]])
    assert normalization.count(None, target).item() == 3
    assert normalization.count({"num_tokens": torch.tensor([2, 5])}, target).item() == 7
    assert normalization.count({"num_tokens": 4}, None) == 4
    with pytest.raises(ValueError, match="give mapping batches a 'num_tokens' entry"):
        normalization.count({"input": 1}, {"labels": target})


def test_windows_without_tokens_leave_the_gradients_finite():
    # A window of padding only: its summed loss and gradients are 0, and stay 0 (no division by zero).
    normalization = TokenNormalization()
    normalization.add(torch.tensor(0), closes=True)
    gradients = [torch.zeros(3)]
    normalization.normalize(gradients)
    assert torch.equal(gradients[0], torch.zeros(3))
    value, weight = loss_entry(torch.tensor(0.0), torch.tensor(0), per_element=True, finite_only=False)
    assert (value.item(), weight.item()) == (0.0, 0)
