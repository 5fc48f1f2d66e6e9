from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from danling.metrics.functional import accuracy, auprc, auroc, f1_score, mcc, mse, pearson, r2_score, rmse, spearman

SEEDS = [0, 1, 2]


def binary_data(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, size=n)
    scores = np.clip(rng.normal(0.4 + 0.2 * target, 0.25), 0, 1)
    if ties:
        scores = np.round(scores, 1)
    return scores, target


def multiclass_data(seed: int, n: int = 500, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[target]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, target


def multilabel_data(seed: int, n: int = 300, num_labels: int = 3):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, size=(n, num_labels))
    probs = np.clip(rng.normal(0.4 + 0.2 * target, 0.25), 0, 1).round(2)
    return probs, target


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_binary_ranking_metrics(seed: int, ties: bool):
    scores, target = binary_data(seed, ties=ties)
    input, truth = torch.tensor(scores), torch.tensor(target)
    assert auroc(input, truth).item() == pytest.approx(skm.roc_auc_score(target, scores))
    assert auprc(input, truth).item() == pytest.approx(skm.average_precision_score(target, scores))


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_logits_are_squashed(seed: int):
    scores, target = binary_data(seed)
    logits = torch.logit(torch.tensor(scores).clamp(1e-4, 1 - 1e-4)) * 3
    expected = skm.roc_auc_score(target, logits.numpy())
    assert auroc(logits, torch.tensor(target)).item() == pytest.approx(expected)
    expected_acc = skm.accuracy_score(target, (logits.numpy() >= 0).astype(int))
    assert accuracy(logits, torch.tensor(target)).item() == pytest.approx(expected_acc)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_threshold_metrics(seed: int):
    scores, target = binary_data(seed)
    pred = (scores >= 0.5).astype(int)
    input, truth = torch.tensor(scores), torch.tensor(target)
    assert accuracy(input, truth).item() == pytest.approx(skm.accuracy_score(target, pred))
    assert f1_score(input, truth).item() == pytest.approx(skm.f1_score(target, pred))
    assert mcc(input, truth).item() == pytest.approx(skm.matthews_corrcoef(target, pred))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_multiclass_ranking_metrics(seed: int, average: str):
    probs, target = multiclass_data(seed)
    input, truth = torch.tensor(probs), torch.tensor(target)
    expected_auroc = skm.roc_auc_score(target, probs, multi_class="ovr", average=average)
    assert auroc(input, truth, num_classes=4, average=average).item() == pytest.approx(expected_auroc)
    onehot = label_binarize(target, classes=range(4))
    expected_auprc = skm.average_precision_score(onehot, probs, average=average)
    assert auprc(input, truth, num_classes=4, average=average).item() == pytest.approx(expected_auprc)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_micro_and_per_class_ranking(seed: int):
    probs, target = multiclass_data(seed)
    onehot = label_binarize(target, classes=range(4))
    input, truth = torch.tensor(probs), torch.tensor(target)
    assert auroc(input, truth, num_classes=4, average="micro").item() == pytest.approx(
        skm.roc_auc_score(onehot, probs, average="micro")
    )
    per_class = auprc(input, truth, num_classes=4, average=None)
    np.testing.assert_allclose(per_class.numpy(), skm.average_precision_score(onehot, probs, average=None))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
def test_multiclass_threshold_metrics(seed: int, average: str):
    probs, target = multiclass_data(seed)
    pred = probs.argmax(1)
    input, truth = torch.tensor(probs), torch.tensor(target)
    result = f1_score(input, truth, num_classes=4, average=average).item()
    assert result == pytest.approx(skm.f1_score(target, pred, average=average))
    assert mcc(input, truth, num_classes=4).item() == pytest.approx(skm.matthews_corrcoef(target, pred))
    assert accuracy(input, truth, num_classes=4).item() == pytest.approx(skm.accuracy_score(target, pred))
    assert accuracy(input, truth, num_classes=4, average="macro").item() == pytest.approx(
        skm.balanced_accuracy_score(target, pred)
    )


