from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from danling.metrics import AverageMeter, AverageMeters, MultiTaskAverageMeters
from danling.metrics.average_meter import FOLD_SIZE, weighted_block_sum


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_average_matches_numpy(seed: int):
    rng = np.random.default_rng(seed)
    values, weights = rng.normal(size=20), rng.integers(1, 9, size=20)
    meter = AverageMeter()
    for value, weight in zip(values, weights):
        meter.update(torch.tensor(value), n=int(weight))
    assert meter.avg == pytest.approx(np.average(values, weights=weights))
    assert meter.sum == pytest.approx(float((values * weights).sum()))
    assert meter.count == weights.sum()
    assert meter.val == pytest.approx(values[-1])


def test_update_with_tensor_never_syncs(no_device_sync):
    meter = AverageMeter()
    loss = torch.tensor(2.0, requires_grad=True) * 3
    for _ in range(2 * FOLD_SIZE + 3):  # past two folds
        meter.update(loss, n=2)
    no_device_sync.undo()
    assert meter.avg == 6.0
    assert meter.count == 2 * (2 * FOLD_SIZE + 3)


def test_update_detaches_from_graph():
    meter = AverageMeter()
    meter.update(torch.tensor(1.0, requires_grad=True) * 2)
    assert not meter._running_sum().requires_grad


