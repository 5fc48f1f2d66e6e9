from __future__ import annotations

import io
import math

import pytest
import torch

from danling.optim import SCHEDULERS, CosineWithWarmupLR, LinearWithWarmupLR, WarmupDecayLR


def make_optimizer(lr: float | list[float] = 1.0) -> torch.optim.Optimizer:
    lrs = lr if isinstance(lr, list) else [lr]
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": group_lr} for group_lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def run(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int, group: int = 0) -> list[float]:
    """The lr in effect for each of `steps` optimizer steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(float(scheduler.optimizer.param_groups[group]["lr"]))  # a tensor lr is updated in place
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def cosine(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def linear(progress: float) -> float:
    return 1 - progress


def closed_form(step: int, base: float, warmup: int, total: int, ratio: float, shape) -> float:
    """The textbook schedule, written independently of the implementation."""
    if step < warmup:
        return base * step / warmup
    progress = 1.0 if step >= total else (step - warmup) / (total - warmup)
    return base * (ratio + (1 - ratio) * shape(progress))


SCHEDULES = [(CosineWithWarmupLR, cosine), (LinearWithWarmupLR, linear)]
SETTINGS = [(10, 100, 0.0), (0, 50, 0.0), (7, 7, 0.0), (5, 40, 0.1), (1, 3, 1.0), (3, 20, 0.25)]


@pytest.mark.parametrize(("cls", "shape"), SCHEDULES)
@pytest.mark.parametrize(("warmup", "total", "ratio"), SETTINGS)
def test_matches_the_closed_form(cls, shape, warmup: int, total: int, ratio: float) -> None:
    scheduler = cls(make_optimizer(0.3), total_steps=total, warmup_steps=warmup, final_lr_ratio=ratio)
    lrs = run(scheduler, total + 5)  # past total_steps too
    expected = [closed_form(step, 0.3, warmup, total, ratio, shape) for step in range(total + 5)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("cls", "shape"), SCHEDULES)
def test_step_convention(cls, shape) -> None:
    scheduler = cls(make_optimizer(2.0), total_steps=20, warmup_steps=4, final_lr_ratio=0.1)
    lrs = run(scheduler, 25)
    assert lrs[0] == 0.0  # the first optimizer step uses lr 0
    assert lrs[1] == pytest.approx(2.0 / 4)
    assert lrs[4] == pytest.approx(2.0)  # the peak is at step == warmup_steps
    assert lrs[12] == pytest.approx(2.0 * (0.1 + 0.9 * shape(0.5)))  # half way through the decay
    assert lrs[20:] == pytest.approx([0.2] * 5)  # the floor at total_steps, and after it
    assert min(lrs[4:]) == pytest.approx(0.2)


def test_without_warmup_the_first_step_uses_the_base_lr() -> None:
    scheduler = CosineWithWarmupLR(make_optimizer(1.0), total_steps=4)
    assert run(scheduler, 5) == pytest.approx([1.0, cosine(0.25), 0.5, cosine(0.75), 0.0])


def test_each_group_follows_its_own_base_lr() -> None:
    scheduler = LinearWithWarmupLR(make_optimizer([1.0, 0.1]), total_steps=10, warmup_steps=2, final_lr_ratio=0.5)
    optimizer = make_optimizer([1.0, 0.1])
    twin = LinearWithWarmupLR(optimizer, total_steps=10, warmup_steps=2, final_lr_ratio=0.5)
    assert run(scheduler, 12, group=1) == pytest.approx([lr * 0.1 for lr in run(twin, 12, group=0)])


def test_tensor_lr() -> None:
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=torch.tensor(1.0))
    scheduler = CosineWithWarmupLR(optimizer, total_steps=4, warmup_steps=2)
    assert run(scheduler, 5) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)


@pytest.mark.parametrize(
    ("name", "cls"), [("cosine_with_warmup", CosineWithWarmupLR), ("LINEAR_WITH_WARMUP", LinearWithWarmupLR)]
)
def test_registry_names(name: str, cls: type) -> None:
    scheduler = SCHEDULERS.build(make_optimizer(), type=name, warmup_steps=5, total_steps=50, final_lr_ratio=0.01)
    assert type(scheduler) is cls
    assert (scheduler.total_steps, scheduler.warmup_steps, scheduler.final_lr_ratio) == (50, 5, 0.01)


def test_cosine_keeps_the_reference_scheduler() -> None:
    scheduler = SCHEDULERS.build(make_optimizer(), type="cosine", total_steps=50)
    assert not isinstance(scheduler, WarmupDecayLR)
    assert scheduler.strategy == "cosine"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, r"`total_steps` must be an integer >= 1, but got 0"),
        ({"total_steps": -3}, r"`total_steps`.*-3"),
        ({"total_steps": 2.5}, r"`total_steps`.*2\.5"),
        ({"total_steps": None}, r"`total_steps`.*None"),
        ({"warmup_steps": -1}, r"`warmup_steps` must be an integer in \[0, total_steps=10\], but got -1"),
        ({"warmup_steps": 11}, r"`warmup_steps` must be an integer in \[0, total_steps=10\], but got 11"),
        ({"final_lr_ratio": -0.1}, r"`final_lr_ratio` must be a number in \[0, 1\], but got -0\.1"),
        ({"final_lr_ratio": 1.5}, r"`final_lr_ratio`.*1\.5"),
        ({"final_lr_ratio": float("nan")}, r"`final_lr_ratio`.*nan"),
    ],
)
@pytest.mark.parametrize("cls", [CosineWithWarmupLR, LinearWithWarmupLR])
def test_bad_arguments_raise(cls: type, kwargs: dict, match: str) -> None:
    kwargs = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(make_optimizer(), **kwargs)


def test_whole_floats_are_accepted() -> None:
    scheduler = CosineWithWarmupLR(make_optimizer(), total_steps=10.0, warmup_steps=2.0)
    assert (scheduler.total_steps, scheduler.warmup_steps) == (10, 2)
    assert isinstance(scheduler.total_steps, int)


@pytest.mark.parametrize("cls", [CosineWithWarmupLR, LinearWithWarmupLR])
def test_checkpoint_round_trip(cls: type) -> None:
    scheduler = cls(make_optimizer(0.5), total_steps=30, warmup_steps=6, final_lr_ratio=0.1)
    run(scheduler, 9)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert not any(callable(value) for value in state.values())
    resumed = cls(make_optimizer(0.5), total_steps=1, warmup_steps=0)  # settings come from the checkpoint
    resumed.load_state_dict(state)
    assert (resumed.total_steps, resumed.warmup_steps, resumed.final_lr_ratio, resumed.last_epoch) == (30, 6, 0.1, 9)
    resumed.optimizer.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    assert run(resumed, 25) == pytest.approx(run(scheduler, 25))


def test_load_state_dict_rejects_bad_settings() -> None:
    scheduler = CosineWithWarmupLR(make_optimizer(), total_steps=10, warmup_steps=2)
    state = scheduler.state_dict()
    state["warmup_steps"] = 20
    with pytest.raises(ValueError, match="warmup_steps"):
        scheduler.load_state_dict(state)
    assert scheduler.warmup_steps == 2


def test_lr_at_is_pure_and_clamped() -> None:
    scheduler = LinearWithWarmupLR(make_optimizer(), total_steps=10, warmup_steps=2, final_lr_ratio=0.5)
    state = scheduler.state_dict()
    assert scheduler.lr_at(1.0, -3) == 0.0
    assert scheduler.lr_at(1.0, 10**9) == pytest.approx(0.5)
    assert scheduler.state_dict() == state


def test_base_class_needs_a_decay() -> None:
    with pytest.raises(NotImplementedError):
        WarmupDecayLR(make_optimizer(), total_steps=10)


def test_repr_names_settings() -> None:
    text = repr(CosineWithWarmupLR(make_optimizer(), total_steps=10, warmup_steps=2))
    assert text == "CosineWithWarmupLR(total_steps=10, warmup_steps=2, final_lr_ratio=0.0)"
