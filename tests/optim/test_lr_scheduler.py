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


# The reference library's (DanLing 0.4.0b5) documented sequences: 100 steps of
# LRScheduler(total_steps=100, final_lr_ratio=0.001, strategy=..., method=...) from lr=1, rounded to 4 places.
# fmt: off
REFERENCE_CONSTANT = [
    0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5,
    0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0,
]
REFERENCE_SEQUENCES = {
    ("linear", "numerical"): [
        0.198, 0.392, 0.582, 0.768, 0.95, 0.9401, 0.9301, 0.9201, 0.9101, 0.9001, 0.8901, 0.8801, 0.8701, 0.8601,
        0.8501, 0.8402, 0.8302, 0.8202, 0.8102, 0.8002, 0.7902, 0.7802, 0.7702, 0.7602, 0.7502, 0.7403, 0.7303,
        0.7203, 0.7103, 0.7003, 0.6903, 0.6803, 0.6703, 0.6603, 0.6503, 0.6404, 0.6304, 0.6204, 0.6104, 0.6004,
        0.5904, 0.5804, 0.5704, 0.5604, 0.5504, 0.5405, 0.5305, 0.5205, 0.5105, 0.5005, 0.4905, 0.4805, 0.4705,
        0.4605, 0.4505, 0.4406, 0.4306, 0.4206, 0.4106, 0.4006, 0.3906, 0.3806, 0.3706, 0.3606, 0.3506, 0.3407,
        0.3307, 0.3207, 0.3107, 0.3007, 0.2907, 0.2807, 0.2707, 0.2607, 0.2507, 0.2408, 0.2308, 0.2208, 0.2108,
        0.2008, 0.1813, 0.1627, 0.1452, 0.1287, 0.1131, 0.0986, 0.0851, 0.0725, 0.061, 0.0505, 0.0409, 0.0324, 0.0248,
        0.0183, 0.0127, 0.0082, 0.0046, 0.0021, 0.0005, 0.0,
    ],
    ("linear", "percentile"): [
        0.1867, 0.3484, 0.4877, 0.6069, 0.7079, 0.6607, 0.6166, 0.5754, 0.537, 0.5012, 0.4677, 0.4365, 0.4074, 0.3802,
        0.3548, 0.3311, 0.309, 0.2884, 0.2692, 0.2512, 0.2344, 0.2188, 0.2042, 0.1905, 0.1778, 0.166, 0.1549, 0.1445,
        0.1349, 0.1259, 0.1175, 0.1096, 0.1023, 0.0955, 0.0891, 0.0832, 0.0776, 0.0724, 0.0676, 0.0631, 0.0589, 0.055,
        0.0513, 0.0479, 0.0447, 0.0417, 0.0389, 0.0363, 0.0339, 0.0316, 0.0295, 0.0275, 0.0257, 0.024, 0.0224, 0.0209,
        0.0195, 0.0182, 0.017, 0.0158, 0.0148, 0.0138, 0.0129, 0.012, 0.0112, 0.0105, 0.0098, 0.0091, 0.0085, 0.0079,
        0.0074, 0.0069, 0.0065, 0.006, 0.0056, 0.0052, 0.0049, 0.0046, 0.0043, 0.004, 0.0035, 0.0031, 0.0028, 0.0024,
        0.0021, 0.0018, 0.0016, 0.0014, 0.0012, 0.001, 0.0008, 0.0007, 0.0006, 0.0005, 0.0004, 0.0003, 0.0002, 0.0001,
        0.0001, 0.0,
    ],
    ("cosine", "numerical"): [
        0.2, 0.3996, 0.5987, 0.7968, 0.9939, 0.9912, 0.988, 0.9843, 0.9802, 0.9756, 0.9705, 0.9649, 0.9589, 0.9525,
        0.9456, 0.9382, 0.9304, 0.9222, 0.9136, 0.9046, 0.8952, 0.8854, 0.8752, 0.8646, 0.8537, 0.8424, 0.8308,
        0.8189, 0.8066, 0.7941, 0.7813, 0.7681, 0.7548, 0.7411, 0.7273, 0.7132, 0.6989, 0.6844, 0.6697, 0.6549,
        0.6399, 0.6247, 0.6095, 0.5941, 0.5786, 0.5631, 0.5475, 0.5319, 0.5162, 0.5005, 0.4848, 0.4691, 0.4535,
        0.4379, 0.4224, 0.4069, 0.3915, 0.3763, 0.3611, 0.3461, 0.3313, 0.3166, 0.3021, 0.2878, 0.2737, 0.2599,
        0.2462, 0.2329, 0.2197, 0.2069, 0.1944, 0.1821, 0.1702, 0.1586, 0.1473, 0.1364, 0.1258, 0.1156, 0.1058,
        0.0964, 0.083, 0.0709, 0.06, 0.0502, 0.0416, 0.034, 0.0274, 0.0216, 0.0168, 0.0127, 0.0094, 0.0067, 0.0046,
        0.003, 0.0018, 0.001, 0.0005, 0.0002, 0.0001, 0.0,
    ],
    ("cosine", "percentile"): [
        0.1997, 0.3973, 0.5909, 0.7785, 0.9584, 0.9407, 0.9202, 0.8972, 0.8718, 0.8445, 0.8153, 0.7846, 0.7527,
        0.7198, 0.6863, 0.6523, 0.6182, 0.5841, 0.5503, 0.517, 0.4844, 0.4527, 0.4219, 0.3922, 0.3636, 0.3364, 0.3104,
        0.2858, 0.2626, 0.2408, 0.2204, 0.2013, 0.1835, 0.167, 0.1517, 0.1376, 0.1247, 0.1128, 0.1019, 0.0919, 0.0829,
        0.0747, 0.0672, 0.0604, 0.0543, 0.0488, 0.0438, 0.0393, 0.0352, 0.0316, 0.0284, 0.0255, 0.0228, 0.0205,
        0.0184, 0.0166, 0.0149, 0.0134, 0.0121, 0.0109, 0.0098, 0.0089, 0.008, 0.0073, 0.0066, 0.006, 0.0055, 0.005,
        0.0045, 0.0042, 0.0038, 0.0035, 0.0032, 0.003, 0.0028, 0.0026, 0.0024, 0.0022, 0.0021, 0.0019, 0.0017, 0.0015,
        0.0014, 0.0012, 0.0011, 0.001, 0.0009, 0.0008, 0.0007, 0.0006, 0.0005, 0.0004, 0.0004, 0.0003, 0.0003, 0.0002,
        0.0002, 0.0001, 0.0001, 0.0,
    ],
    ("constant", "percentile"): REFERENCE_CONSTANT,
    ("constant", "numerical"): REFERENCE_CONSTANT,
}
# fmt: on


