"""Metrics keep their stored batches through `state_dict`/`load_state_dict`: what a mid-epoch checkpoint holds."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from danling.metrics import MetricMeters, Metrics, MultiTaskMetricMeters, MultiTaskMetrics
from danling.metrics.functional import accuracy, auroc


def batches(seed: int, count: int = 4, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(size, generator=generator), torch.randint(0, 2, (size,), generator=generator)) for _ in range(count)
    ]


def reference(parts):
    scores = torch.cat([score for score, _ in parts]).numpy()
    labels = torch.cat([label for _, label in parts]).numpy()
    return {"auroc": skm.roc_auc_score(labels, scores), "acc": skm.accuracy_score(labels, scores > 0.5)}


def test_metrics_resumed_from_their_state_average_over_every_batch():
    data = batches(0)
    before = Metrics(auroc=auroc, acc=accuracy)
    for score, label in data[:2]:
        before.update(score, label)
    state = before.state_dict()
    assert state["inputs"].shape == (32,)
    assert state["targets"].shape == (32,)
    after = Metrics(auroc=auroc, acc=accuracy)
    after.load_state_dict(state)
    for score, label in data[2:]:
        after.update(score, label)
    expected = reference(data)
    assert after.average()["auroc"] == pytest.approx(expected["auroc"])
    assert after.average()["acc"] == pytest.approx(expected["acc"])
    # Without the state, the later batches alone give other numbers: the comparison can fail.
    later = Metrics(auroc=auroc)
    for score, label in data[2:]:
        later.update(score, label)
    assert later.average()["auroc"] != pytest.approx(expected["auroc"])


def test_an_empty_state_restores_empty_metrics():
    metrics = Metrics(acc=accuracy)
    metrics.update(torch.tensor([0.9]), torch.tensor([1]))
    metrics.load_state_dict(Metrics(acc=accuracy).state_dict())
    assert metrics.state_dict() == {"inputs": None, "targets": None}
    assert metrics.inputs.numel() == 0


@pytest.mark.parametrize("streaming", [False, True])
def test_multi_task_metrics_keep_every_task(streaming):
    kind = MultiTaskMetricMeters if streaming else MultiTaskMetrics
    task = MetricMeters(acc=accuracy) if streaming else Metrics(auroc=auroc, acc=accuracy)

    def build():
        metrics = kind()
        metrics["one"] = task.__class__(**({"acc": accuracy} if streaming else {"auroc": auroc, "acc": accuracy}))
        metrics["two"] = task.__class__(acc=accuracy)
        return metrics

    first, second = batches(1), batches(2)
    before = build()
    for (a, b), (c, d) in zip(first[:2], second[:2]):
        before.update({"one": (a, b), "two": (c, d)})
    after = build()
    after.load_state_dict(before.state_dict())
    for (a, b), (c, d) in zip(first[2:], second[2:]):
        after.update({"one": (a, b), "two": (c, d)})
    result = after.average()
    assert result["one"]["acc"] == pytest.approx(reference(first)["acc"])
    assert result["two"]["acc"] == pytest.approx(reference(second)["acc"])
    if not streaming:
        assert result["one"]["auroc"] == pytest.approx(reference(first)["auroc"])


def test_a_state_of_other_tasks_is_refused_naming_them():
    metrics = MultiTaskMetrics()
    metrics["one"] = Metrics(acc=accuracy)
    with pytest.raises(ValueError, match=r"\['other'\].*\['one'\]"):
        metrics.load_state_dict({"other": {"inputs": None, "targets": None}})