def test_multiclass_macro_f1_skips_absent_classes():
    target = np.array([0, 0, 1, 1, 0])
    probs = np.eye(5)[[0, 1, 1, 1, 0]]  # classes 2..4 never appear
    expected = skm.f1_score(target, probs.argmax(1), average="macro")
    assert f1_score(torch.tensor(probs), torch.tensor(target), num_classes=5, average="macro").item() == (
        pytest.approx(expected)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_multilabel_metrics(seed: int, average: str):
    probs, target = multilabel_data(seed)
    pred = (probs >= 0.5).astype(int)
    input, truth = torch.tensor(probs), torch.tensor(target)
    kwargs = {"num_labels": 3, "average": average}
    assert auroc(input, truth, **kwargs).item() == pytest.approx(skm.roc_auc_score(target, probs, average=average))
    expected_auprc = skm.average_precision_score(target, probs, average=average)
    assert auprc(input, truth, **kwargs).item() == pytest.approx(expected_auprc)
    assert f1_score(input, truth, **kwargs).item() == pytest.approx(skm.f1_score(target, pred, average=average))
    assert accuracy(input, truth, num_labels=3).item() == pytest.approx(skm.accuracy_score(target, pred))
    expected_mcc = skm.matthews_corrcoef(target.ravel(), pred.ravel())
    assert mcc(input, truth, num_labels=3).item() == pytest.approx(expected_mcc)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_correlations(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=300)
    input = target + rng.normal(size=300)
    if ties:
        input, target = np.round(input), np.round(target)
    x, y = torch.tensor(input), torch.tensor(target)
    assert pearson(x, y).item() == pytest.approx(stats.pearsonr(input, target)[0])
    assert spearman(x, y).item() == pytest.approx(stats.spearmanr(input, target)[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_output_regression(seed: int):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(200, 3))
    input = target + rng.normal(scale=0.5, size=(200, 3))
    x, y = torch.tensor(input), torch.tensor(target)
    assert r2_score(x, y, num_outputs=3).item() == pytest.approx(skm.r2_score(target, input))
    assert mse(x, y, num_outputs=3).item() == pytest.approx(skm.mean_squared_error(target, input))
    # the reference library's rmse: root of the uniformly averaged MSE; scikit-learn's: mean of per-output roots
    assert rmse(x, y, num_outputs=3).item() == pytest.approx(math.sqrt(skm.mean_squared_error(target, input)))
    per_output_roots = skm.root_mean_squared_error(target, input)
    assert rmse(x, y, num_outputs=3, root_per_output=True).item() == pytest.approx(per_output_roots)
    raw_roots = skm.root_mean_squared_error(target, input, multioutput="raw_values")
    np.testing.assert_allclose(rmse(x, y, num_outputs=3, multioutput="raw_values").numpy(), raw_roots)
    expected_pearson = np.mean([stats.pearsonr(input[:, i], target[:, i])[0] for i in range(3)])
    assert pearson(x, y, num_outputs=3).item() == pytest.approx(expected_pearson)
    raw = spearman(x, y, num_outputs=3, multioutput="raw_values").numpy()
    np.testing.assert_allclose(raw, [stats.spearmanr(input[:, i], target[:, i])[0] for i in range(3)])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_degenerate_cases_follow_references():
    scores = torch.tensor([0.1, 0.6, 0.3])
    negatives = torch.tensor([0, 0, 0])
    # a single class: the reference library (torcheval) reports 0.5; `undefined=nan` gives scikit-learn's "undefined"
    assert auroc(scores, negatives).item() == 0.5
    assert math.isnan(auroc(scores, negatives, undefined=float("nan")).item())
    assert auprc(scores, negatives).item() == pytest.approx(skm.average_precision_score([0, 0, 0], [0.1, 0.6, 0.3]))
    constant_pred = torch.tensor([0.9, 0.8, 0.7])
    assert mcc(constant_pred, torch.tensor([0, 1, 1])).item() == skm.matthews_corrcoef([0, 1, 1], [1, 1, 1])
    assert f1_score(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])).item() == skm.f1_score(
        [0, 0], [0, 0], zero_division=0
    )
    flat = torch.tensor([2.0, 2.0, 2.0])
    assert r2_score(flat, flat).item() == skm.r2_score(flat.numpy(), flat.numpy())
    assert r2_score(torch.tensor([1.0, 2.0, 2.0]), flat).item() == skm.r2_score(flat.numpy(), [1.0, 2.0, 2.0])
    assert math.isnan(pearson(torch.tensor([1.0, 2.0, 3.0]), flat).item())


