"""
`skip_nonfinite_steps: true`: an optimizer step whose gradients are not finite on any rank is skipped on every rank,
as if its batch had not been seen (model, momentum, EMA and scheduler untouched), counted in the epoch result as
`skipped_steps`; `max_nonfinite_steps` skips in a row stop training with `FloatingPointError`.

The references are hand-written loops with `torch.optim.SGD`, `StepLR` and the EMA formula, over the same samples
without the poisoned batches.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from danling.runner.config.checks import validate_config
from danling.runner.loop.finite import NonFiniteSteps

WORKER = Path(__file__).parents[1] / "workers" / "loss_steps_worker.py"
_spec = importlib.util.spec_from_file_location("loss_steps_worker", WORKER)
worker = sys.modules.setdefault("loss_steps_worker", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(worker)


def reference(steps: list[list[int]]) -> dict[str, Any]:
    r"""Momentum SGD, `StepLR(1, 0.5)` and an EMA of decay 0.5 by hand, one step per list of sample indices."""
    inputs, targets = worker.regression_data().tensors
    model = worker.regression_model()
    ema = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    losses = []
    for indices in steps:
        loss = nn.functional.mse_loss(model(inputs[indices]), targets[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        for average, parameter in zip(ema, model.parameters()):
            average.mul_(0.5).add_(0.5 * parameter.detach())
        losses.append(loss.item())
    return {
        "parameters": [parameter.detach() for parameter in model.parameters()],
        "ema": ema,
        "momentum": [optimizer.state[parameter]["momentum_buffer"] for parameter in model.parameters()],
        "lr": optimizer.param_groups[0]["lr"],
        "loss": sum(losses) / len(losses),
    }


def assert_state_matches(state: dict[str, Any], expected: dict[str, Any]) -> None:
    for name in ("parameters", "ema", "momentum"):
        for got, want in zip(state[name], expected[name]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert state["lr"] == pytest.approx(expected["lr"])


def batches(size: int, batch: int, without: tuple[int, ...] = ()) -> list[list[int]]:
    r"""The sample indices of each batch of `size` samples in order, leaving out the batches listed."""
    return [list(range(start, start + batch)) for start in range(0, size, batch) if start // batch not in without]


@pytest.fixture
def train(make_runner):
    def run(**config: Any) -> tuple[Any, dict[str, Any]]:
        config = {"epoch_end": 1, "skip_nonfinite_steps": True, "score_split": "train", **config}
        config.setdefault("dataloader", {"batch_size": 2, "shuffle": False})
        runner = make_runner(config.pop("runner_class", worker.SkipRunner), **config)
        results = runner.train()
        return runner, worker.snapshot(runner, results)

    return run


def test_a_nonfinite_step_is_skipped_as_if_its_batch_was_not_seen(train):
    # Sample 5 is NaN: the third batch (samples 4 and 5) gives NaN gradients; the other 7 steps are taken.
    runner, state = train(nan_indices=[5])
    expected = reference(batches(16, 2, without=(2,)))
    assert state["steps"] == 7
    assert state["results"][0]["skipped_steps"] == 1
    assert_state_matches(state, expected)
    # The epoch's loss leaves the NaN batch out: the mean of the 7 losses of the steps taken, as they were.
    assert state["results"][0]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    saved = json.loads((Path(runner.dir) / "results.json").read_text())
    assert "skipped_steps" in json.dumps(saved)


def test_a_window_with_one_nonfinite_micro_batch_is_skipped_whole(train):
    runner, state = train(nan_indices=[5], accum_steps=2)
    expected = reference(batches(16, 4, without=(1,)))
    assert (state["steps"], state["results"][0]["skipped_steps"]) == (3, 1)
    assert_state_matches(state, expected)


def test_max_nonfinite_steps_in_a_row_stop_training(train):
    with pytest.raises(FloatingPointError, match=r"not finite at 2 optimizer steps in a row \(max_nonfinite_steps: 2"):
        train(nan_indices=[4, 6], max_nonfinite_steps=2)


def test_fewer_skips_in_a_row_than_the_limit_train_on(train):
    _, state = train(nan_indices=[4, 6], max_nonfinite_steps=3)  # batches 2 and 3 in a row
    assert (state["steps"], state["results"][0]["skipped_steps"]) == (6, 2)
    assert_state_matches(state, reference(batches(16, 2, without=(2, 3))))
    _, state = train(nan_indices=[2, 6], max_nonfinite_steps=2)  # batches 1 and 3: a step between them
    assert (state["steps"], state["results"][0]["skipped_steps"]) == (6, 2)
    assert_state_matches(state, reference(batches(16, 2, without=(1, 3))))


def test_skipped_steps_count_per_epoch(train):
    _, state = train(nan_indices=[5], epoch_end=2)
    assert [state["results"][epoch]["skipped_steps"] for epoch in (0, 1)] == [1, 1]
    assert state["steps"] == 14


class LowScaleRunner(worker.SkipRunner):
    r"""Under fp16, a loss scale of 256 to start with: this model's gradients overflow fp16 at the default 2**16."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        state = {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
        self.scaler.load_state_dict({**state, "_growth_tracker": 0})


def test_fp16_steps_the_scaler_skips_are_counted_and_it_backs_off(train):
    class WithoutBatch(LowScaleRunner):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.datasets.train = Subset(worker.regression_data(), [i for i in range(16) if i not in (4, 5)])

    runner, state = train(runner_class=LowScaleRunner, nan_indices=[5], precision="fp16")
    without, expected = train(runner_class=WithoutBatch, precision="fp16")
    assert (state["steps"], state["results"][0]["skipped_steps"]) == (7, 1)
    assert expected["results"][0]["skipped_steps"] == 0
    # The scaler backed off once for the NaN step, as torch's GradScaler does; nothing else changed.
    assert runner.scaler.get_scale() == without.scaler.get_scale() / 2
    assert_state_matches(state, expected)


def test_default_mode_still_stops_at_a_nonfinite_loss(train):
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train(nan_indices=[5], skip_nonfinite_steps=False)


def test_two_ranks_skip_the_step_only_rank_1_saw_as_nonfinite(tmp_path, torchrun):
    # Rank 1's second batch holds sample 5 (NaN); rank 0's is finite. Step k of the 2 ranks reads samples
    # 4k..4k+3 (rank 0 the even ones, rank 1 the odd ones): the reference takes steps 0, 2 and 3 on them.
    torchrun(WORKER, str(tmp_path), "skip")
    expected = reference(batches(16, 4, without=(1,)))
    states = [torch.load(tmp_path / f"skip-rank{rank}.pt") for rank in range(2)]
    for state in states:
        assert (state["steps"], state["results"][0]["skipped_steps"]) == (3, 1)
        assert_state_matches(state, expected)
    for got, want in zip(states[0]["parameters"], states[1]["parameters"]):
        assert torch.equal(got, want)


def test_bad_max_nonfinite_steps_is_refused():
    with pytest.raises(ValueError, match=r"max_nonfinite_steps: got 0; accepted values are integers >= 1"):
        validate_config({"max_nonfinite_steps": 0})
    with pytest.raises(ValueError, match=r"max_nonfinite_steps: got 2.5"):
        NonFiniteSteps(limit=2.5)
