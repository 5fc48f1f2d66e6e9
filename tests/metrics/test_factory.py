from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from danling.metrics import (
    METRICS,
    Metrics,
    binary_metrics,
    multiclass_metric_meters,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)


def test_reference_metric_names():
    assert list(binary_metrics().metrics) == ["auroc", "auprc", "acc", "mcc", "f1"]
    assert list(multiclass_metrics(num_classes=3).metrics) == ["auroc", "auprc", "acc", "mcc", "f1"]
    assert list(multilabel_metrics(num_labels=3).metrics) == ["auroc", "auprc", "acc", "mcc", "f1"]
    assert list(regression_metrics().metrics) == ["pearson", "spearman", "r2", "rmse"]
    assert list(multiclass_metric_meters(num_classes=3)) == ["acc", "f1"]


@pytest.mark.parametrize("name", ["binary", "Multiclass", "multilabel", "regression"])
def test_registry_builds_factories(name: str):
    kwargs = {"multiclass": {"num_classes": 3}, "multilabel": {"num_labels": 2}}.get(name.lower(), {})
    assert isinstance(METRICS.build(type=name, **kwargs), Metrics)


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_on_logits_in_batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    metrics = multiclass_metrics(num_classes=5)
    logits, targets = torch.randn(300, 5, generator=generator), torch.randint(0, 5, (300,), generator=generator)
    targets[::7] = -100
    for start in range(0, 300, 64):
        metrics.update(logits[start : start + 64], targets[start : start + 64])
    keep = targets != -100
    probs, truth = logits[keep].softmax(-1).numpy(), targets[keep].numpy()
    result = metrics.average()
    assert result["auroc"] == pytest.approx(skm.roc_auc_score(truth, probs, multi_class="ovr"))
    assert result["acc"] == pytest.approx(skm.accuracy_score(truth, probs.argmax(1)))
    assert result["f1"] == pytest.approx(skm.f1_score(truth, probs.argmax(1), average="micro"))
    assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(truth, probs.argmax(1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_multi_output(seed: int):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(120, 2))
    target[3, 1] = np.nan
    input = target + rng.normal(size=(120, 2))
    metrics = regression_metrics(num_outputs=2)
    metrics.update(torch.tensor(input[:50]), torch.tensor(target[:50]))
    metrics.update(torch.tensor(input[50:]), torch.tensor(target[50:]))
    keep = ~np.isnan(target).any(1)
    x, y = input[keep], target[keep]
    result = metrics.average()
    assert result["r2"] == pytest.approx(skm.r2_score(y, x))
    assert result["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, x)))  # the reference's rmse
    assert result["spearman"] == pytest.approx(np.mean([stats.spearmanr(x[:, i], y[:, i])[0] for i in range(2)]))


def test_binary_metrics_on_logits():
    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(200, generator=generator), torch.randint(0, 2, (200,), generator=generator)
    metrics = binary_metrics()
    metrics.update(logits, target)
    probs = logits.sigmoid().numpy()
    result = metrics.average()
    assert result["auprc"] == pytest.approx(skm.average_precision_score(target.numpy(), probs))
    assert result["f1"] == pytest.approx(skm.f1_score(target.numpy(), probs >= 0.5))
