from __future__ import annotations

import io
import math

import pytest
import torch

from danling.optim import LRScheduler


def make_optimizer(lr: float | list[float] = 1.0) -> torch.optim.Optimizer:
    lrs = lr if isinstance(lr, list) else [lr]
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": group_lr} for group_lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def run(scheduler: LRScheduler, steps: int, group: int = 0) -> list[float]:
    """Collect the lr in effect for each of `steps` optimizer steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[group]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("kwargs", "expected", "digits"),
    [
        ({"strategy": "linear"}, [0.1, 0.01, 0.001, 0.0001, 1e-09], 10),
        ({"strategy": "cosine"}, [0.3330753446, 0.0187302031, 0.000533897, 3.00232e-05, 1e-09], 10),
        ({"strategy": "linear", "method": "numerical"}, [0.8, 0.6, 0.4, 0.2, 0.0], 2),
    ],
)
def test_reference_documented_values(kwargs: dict, expected: list[float], digits: int) -> None:
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=5, final_lr_ratio=1e-5, **kwargs)
    assert [round(lr, digits) for lr in run(scheduler, 5)] == expected


@pytest.mark.parametrize("strategy", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup_steps", [2, 5, 10])
def test_warmup_ramps_linearly_to_base_lr(strategy: str, warmup_steps: int) -> None:
    base_lr, min_lr = 0.5, 0.0
    scheduler = LRScheduler(
        make_optimizer(base_lr),
        total_steps=100,
        strategy=strategy,
        warmup_steps=warmup_steps,
        cooldown_steps=0,
        min_lr=min_lr,
        final_lr_ratio=1.0,  # no decay, so the warmup shape is isolated
    )
    lrs = run(scheduler, warmup_steps + 3)
    expected = [base_lr * step / warmup_steps for step in range(1, warmup_steps)] + [base_lr] * 4
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("cooldown_steps", [1, 4, 10])
def test_cooldown_ramps_linearly_to_min_lr(cooldown_steps: int) -> None:
    total_steps, base_lr, min_lr = 20, 0.5, 1e-4
    scheduler = LRScheduler(
        make_optimizer(base_lr),
        total_steps=total_steps,
        strategy="constant",
        warmup_steps=0,
        cooldown_steps=cooldown_steps,
        min_lr=min_lr,
    )
    lrs = run(scheduler, total_steps)
    begin = total_steps - cooldown_steps
    assert lrs[:begin] == pytest.approx([base_lr] * begin)
    expected = [min_lr + (1 - k / cooldown_steps) * (base_lr - min_lr) for k in range(1, cooldown_steps + 1)]
    assert lrs[begin:] == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(min_lr)


def test_default_warmup_and_cooldown_spans() -> None:
    scheduler = LRScheduler(make_optimizer(), total_steps=1000)
    assert (scheduler.warmup_steps, scheduler.cooldown_steps) == (50, 200)
    assert scheduler.cooldown_steps_begin == 800


@pytest.mark.parametrize("strategy", ["cosine", "linear"])
@pytest.mark.parametrize("method", ["percentile", "numerical"])
def test_decay_is_monotone_and_ends_at_final_lr(strategy: str, method: str) -> None:
    total_steps, base_lr, ratio = 50, 0.1, 1e-2
    scheduler = LRScheduler(
        make_optimizer(base_lr),
        total_steps=total_steps,
        strategy=strategy,
        method=method,
        final_lr_ratio=ratio,
        warmup_steps=0,
        cooldown_steps=0,
    )
    lrs = run(scheduler, total_steps)
    assert all(later < earlier for earlier, later in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(base_lr * ratio)
    assert scheduler.lr_at(base_lr, 0) == pytest.approx(base_lr)


def test_cosine_midpoint_and_linear_shape() -> None:
    cosine = LRScheduler(make_optimizer(), total_steps=10, final_lr=0.0, warmup_steps=0, cooldown_steps=0)
    assert cosine.method == "numerical"
    assert cosine.lr_at(1.0, 5) == pytest.approx(0.5)
    assert cosine.lr_at(1.0, 2) == pytest.approx((1 + math.cos(math.pi * 0.2)) / 2)
    linear = LRScheduler(
        make_optimizer(), total_steps=10, final_lr=0.0, strategy="linear", warmup_steps=0, cooldown_steps=0
    )
    assert [linear.lr_at(1.0, step) for step in range(1, 10)] == pytest.approx([1 - s / 10 for s in range(1, 10)])


def test_constant_keeps_base_lr() -> None:
    scheduler = LRScheduler(make_optimizer(0.3), total_steps=10, strategy="constant", warmup_steps=0, cooldown_steps=0)
    assert run(scheduler, 10) == pytest.approx([0.3] * 10)


def test_full_cycle_ends_at_min_lr_and_stays_there() -> None:
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=20, min_lr=1e-6)
    lrs = run(scheduler, 25)
    assert lrs[19:] == pytest.approx([1e-6] * 6)
    assert min(lrs) >= 1e-6


def test_final_lr_is_absolute_and_final_lr_ratio_is_relative() -> None:
    kwargs = {"total_steps": 10, "strategy": "linear", "warmup_steps": 0, "cooldown_steps": 0}
    absolute = LRScheduler(make_optimizer([1.0, 0.1]), final_lr=0.01, **kwargs)
    relative = LRScheduler(make_optimizer([1.0, 0.1]), final_lr_ratio=0.01, **kwargs)
    assert absolute.lr_at(1.0, 10) == pytest.approx(0.01)
    assert absolute.lr_at(0.1, 10) == pytest.approx(0.01)
    assert relative.lr_at(1.0, 10) == pytest.approx(0.01)
    assert relative.lr_at(0.1, 10) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("kwargs", "method", "final_lr_ratio"),
    [
        ({}, "percentile", 1e-3),
        ({"final_lr_ratio": 0.1}, "percentile", 0.1),
        ({"final_lr": 0.1}, "numerical", None),
        ({"final_lr": 0.1, "method": "percentile"}, "percentile", None),
        ({"method": "NUMERICAL"}, "numerical", 1e-3),
    ],
)
def test_method_and_final_lr_defaults(kwargs: dict, method: str, final_lr_ratio: float | None) -> None:
    scheduler = LRScheduler(make_optimizer(), total_steps=10, **kwargs)
    assert scheduler.method == method
    assert scheduler.final_lr_ratio == final_lr_ratio


def test_min_lr_is_lowered_to_final_lr() -> None:
    scheduler = LRScheduler(make_optimizer(), total_steps=10, final_lr=1e-12, min_lr=1e-9)
    assert scheduler.min_lr == 1e-12


def test_multiple_param_groups_scale_with_their_base_lr() -> None:
    scheduler = LRScheduler(make_optimizer([1.0, 0.1]), total_steps=40, min_lr=0.0)
    first, second = [], []
    for _ in range(40):
        first.append(scheduler.optimizer.param_groups[0]["lr"])
        second.append(scheduler.optimizer.param_groups[1]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    assert second == pytest.approx([lr / 10 for lr in first])
    assert scheduler.get_last_lr() == [group["lr"] for group in scheduler.optimizer.param_groups]


@pytest.mark.parametrize("strategy", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("split", [1, 7, 19])
def test_state_dict_round_trip_continues_the_sequence(strategy: str, split: int) -> None:
    kwargs = {"total_steps": 30, "strategy": strategy, "final_lr_ratio": 1e-2, "warmup_steps": 3}
    reference = LRScheduler(make_optimizer([1.0, 0.5]), **kwargs)
    expected = run(reference, 30)

    first = LRScheduler(make_optimizer([1.0, 0.5]), **kwargs)
    head = run(first, split)
    state = first.state_dict()
    assert "optimizer" not in state

    optimizer = make_optimizer([1.0, 0.5])
    resumed = LRScheduler(optimizer, total_steps=999, strategy="constant")  # settings come from the state
    resumed.load_state_dict(state)
    for group, lr in zip(optimizer.param_groups, first.get_last_lr()):
        group["lr"] = lr  # the runner restores the optimizer's state alongside
    assert head + run(resumed, 30 - split) == pytest.approx(expected)
    assert resumed.total_steps == 30
    assert resumed.strategy == strategy


def test_state_dict_is_plain_data() -> None:
    state = LRScheduler(make_optimizer(), total_steps=10).state_dict()
    assert not any(callable(value) for value in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["strategy"] == "cosine"


def test_repr_names_settings() -> None:
    text = repr(LRScheduler(make_optimizer(), total_steps=10, strategy="linear"))
    assert "strategy='linear'" in text
    assert "total_steps=10" in text


def test_strategy_is_case_insensitive() -> None:
    assert LRScheduler(make_optimizer(), total_steps=10, strategy="Cosine").strategy == "cosine"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "exponential"}, r"strategy 'exponential'.*\['constant', 'cosine', 'linear'\]"),
        ({"method": "geometric"}, r"method 'geometric'.*\['numerical', 'percentile'\]"),
        ({"final_lr": 0.1, "final_lr_ratio": 0.1}, "final_lr"),
        ({"final_lr_ratio": -0.1}, "final_lr_ratio"),
        ({"final_lr": -0.1}, "final_lr"),
        ({"min_lr": -1.0}, "min_lr"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"cooldown_steps": 11}, "cooldown_steps"),
        ({"cooldown_steps": -1}, "cooldown_steps"),
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": -5}, "total_steps"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    kwargs = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        LRScheduler(make_optimizer(), **kwargs)


def test_load_state_dict_rejects_unknown_strategy() -> None:
    scheduler = LRScheduler(make_optimizer(), total_steps=10)
    state = scheduler.state_dict()
    state["strategy"] = "bogus"
    with pytest.raises(ValueError, match="bogus"):
        scheduler.load_state_dict(state)


def test_zero_base_lr_does_not_divide_by_zero() -> None:
    scheduler = LRScheduler(make_optimizer([1.0, 0.0]), total_steps=10, min_lr=0.0)
    assert run(scheduler, 10, group=1) == [0.0] * 10
