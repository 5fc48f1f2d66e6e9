from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from danling.metrics import MetricMeter, MetricMeters, Metrics, MultiTaskMetrics, ScoreMetrics
from danling.metrics.functional import accuracy, auprc, auroc, f1_score, pearson, spearman


def batches(seed: int, sizes=(7, 13, 5)):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, generator=generator), torch.randint(0, 2, (n,), generator=generator)) for n in sizes]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_covers_all_batches_and_value_the_last(seed: int):
    metrics = Metrics(auroc=auroc, auprc=auprc)
    data = batches(seed)
    for input, target in data:
        metrics.update(input, target)
    inputs = torch.cat([i for i, _ in data]).numpy()
    targets = torch.cat([t for _, t in data]).numpy()
    average = metrics.average()
    assert average["auroc"] == pytest.approx(skm.roc_auc_score(targets, inputs))
    assert average["auprc"] == pytest.approx(skm.average_precision_score(targets, inputs))
    last_input, last_target = data[-1]
    assert metrics.value()["auroc"] == pytest.approx(skm.roc_auc_score(last_target.numpy(), last_input.numpy()))
    assert metrics.avg.dict() == average.dict()


def test_update_never_syncs(no_device_sync):
    metrics = Metrics(auroc=auroc)
    for input, target in batches(0):
        metrics.update(input, target)
    no_device_sync.undo()
    assert 0 <= metrics.average()["auroc"] <= 1


def test_update_detaches():
    metrics = Metrics(acc=accuracy)
    metrics.update(torch.rand(4, requires_grad=True) * 1, torch.tensor([0, 1, 0, 1]))
    assert not metrics.inputs.requires_grad


def test_ignore_index_dropped_by_default_preprocess():
    metrics = Metrics(acc=accuracy)
    metrics.update([0.9, 0.8, 0.1], [1, -100, 0])
    assert metrics.average()["acc"] == 1.0


def test_empty_and_reset_give_nan():
    metrics = Metrics(acc=accuracy)
    assert math.isnan(metrics.average()["acc"])
    metrics.update([0.9, 0.1], [1, 0])
    metrics.reset()
    assert math.isnan(metrics.value()["acc"])
    assert math.isnan(metrics.average()["acc"])
    for stored in (metrics.input, metrics.target, metrics.inputs, metrics.targets):
        assert torch.equal(stored, torch.empty(0))


def test_empty_metrics_hold_empty_tensors():
    metrics = Metrics()
    assert torch.equal(metrics.inputs, torch.empty(0))
    assert torch.equal(metrics.targets, torch.empty(0))
    assert torch.equal(metrics.input, torch.empty(0))
    assert torch.equal(metrics.target, torch.empty(0))


def test_single_output_column_is_stored_flat():
    generator = torch.Generator().manual_seed(0)
    metrics = Metrics(pearson=pearson)
    preds, targets = [], []
    for _ in range(3):
        pred, target = torch.randn(8, 1, generator=generator), torch.randn(8, generator=generator)
        metrics.update(pred, target)
        preds.append(pred)
        targets.append(target)
        assert metrics.input.shape == (8,)
        assert metrics.target.shape == (8,)
        assert torch.equal(metrics.input, pred.view(-1))
        expected = np.corrcoef(pred.view(-1).numpy(), target.numpy())[0, 1]
        assert metrics.value()["pearson"] == pytest.approx(expected)
    assert metrics.inputs.shape == (24,)
    assert metrics.targets.shape == (24,)
    assert torch.equal(metrics.inputs, torch.cat(preds).view(-1))
    assert torch.equal(metrics.targets, torch.cat(targets))


def test_reference_constructor_options():
    metrics = Metrics(auroc, accuracy, ignore_index=-1)  # positional functions named by __name__
    assert list(metrics.metrics) == ["auroc", "accuracy"]
    metrics.update([0.9, 0.2, 0.7, 0.4], [1, -1, 0, -1])
    assert metrics.average()["accuracy"] == pytest.approx(skm.accuracy_score([1, 0], [1, 1]))
    kept = Metrics(accuracy=accuracy)  # the default still drops -100 only
    kept.update([0.9, 0.2, 0.7], [1, -100, 0])
    assert kept.compute()["accuracy"] == pytest.approx(0.5)