@pytest.mark.parametrize(("strategy", "method"), list(REFERENCE_SEQUENCES))
def test_reference_sequences_to_four_places(strategy: str, method: str) -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)
    scheduler = LRScheduler(optimizer, total_steps=100, final_lr_ratio=0.001, strategy=strategy, method=method)
    lrs = [round(lr, 4) for lr in run(scheduler, 100)]
    assert lrs == REFERENCE_SEQUENCES[strategy, method]
    # the reference reads `get_lr()` before each step; it agrees with the lr in effect
    fresh = LRScheduler(make_optimizer(1.0), total_steps=100, final_lr_ratio=0.001, strategy=strategy, method=method)
    read = []
    for _ in range(100):
        read.append(round(fresh.get_lr()[0], 4))
        fresh.optimizer.step()
        fresh.step()
    assert read == REFERENCE_SEQUENCES[strategy, method]


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


def test_subclass_method_adds_a_strategy_as_in_the_reference():
    class StepScheduler(LRScheduler):
        def halfway(self, progress: float) -> float:  # no decay, then fully decayed after half the run
            return 0.0 if progress < 0.5 else 1.0

    scheduler = StepScheduler(
        make_optimizer(1.0), total_steps=10, strategy="halfway", warmup_steps=0, cooldown_steps=0, method="numerical"
    )
    lrs = run(scheduler, 10)
    assert lrs[:4] == pytest.approx([1.0] * 4)
    assert lrs[5:] == pytest.approx([0.001] * 5)
    restored = StepScheduler(make_optimizer(1.0), total_steps=10, strategy="halfway", method="numerical")
    restored.load_state_dict(scheduler.state_dict())
    assert restored.strategy == "halfway"
    assert StepScheduler(make_optimizer(1.0), total_steps=10, strategy="cosine").cosine(0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="halfway"):
        LRScheduler(make_optimizer(1.0), total_steps=10, strategy="halfway")
    with pytest.raises(ValueError, match="_private"):
        StepScheduler(make_optimizer(1.0), total_steps=10, strategy="_private")
