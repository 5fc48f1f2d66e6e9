from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torch.optim import lr_scheduler

import danling.optim.lr_scheduler
from danling.optim import CosineWithWarmupLR, LinearWithWarmupLR, LRScheduler, planned_lrs

FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
TOTAL = 40


class NoCopy(torch.Tensor):
    """A parameter that fails the test if anything deep-copies it."""

    def __deepcopy__(self, memo: dict) -> Any:
        raise AssertionError("a parameter was deep-copied")


def make_optimizer(lr: float = 0.1, cls: type = torch.optim.SGD, **kwargs: Any) -> torch.optim.Optimizer:
    parameter = torch.zeros(2).as_subclass(NoCopy).requires_grad_()
    return cls([parameter], lr=lr, **kwargs)


def actual_lrs(scheduler: Any, steps: int) -> list[float]:
    """The lr in effect for each optimizer step 0..steps, by really stepping."""
    lrs = []
    for step in range(steps + 1):
        lrs.append(float(scheduler.optimizer.param_groups[0]["lr"]))
        if step < steps:
            scheduler.optimizer.step()
            scheduler.step()
    return lrs


# name -> factory of a scheduler over a fresh optimizer; each is built twice (once previewed, once stepped).
FACTORIES: dict[str, Callable[[], Any]] = {
    "cosine_with_warmup": lambda: CosineWithWarmupLR(make_optimizer(), total_steps=TOTAL, warmup_steps=6),
    "linear_with_warmup": lambda: LinearWithWarmupLR(
        make_optimizer(), total_steps=TOTAL, warmup_steps=3, final_lr_ratio=0.1
    ),
    "danling_cosine": lambda: LRScheduler(make_optimizer(), total_steps=TOTAL),
    "danling_linear_numerical": lambda: LRScheduler(
        make_optimizer(), total_steps=TOTAL, strategy="linear", method="numerical"
    ),
    "step": lambda: lr_scheduler.StepLR(make_optimizer(), step_size=7, gamma=0.5),
    "multistep": lambda: lr_scheduler.MultiStepLR(make_optimizer(), milestones=[5, 5, 20], gamma=0.3),
    "exponential": lambda: lr_scheduler.ExponentialLR(make_optimizer(), gamma=0.9),
    "cosine_annealing": lambda: lr_scheduler.CosineAnnealingLR(make_optimizer(), T_max=15, eta_min=0.01),
    "constant_lr": lambda: lr_scheduler.ConstantLR(make_optimizer(), factor=0.5, total_iters=9),
    "linear_lr": lambda: lr_scheduler.LinearLR(make_optimizer(), start_factor=0.2, total_iters=11),
    "polynomial": lambda: lr_scheduler.PolynomialLR(make_optimizer(), total_iters=30, power=2.0),
    "lambda": lambda: lr_scheduler.LambdaLR(make_optimizer(), lambda step: 1 / (1 + step)),
    "multiplicative": lambda: lr_scheduler.MultiplicativeLR(make_optimizer(), lambda step: 0.95),
    "one_cycle": lambda: lr_scheduler.OneCycleLR(make_optimizer(momentum=0.9), max_lr=1.0, total_steps=TOTAL),
    "cyclic": lambda: lr_scheduler.CyclicLR(make_optimizer(momentum=0.9), base_lr=0.01, max_lr=0.1, step_size_up=6),
    "warm_restarts": lambda: lr_scheduler.CosineAnnealingWarmRestarts(make_optimizer(), T_0=5, T_mult=2),
    "sequential": lambda: sequential(make_optimizer()),
    "chained": lambda: chained(make_optimizer()),
    "subclass": lambda: HalvingLR(make_optimizer(), step_size=4),
}


class HalvingLR(lr_scheduler.StepLR):
    """A subclass of a closed-form scheduler that changes its rule: it must be replayed, not jumped."""

    def get_lr(self) -> list[float]:
        return [
            group["lr"] * (0.5 if self.last_epoch % 3 == 0 and self.last_epoch else 1)
            for group in self.optimizer.param_groups
        ]


def sequential(optimizer: torch.optim.Optimizer) -> lr_scheduler.SequentialLR:
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)
    decay = lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    return lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[5])


def chained(optimizer: torch.optim.Optimizer) -> lr_scheduler.ChainedScheduler:
    return lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=4), lr_scheduler.ExponentialLR(optimizer, 0.9)]
    )


@pytest.mark.parametrize("name", FACTORIES)
def test_preview_matches_stepping(name: str) -> None:
    planned = planned_lrs(FACTORIES[name](), TOTAL, FRACTIONS)
    actual = actual_lrs(FACTORIES[name](), TOTAL)
    assert [(fraction, step) for fraction, step, _ in planned] == [(f, round(f * TOTAL)) for f in FRACTIONS]
    for _, step, lr in planned:
        assert lr == pytest.approx(actual[step], rel=1e-9, abs=1e-12), step


def snapshot(scheduler: Any) -> tuple:
    optimizer = scheduler.optimizer
    groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    state = {key: value for key, value in vars(scheduler).items() if key != "optimizer"}
    buffers = [value.clone() for group in optimizer.state.values() for value in group.values()]
    return repr(state), repr(groups), buffers, [p.clone() for p in optimizer.param_groups[0]["params"]]


