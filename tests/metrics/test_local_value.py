"""`value()` (every rank's latest batch, a collective) against `local_value()` (this rank's, no communication).

The multi-process behaviour is in `test_distributed.py`; here a single process checks that the two agree, and a
stand-in for the gather shows which code paths would communicate (the runner's per-step results must not).
"""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

import danling.metrics.metrics as metrics_module
from danling.metrics import MetricMeters, Metrics, MultiTaskMetricMeters, MultiTaskMetrics, ScoreMetrics
from danling.metrics.functional import accuracy, auroc


def batches(seed: int, sizes=(9, 6)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    data = []
    for size in sizes:
        target = torch.randint(0, 2, (size,), generator=generator)
        target[:2] = torch.tensor([0, 1])  # both classes, so AUROC is defined
        data.append((torch.rand(size, generator=generator), target))
    return data


def sklearn_scores(input: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {
        "auroc": skm.roc_auc_score(target.numpy(), input.numpy()),
        "acc": skm.accuracy_score(target.numpy(), input.numpy() >= 0.5),
    }


@pytest.fixture
def no_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the gather of `Metrics` fail, as a stand-in for a collective that other ranks never join."""

    def gather_rows(local):
        raise AssertionError("collective")

    monkeypatch.setattr(metrics_module, "gather_rows", gather_rows)


def test_single_process_value_and_its_aliases_equal_local_value():
    metrics = ScoreMetrics(auroc=auroc, acc=accuracy)
    for input, target in batches(0):
        metrics.update(input, target)
    expected = sklearn_scores(*batches(0)[-1])
    for name, result in [("value", metrics.value()), ("local_value", metrics.local_value()), ("val", metrics.val)]:
        assert result.dict() == pytest.approx(expected), name
    assert metrics.batch().dict() == metrics.bat.dict() == metrics.value().dict()
    assert metrics.batch_score == pytest.approx(expected["auroc"])


def test_local_value_never_gathers_while_value_does(no_gather):
    metrics = Metrics(auroc=auroc, acc=accuracy)
    input, target = batches(1)[0]
    metrics.update(input, target)
    assert metrics.local_value().dict() == pytest.approx(sklearn_scores(input, target))
    for read in (metrics.value, metrics.batch, lambda: metrics.val, lambda: metrics.input):
        with pytest.raises(AssertionError, match="collective"):
            read()


def test_multitask_local_value_scores_each_task_without_gathering(no_gather):
    tasks = MultiTaskMetrics()
    tasks["cls"] = Metrics(auroc=auroc, acc=accuracy)
    tasks["group.other"] = Metrics(acc=accuracy)
    first, second = batches(2)
    tasks.update({"cls": first, "group": {"other": second}})
    local = tasks.local_value()
    assert local["cls"] == pytest.approx(sklearn_scores(*first))
    assert local["group.other.acc"] == pytest.approx(sklearn_scores(*second)["acc"])
    with pytest.raises(AssertionError, match="collective"):
        tasks.value()


def test_multitask_metric_meters_local_value_is_the_meters_value():
    meters = MultiTaskMetricMeters()
    meters["cls"] = MetricMeters(acc=accuracy)
    for input, target in batches(3):
        meters.update({"cls": (input, target)})
    expected = sklearn_scores(*batches(3)[-1])["acc"]
    assert meters.local_value()["cls.acc"] == pytest.approx(expected)
    assert meters.value().dict() == meters.local_value().dict()


def make_step_metrics(kind: str):
    if kind == "metrics":
        return Metrics(auroc=auroc, acc=accuracy)
    if kind == "multitask":
        tasks = MultiTaskMetrics()
        tasks["cls"] = Metrics(auroc=auroc, acc=accuracy)
        return tasks
    return MetricMeters(acc=accuracy)  # meters have no `local_value`: their `value()` is per rank already


@pytest.mark.parametrize("kind", ["metrics", "multitask", "meters"])
def test_runner_step_result_scores_this_ranks_batch_without_a_collective(new_runner, no_gather, kind):
    runner = new_runner()
    runner.metrics = make_step_metrics(kind)
    data = batches(4)
    for input, target in data:
        if kind == "multitask":
            runner.metrics.update({"cls": (input, target)})
        else:
            runner.metrics.update(input, target)
    expected = sklearn_scores(*data[-1])
    result = runner.get_step_result()
    step = result["cls"] if kind == "multitask" else result
    assert step["acc"] == pytest.approx(expected["acc"])
    if kind != "meters":
        assert step["auroc"] == pytest.approx(expected["auroc"])