def test_ignore_index_and_nan_targets_are_dropped():
    scores, target = binary_data(3)
    masked = target.copy()
    masked[::5] = -100
    keep = masked != -100
    expected = skm.roc_auc_score(target[keep], scores[keep])
    assert auroc(torch.tensor(scores), torch.tensor(masked)).item() == pytest.approx(expected)
    y = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    assert mse(torch.tensor([1.0, 9.0, 2.0, 4.0]), y).item() == pytest.approx(1 / 3)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        auroc(torch.rand(3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        accuracy(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        accuracy(torch.rand(2, 3), torch.tensor([0, 5]), num_classes=3)
    with pytest.raises(ValueError, match="non-finite"):
        auprc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Empty"):
        auroc(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError, match="Only one of"):
        auroc(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]), num_classes=2, num_labels=2)


def test_binary_auroc_with_one_class_left_after_ignore_index_is_one_half():
    scores = torch.tensor([0.2, 0.7, 0.4, 0.9])
    target = torch.tensor([1, -100, 1, -100])
    assert auroc(scores, target, task="binary").item() == 0.5
    assert math.isnan(auroc(scores, target, task="binary", undefined=float("nan")).item())


def absent_class_data(seed: int, num_classes: int = 6, n: int = 40):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes - 2, size=n)  # the last two classes never occur
    probs = rng.dirichlet(np.ones(num_classes), size=n)
    return probs, target


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_ranking_with_absent_classes_matches_the_reference_macro_average(seed: int):
    probs, target = absent_class_data(seed)
    onehot = np.eye(6)[target]
    present = [skm.roc_auc_score(onehot[:, c], probs[:, c]) for c in range(4)]
    input, truth = torch.tensor(probs), torch.tensor(target)
    # an absent class counts 0.5 in the AUROC macro average and 0 in the AUPRC one, as the reference's backend does
    assert auroc(input, truth, num_classes=6).item() == pytest.approx((sum(present) + 2 * 0.5) / 6)
    assert auroc(input, truth, num_classes=6, undefined=float("nan")).item() == pytest.approx(np.mean(present))
    precision = [skm.average_precision_score(onehot[:, c], probs[:, c]) for c in range(4)]
    assert auprc(input, truth, num_classes=6).item() == pytest.approx(sum(precision) / 6)


@pytest.mark.parametrize("seed", SEEDS)
def test_absent_classes_agree_with_torcheval_when_installed(seed: int):
    tef = pytest.importorskip("torcheval.metrics.functional")
    probs, target = absent_class_data(seed)
    input, truth = torch.tensor(probs, dtype=torch.float32), torch.tensor(target)
    expected_auroc = tef.multiclass_auroc(input, truth, num_classes=6, average="macro")
    assert auroc(input, truth, num_classes=6).item() == pytest.approx(expected_auroc.item(), abs=1e-6)
    expected_auprc = tef.multiclass_auprc(input, truth, num_classes=6, average="macro")
    assert auprc(input, truth, num_classes=6).item() == pytest.approx(expected_auprc.item(), abs=1e-6)
    negatives = torch.zeros(5, dtype=torch.long)
    assert auroc(input[:5, 0], negatives, task="binary").item() == tef.binary_auroc(input[:5, 0], negatives).item()


def test_multilabel_auroc_label_without_positives_counts_one_half():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.7, 0.4], [0.3, 0.6]])
    target = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert auroc(probs, target, num_labels=2).item() == pytest.approx((1.0 + 0.5) / 2)
    assert auroc(probs, target, num_labels=2, undefined=float("nan")).item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_task_weights_weigh_labels_and_outputs_like_the_reference(seed: int):
    weights = [0.2, 0.3, 0.5]
    probs, labels = multilabel_data(seed)
    input, truth = torch.tensor(probs), torch.tensor(labels)
    per_label_auroc = [skm.roc_auc_score(labels[:, i], probs[:, i]) for i in range(3)]
    per_label_auprc = [skm.average_precision_score(labels[:, i], probs[:, i]) for i in range(3)]
    assert auroc(input, truth, num_labels=3, task_weights=weights).item() == pytest.approx(
        np.dot(per_label_auroc, weights)
    )
    assert auprc(input, truth, num_labels=3, task_weights=torch.tensor(weights)).item() == pytest.approx(
        np.dot(per_label_auprc, weights)
    )
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(100, 3))
    prediction = target + rng.normal(scale=0.5, size=(100, 3))
    x, y = torch.tensor(prediction), torch.tensor(target)
    expected = {
        pearson: [stats.pearsonr(prediction[:, i], target[:, i])[0] for i in range(3)],
        spearman: [stats.spearmanr(prediction[:, i], target[:, i])[0] for i in range(3)],
        r2_score: skm.r2_score(target, prediction, multioutput="raw_values"),
        mse: skm.mean_squared_error(target, prediction, multioutput="raw_values"),
        rmse: skm.root_mean_squared_error(target, prediction, multioutput="raw_values"),
    }
    for metric, per_output in expected.items():
        result = metric(x, y, num_outputs=3, task_weights=weights).item()
        assert result == pytest.approx(np.dot(per_output, weights)), metric.__name__


def test_task_weights_errors_name_the_problem():
    with pytest.raises(ValueError, match="multilabel"):
        auroc(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]), task_weights=[1.0])
    with pytest.raises(ValueError, match="one weight per task"):
        pearson(torch.rand(10, 2), torch.rand(10, 2), num_outputs=2, task_weights=[1.0, 2.0, 3.0])