def test_update_rejects_bad_batches():
    metrics = Metrics(acc=accuracy)
    with pytest.raises(ValueError, match="Empty"):
        metrics.update([], [])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        metrics.update(torch.rand(3), torch.zeros(4))
    metrics.update(torch.rand(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        metrics.update(torch.rand(2, 4), torch.zeros(2))


def test_dict_results_are_merged_or_prefixed():
    def both(input, target):
        return {"pearson": pearson(input, target), "spearman": spearman(input, target)}

    data = ([1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 4.0])
    merged = Metrics(corr=both, preprocess=None)
    merged.update(*data)
    assert set(merged.average().keys()) == {"pearson", "spearman"}
    prefixed = Metrics(corr=both, preprocess=None, merge_dict=False)
    prefixed.update(*data)
    assert set(prefixed.average().keys()) == {"corr.pearson", "corr.spearman"}


def test_metrics_rejects_non_callables():
    with pytest.raises(ValueError, match="callable"):
        Metrics(acc=0.5)


def test_score_metrics():
    metrics = ScoreMetrics(auroc=auroc, acc=accuracy, score_name="acc")
    metrics.update([0.9, 0.2, 0.7], [1, 0, 0])
    assert metrics.average_score == pytest.approx(2 / 3)
    assert metrics.get_score("batch") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="score_name"):
        ScoreMetrics(auroc=auroc, score_name="f1")


def test_score_metrics_reject_unknown_scope_and_score_name():
    metrics = ScoreMetrics(auroc=auroc, auprc=auprc, acc=accuracy)
    assert metrics.score_name == "auroc"
    for pred, target in batches(0):
        metrics.update(pred, target)
        assert metrics.batch_score == metrics.val["auroc"] == metrics.get_score("batch")
        assert metrics.average_score == metrics.avg["auroc"] == metrics.get_score("average")
    with pytest.raises(ValueError, match="'total'"):
        metrics.get_score("total")
    with pytest.raises(ValueError, match="'f1'"):
        metrics.score_name = "f1"
    assert metrics.score_name == "auroc"
    metrics.score_name = "acc"
    assert metrics.get_score("average") == metrics.avg["acc"]


def test_multitask_metrics():
    metrics = MultiTaskMetrics()
    metrics["cls"] = Metrics(acc=accuracy)
    metrics["group.reg"] = Metrics(pearson=pearson)
    metrics.update({"cls": {"input": [0.9, 0.2], "target": [1, 1]}, "group": {"reg": ([1.0, 2.0, 4.0], [1, 2, 3])}})
    result = metrics.average()
    assert result["cls.acc"] == 0.5
    assert result["group.reg.pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 2, 3])[0, 1])
    with pytest.raises(ValueError, match="not found"):
        metrics.update({"missing": ([0.1], [1])})
    metrics.reset()
    assert math.isnan(metrics.average()["cls.acc"])


def test_metric_meters_weight_batches_by_size():
    meters = MetricMeters(acc=accuracy)
    meters.update([0.9, 0.1, 0.8, 0.3], [1, 0, 0, 0])
    meters.update([0.2, 0.7], [1, -100])
    meter = MetricMeter(accuracy)
    meter.update([0.9, 0.1], [1, 1])
    assert meters.average()["acc"] == pytest.approx(3 / 5)
    assert meter.avg == 0.5


def test_metric_meters_weight_token_level_batches_by_kept_samples():
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.rand(2, t, generator=generator), torch.randint(0, 2, (2, t), generator=generator)) for t in (3, 7)
    ]
    meters, meter = MetricMeters(acc=accuracy), MetricMeter(accuracy)
    for scores, labels in batches:
        meters.update(scores, labels)
        meter.update(scores, labels)
    scores = torch.cat([s.reshape(-1) for s, _ in batches]).numpy()
    labels = torch.cat([t.reshape(-1) for _, t in batches]).numpy()
    expected = skm.accuracy_score(labels, scores >= 0.5)  # a mean over samples: exact when weighted by samples
    assert meters.average()["acc"] == pytest.approx(expected)
    assert meter.avg == pytest.approx(expected)


def test_metric_meters_reference_constructor_options():
    meters = MetricMeters(accuracy, ignore_index=-1)  # positional functions named by __name__
    meters.update([0.9, 0.2, 0.7, 0.4], [1, -1, 0, -1])
    assert meters.average()["accuracy"] == pytest.approx(skm.accuracy_score([1, 0], [1, 1]))
    meter = MetricMeter(accuracy, ignore_index=-1)
    meter.update([0.9, 0.2, 0.7], [1, -1, 1])
    assert meter.count == 2
    assert meter.avg == 1.0
    streamed = MetricMeters(Metrics(acc=accuracy, f1=f1_score))  # a Metrics' functions, streamed
    assert list(streamed.keys()) == ["acc", "f1"]
    stored = Metrics(MetricMeters(acc=accuracy, ignore_index=-1))  # and back, with its preprocessing
    stored.update([0.9, 0.2, 0.7], [1, -1, 0])
    assert stored.average()["acc"] == pytest.approx(0.5)


def test_multitask_metric_meters_stream_each_task():
    from danling.metrics import MultiTaskMetricMeters

    meters = MultiTaskMetricMeters()
    meters["dataset1.cls"] = MetricMeters(acc=accuracy)
    meters["dataset2"] = Metrics(acc=accuracy)  # a Metrics is streamed with the same functions
    meters["dataset3"] = accuracy  # a function becomes a MetricMeter
    data = {name: batches(seed, sizes=(6, 10)) for seed, name in enumerate(["dataset1.cls", "dataset2", "dataset3"])}
    for index in range(2):
        meters.update({name: task_batches[index] for name, task_batches in data.items()})
    average = meters.average()
    for name, task_batches in data.items():
        scores = torch.cat([s for s, _ in task_batches]).numpy()
        labels = torch.cat([t for _, t in task_batches]).numpy()
        expected = skm.accuracy_score(labels, scores >= 0.5)
        value = average[name] if name == "dataset3" else average[name]["acc"]
        assert value == pytest.approx(expected), name
    with pytest.raises(ValueError, match="not found"):
        meters.update({"loss": ([0.1], [0])})
    with pytest.raises(ValueError, match="MetricMeters"):
        meters["bad"] = 0.5


def test_ragged_batches_as_in_the_reference_example():
    metrics = Metrics(auroc=auroc, auprc=auprc, ignore_index=-100)
    metrics.update([[0.1, 0.4, 0.6, 0.8], [0.1, 0.4, 0.6]], [[0, -100, 1, 0], [0, -100, 1]])
    kept_scores, kept_labels = [0.1, 0.6, 0.8, 0.1, 0.6], [0, 1, 0, 0, 1]
    value = metrics.value()
    assert value["auroc"] == pytest.approx(skm.roc_auc_score(kept_labels, kept_scores))
    assert value["auprc"] == pytest.approx(skm.average_precision_score(kept_labels, kept_scores))