@pytest.mark.parametrize("name", FACTORIES)
def test_preview_changes_nothing(name: str) -> None:
    scheduler = FACTORIES[name]()
    optimizer = scheduler.optimizer
    parameter = optimizer.param_groups[0]["params"][0]
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # momentum buffers exist, the optimizer has stepped
    scheduler.step()
    before = snapshot(scheduler)
    planned_lrs(scheduler, TOTAL, FRACTIONS)
    after = snapshot(scheduler)
    assert before[:2] == after[:2]
    assert all(torch.equal(a, b) for a, b in zip(before[2] + before[3], after[2] + after[3]))
    assert optimizer.param_groups[0]["params"][0] is parameter
    assert scheduler.optimizer is optimizer
    assert actual_lrs(scheduler, 3) == actual_lrs(_advanced(name), 3)  # it goes on as if never previewed


def _advanced(name: str) -> Any:
    scheduler = FACTORIES[name]()
    scheduler.optimizer.step()
    scheduler.step()
    return scheduler


def test_resumed_closed_forms_still_cover_the_whole_run() -> None:
    scheduler = lr_scheduler.StepLR(make_optimizer(), step_size=10, gamma=0.1)
    ours = CosineWithWarmupLR(make_optimizer(), total_steps=TOTAL, warmup_steps=4)
    for _ in range(25):
        for each in (scheduler, ours):
            each.optimizer.step()
            each.step()
    assert [step for _, step, _ in planned_lrs(scheduler, TOTAL)] == [0, 10, 20, 30, 40]
    assert [lr for _, _, lr in planned_lrs(scheduler, TOTAL)] == pytest.approx([0.1, 0.01, 0.001, 1e-4, 1e-5])
    assert [lr for _, _, lr in planned_lrs(ours, TOTAL)][0] == 0.0


def test_replayed_schedulers_leave_out_steps_already_taken() -> None:
    scheduler = lr_scheduler.MultiplicativeLR(make_optimizer(), lambda step: 0.5)
    for _ in range(15):
        scheduler.optimizer.step()
        scheduler.step()
    planned = planned_lrs(scheduler, TOTAL)
    assert [step for _, step, _ in planned] == [20, 30, 40]
    assert [lr for _, _, lr in planned] == pytest.approx([0.1 * 0.5**step for step in (20, 30, 40)])


def test_one_cycle_past_its_end_is_left_out() -> None:
    scheduler = lr_scheduler.OneCycleLR(make_optimizer(momentum=0.9), max_lr=1.0, total_steps=TOTAL)
    assert [step for _, step, _ in planned_lrs(scheduler, 2 * TOTAL)] == [0, 20, 40]


def test_reduce_on_plateau_has_no_schedule() -> None:
    assert planned_lrs(lr_scheduler.ReduceLROnPlateau(make_optimizer()), TOTAL) is None


def test_uncopyable_scheduler_gives_none() -> None:
    scheduler = lr_scheduler.MultiplicativeLR(make_optimizer(), lambda step: 0.5)
    scheduler.handle = (step for step in range(3))  # generators cannot be deep-copied
    assert planned_lrs(scheduler, TOTAL) is None


def test_million_steps_are_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    closed_form = lr_scheduler.StepLR._get_closed_form_lr
    get_lr = lr_scheduler.StepLR.get_lr
    monkeypatch.setattr(lr_scheduler.StepLR, "_get_closed_form_lr", lambda self: calls.append(1) or closed_form(self))
    monkeypatch.setattr(lr_scheduler.StepLR, "get_lr", lambda self: calls.append(1) or get_lr(self))
    scheduler = lr_scheduler.StepLR(make_optimizer(), step_size=300_000, gamma=0.5)
    calls.clear()
    planned = planned_lrs(scheduler, 10**6)
    assert len(calls) <= 5
    assert [lr for _, _, lr in planned] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125])
    ours = CosineWithWarmupLR(make_optimizer(), total_steps=10**6, warmup_steps=10**4)
    lrs = [lr for _, _, lr in planned_lrs(ours, 10**6)]
    assert lrs[2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (5e5 - 1e4) / (1e6 - 1e4))))


def test_steps_round_half_up_and_keep_the_order() -> None:
    scheduler = CosineWithWarmupLR(make_optimizer(), total_steps=10)
    assert [step for _, step, _ in planned_lrs(scheduler, 10, fractions=(1.0, 0.25, 0.05))] == [10, 3, 1]


@pytest.mark.parametrize(
    ("total", "fractions"), [(-1, (0.5,)), (1.5, (0.5,)), (None, (0.5,)), (10, (1.5,)), (10, (-0.1,))]
)
def test_bad_arguments_raise(total: Any, fractions: tuple) -> None:
    with pytest.raises(ValueError, match="total_steps|fraction"):
        planned_lrs(CosineWithWarmupLR(make_optimizer(), total_steps=10), total, fractions)


def test_public_paths() -> None:
    assert danling.optim.lr_scheduler.planned_lrs is planned_lrs
    assert "planned_lrs" in danling.optim.__all__
    assert "planned_lrs" in danling.optim.lr_scheduler.__all__
