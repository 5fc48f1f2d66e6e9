"""Writing a config key through the runner: it updates the config, takes effect, and never replaces a method."""

from __future__ import annotations

import pytest
import torch

from ..conftest import ClassifierRunner


def test_assigning_a_value_to_a_method_name_writes_the_config_key(make_runner):
    runner = make_runner(log=False)
    runner.log = True
    assert runner.config.log is True
    assert callable(runner.log)  # still the method
    runner.log("still logs")  # no TypeError: 'bool' object is not callable


def test_assigning_a_value_to_a_method_that_is_no_config_key_raises(make_runner):
    runner = make_runner()
    with pytest.raises(AttributeError, match="cannot assign 3 to 'train_epoch': it is a method"):
        runner.train_epoch = 3
    assert callable(runner.train_epoch)


class ClippedLaterRunner(ClassifierRunner):
    """Plain SGD with lr 1: each step moves the weights by exactly the (clipped) gradient."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.moves: list[float] = []

    def train_step(self, data):
        if self.steps == 2:
            self.max_grad_norm = 1e-3  # mid-epoch, through the runner
        before = [p.detach().clone() for p in self.model.parameters()]
        result = super().train_step(data)
        moved = sum(((a - p.detach()) ** 2).sum() for a, p in zip(before, self.model.parameters()))
        self.moves.append(float(torch.sqrt(moved)))
        return result


def test_max_grad_norm_set_through_the_runner_takes_effect_at_the_next_step(make_runner):
    runner = make_runner(ClippedLaterRunner, epoch_end=1)  # 5 steps
    runner.train()
    assert runner.config.max_grad_norm == 1e-3
    assert min(runner.moves[:2]) > 1e-2  # unclipped
    assert max(runner.moves[2:]) <= 1e-3 * (1 + 1e-4)  # clipped from the next optimizer step on


def test_state_dict_has_no_side_effects(make_runner):
    runner = make_runner(epoch_end=2)
    runner.train()
    first, second = runner.state_dict(), runner.state_dict()
    assert first.keys() == second.keys()
    assert len(first["rng"]) == len(second["rng"])
    for a, b in zip(first["rng"], second["rng"]):
        assert torch.equal(a["torch"], b["torch"])
    assert first["position"] == second["position"]
    assert first["runner"] == second["runner"]


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("max_grad_norm", -1.0, "numbers > 0"),  # a negative norm would flip every clipped gradient
        ("max_grad_value", 0, "numbers > 0"),
        ("epoch_end", -2, "integers >= 0"),
        ("step_end", 2.5, "integers >= 0"),
        ("patience", -1, "integers >= 0"),
        ("loss_normalization", "mean", "'batch', 'tokens'"),
    ],
)
def test_a_value_the_key_does_not_accept_is_refused_and_the_config_kept(make_runner, key, value, accepted):
    runner = make_runner(max_grad_norm=1.0, max_grad_value=1.0, epoch_end=2, step_end=5, patience=2)
    before = runner.config.get(key)
    with pytest.raises(ValueError, match=f"{key}: got {value!r}; accepted values are {accepted}"):
        setattr(runner, key, value)
    assert runner.config.get(key) == before


def test_an_accepted_value_is_written(make_runner):
    runner = make_runner(epoch_end=2)
    runner.epoch_end, runner.max_grad_value = 4, 0.5
    assert (runner.config.epoch_end, runner.config.max_grad_value) == (4, 0.5)


@pytest.mark.parametrize("key", ["accum_steps", "precision", "device", "score_mode"])
def test_a_read_only_property_that_is_a_config_key_says_where_to_set_it(make_runner, key):
    runner = make_runner(accum_steps=1, precision=None, device="cpu", score_mode="min")
    before = runner.config[key]
    with pytest.raises(AttributeError, match=f"runner.{key} is read-only, derived from config key '{key}'"):
        setattr(runner, key, "x")
    assert runner.config[key] == before


def test_a_bad_clipping_value_written_to_the_config_directly_stops_the_next_epoch(make_runner):
    runner = make_runner(epoch_end=2)
    runner.config.max_grad_norm = -1.0  # the config itself does not check; the optimizer step's set-up does
    with pytest.raises(ValueError, match="max_grad_norm: got -1.0; accepted values are numbers > 0"):
        runner.train()
    assert runner.steps == 0


@pytest.mark.parametrize(("key", "value"), [("compile", True), ("strategy", "fsdp"), ("seed", 7), ("dataloader", {})])
def test_a_key_read_while_building_cannot_be_written_once_built(make_runner, key, value):
    runner = make_runner(seed=1, strategy="ddp", compile=False, dataloader={"batch_size": 8})
    before = runner.config[key]
    with pytest.raises(AttributeError, match=f"config key '{key}' is read while the runner is built"):
        setattr(runner, key, value)
    assert runner.config[key] == before


class SeedsInInit(ClassifierRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.seed = 5  # in `__init__`, before the runner finishes building: a plain config write


def test_a_key_read_while_building_can_be_written_in_init(make_runner):
    assert make_runner(SeedsInInit, seed=1).config.seed == 5


def test_a_key_read_while_building_is_refused_even_when_the_config_lacks_it(make_runner):
    runner = make_runner()
    assert "fsdp" not in runner.config
    with pytest.raises(AttributeError, match="config key 'fsdp' is read while the runner is built"):
        runner.fsdp = {"shard_modules": ["Linear"]}
    assert "fsdp" not in runner.__dict__


def test_resume_schedule_is_checked_when_the_runner_is_built(make_runner):
    with pytest.raises(ValueError, match=r"resume_schedule is 'foo', but it must be one of \('rebuild', 'keep'\)"):
        make_runner(resume_schedule="foo")