def wide_range_updates(count: int, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    # float32 losses over twelve decades with varying batch sizes: float64 sums of these depend on the grouping.
    rng = np.random.default_rng(seed)
    values = (10.0 ** rng.uniform(-8, 4, size=count)).astype(np.float32)
    weights = rng.choice([32, 32, 32, 7], size=count)
    return [(torch.tensor(value), int(weight)) for value, weight in zip(values, weights)]


def test_sum_over_many_folds_matches_exact_sum():
    updates = wide_range_updates(5 * FOLD_SIZE + 17)
    meter = AverageMeter()
    for value, n in updates:
        meter.update(value, n=n)
    exact = math.fsum(float(value) * n for value, n in updates)
    assert meter.sum == pytest.approx(exact, rel=1e-12)
    assert meter.count == sum(n for _, n in updates)
    assert meter.avg == pytest.approx(exact / meter.count, rel=1e-12)
    assert meter.val == float(updates[-1][0])


@pytest.mark.parametrize(
    ("saved_after", "sensitive"), [(1, False), (FOLD_SIZE - 1, True), (FOLD_SIZE, False), (FOLD_SIZE + 23, True)]
)
def test_restored_meter_sums_bit_for_bit_like_one_never_saved(saved_after: int, sensitive: bool):
    updates = wide_range_updates(3 * FOLD_SIZE + 5, seed=saved_after)
    straight, saved = AverageMeter(), AverageMeter()
    for value, n in updates[:saved_after]:
        straight.update(value, n=n)
        saved.update(value, n=n)
    state = saved.state_dict()
    restored = AverageMeter()
    restored.load_state_dict(state)
    regrouped = AverageMeter()  # what restoring the sum alone would give: the pending block summed apart
    regrouped.load_state_dict({key: state[key] for key in ("val", "n", "sum", "count")})
    for value, n in updates[saved_after:]:
        for meter in (straight, restored, regrouped):
            meter.update(value, n=n)
    assert restored.state_dict() == straight.state_dict()
    assert restored.sum == straight.sum
    assert restored.avg == straight.avg
    if sensitive:  # these data are sensitive to the grouping, so the check above can fail
        assert regrouped.sum != straight.sum


def test_state_dict_keeps_pending_updates_until_their_fold():
    meter = AverageMeter()
    meter.update(2.0, n=2)
    meter.update(torch.tensor(0.25), n=4)
    state = meter.state_dict()
    assert state["sum"] == 5.0
    assert state["folded"] == 4.0
    assert state["pending"] == [[0.25, 4]]
    for _ in range(FOLD_SIZE - 1):
        meter.update(torch.tensor(0.25), n=4)
    assert "pending" not in meter.state_dict()
    assert meter.sum == 4.0 + FOLD_SIZE


def test_weighted_block_sum_matches_numpy():
    rng = np.random.default_rng(3)
    values = rng.normal(size=40).astype(np.float32)
    weights = [int(w) for w in rng.choice([1, 4, 4, 4], size=40)]
    block = weighted_block_sum([torch.tensor(v) for v in values], weights)
    assert block.dtype == torch.float64
    assert block.item() == pytest.approx(float(np.dot(values.astype(np.float64), weights)), rel=1e-12)
    restored, new = torch.tensor(1.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.bfloat16)
    mixed = weighted_block_sum([restored, new], [2, 3])
    assert mixed.item() == 9.0


def test_mixed_python_and_tensor_values():
    meter = AverageMeter()
    meter.update(1.0)
    meter.update(torch.tensor(3.0), n=3)
    assert meter.avg == pytest.approx(2.5)
    assert isinstance(meter.val, float)


def test_reset_and_empty_average():
    meter = AverageMeter()
    assert math.isnan(meter.avg)
    meter.update(4.0)
    meter.reset()
    assert meter.val == 0
    assert meter.count == 0
    assert math.isnan(meter.average())


@pytest.mark.parametrize("bad", [torch.ones(3), "1.0", None, True])
def test_rejects_non_scalars(bad):
    with pytest.raises(ValueError, match="value"):
        AverageMeter().update(bad)


def test_format_shows_value_and_average():
    meter = AverageMeter()
    meter.update(1.0)
    meter.update(2.0)
    assert f"{meter:.2f}" == "2.00 (1.50)"


def test_state_dict_round_trip():
    meter = AverageMeter()
    meter.update(torch.tensor(0.5), n=4)
    restored = AverageMeter()
    restored.load_state_dict(meter.state_dict())
    assert restored.avg == meter.avg
    assert restored.count == 4
    assert restored.val == 0.5


def test_meters_create_on_first_access():
    meters = AverageMeters()
    meters.loss.reset()
    meters.loss.update(1.0)
    assert list(meters.keys()) == ["loss"]
    assert isinstance(meters["loss"], AverageMeter)


def test_meters_update_forms_and_weights():
    meters = AverageMeters()
    meters.update(loss=1.0, acc=torch.tensor(0.5))
    meters.update({"loss": 3.0}, acc=1.0, n=3)
    assert meters.value().dict() == {"loss": 3.0, "acc": 1.0}
    averages = meters.average()
    assert averages["loss"] == pytest.approx((1.0 + 9.0) / 4)
    assert averages["acc"] == pytest.approx((0.5 + 3.0) / 4)
    assert meters.count.dict() == {"loss": 4, "acc": 4}


def test_meters_reject_non_meter_and_bad_values():
    with pytest.raises(ValueError, match="AverageMeter"):
        AverageMeters(loss=1.0)
    with pytest.raises(ValueError, match="scalar"):
        AverageMeters().update(loss=torch.ones(2))
    with pytest.raises(ValueError, match="at most one"):
        AverageMeters().update({"a": 1}, {"b": 2})


def test_meters_format_reset_and_state():
    meters = AverageMeters()
    meters.update(loss=1.0, acc=0.5)
    meters.update(loss=2.0, acc=1.0)
    assert f"{meters:.2f}" == "loss: 2.00 (1.50)\tacc: 1.00 (0.75)"
    state = meters.state_dict()
    meters.reset()
    assert all(math.isnan(v) for v in meters.avg.values())
    restored = AverageMeters()
    restored.load_state_dict(state)
    assert restored.avg.dict() == {"loss": 1.5, "acc": 0.75}


def test_multitask_meters_nested_and_dotted():
    meters = MultiTaskAverageMeters()
    meters.update({"task1": {"loss": 1.0}, "task2.loss": 2.0})
    meters.update({"task1": {"loss": 3.0}, "task2": {"loss": 4.0}}, n=3)
    assert meters.task1.loss.val == 3.0
    assert meters.value().dict() == {"task1": {"loss": 3.0}, "task2": {"loss": 4.0}}
    assert meters.average().dict() == {"task1": {"loss": 2.5}, "task2": {"loss": 3.5}}
    assert f"{meters:.1f}" == "task1.loss: 3.0 (2.5)\ntask2.loss: 4.0 (3.5)"
    meters.reset()
    assert math.isnan(meters.average()["task1.loss"])


@pytest.mark.parametrize("meters", [AverageMeters(), MultiTaskAverageMeters()])
def test_skip_empty_leaves_out_meters_never_updated_but_keeps_a_real_nan(meters):
    meters.update({"loss": 0.5, "spike": float("nan")})
    meters.update({"loss": 1.5})
    if isinstance(meters, AverageMeters):
        meters.time.reset()  # reference-style code: touched, never updated
    else:
        meters._meter("time")
    assert math.isnan(meters.average()["time"])  # the default keeps every meter, as before
    for values in (meters.value(skip_empty=True), meters.average(skip_empty=True)):
        assert sorted(values.keys()) == ["loss", "spike"]
        assert math.isnan(values["spike"])
    assert meters.average(skip_empty=True)["loss"] == pytest.approx(np.mean([0.5, 1.5]))
    meters.reset()
    assert dict(meters.average(skip_empty=True)) == {}


def test_multi_task_meters_stay_importable_from_the_average_meter_module():
    # Ported code imports them from `danling.metrics.average_meter`, where the reference keeps them.
    from danling.metrics import average_meter

    assert average_meter.MultiTaskAverageMeters is MultiTaskAverageMeters
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        average_meter.Missing
