"""Classification accuracy."""

from __future__ import annotations

from torch import Tensor

from ..preprocesses import ArrayLike
from ._utils import Average, TaskLike, prepare_classification, reduce_scores
from .confusion import predict_labels, stat_scores


def accuracy(
    input: ArrayLike,
    target: ArrayLike,
    task: TaskLike = None,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "micro",
    threshold: float = 0.5,
    ignore_index: int | None = -100,
    preprocess: bool = True,
) -> Tensor:
    r"""
    Fraction of correct predictions.

    - binary: probabilities `>= threshold` are positive (`sklearn.metrics.accuracy_score`);
    - multiclass: the arg-max class; `average="micro"` is plain accuracy, `"macro"` the mean recall over the
      classes present in `target` (`sklearn.metrics.balanced_accuracy_score`), `None` the recall per class;
    - multilabel: subset accuracy, a sample counting only when all its labels are right (`accuracy_score`).

    Args:
        input: Probabilities or logits.
        target: Targets.
        task: `"binary"`, `"multiclass"` or `"multilabel"`; inferred from `num_classes`/`num_labels` when `None`.
        num_classes: Number of classes (multiclass).
        num_labels: Number of labels (multilabel).
        average: Multiclass averaging, see above.
        threshold: Decision threshold for binary and multilabel probabilities.
        ignore_index: Target value to drop.
        preprocess: Whether to flatten, filter and activate the inputs first.

    Returns:
        A 0-d tensor (per-class tensor for multiclass with `average=None`); `nan` when no sample is left.

    Examples:
        >>> accuracy([0.2, 0.7, 0.6, 0.1], [0, 1, 0, 0])
        tensor(0.7500)
        >>> accuracy([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1], num_classes=2, average="macro")
        tensor(0.7500)
    """
    task, input, target = prepare_classification(input, target, task, num_classes, num_labels, ignore_index, preprocess)
    pred = predict_labels(input, task, threshold)
    if task == "multilabel":
        return (pred == target.long()).all(dim=-1).float().mean()
    if task == "binary" or average == "micro":
        return (pred == target.long()).float().mean()
    tp, _, fn = stat_scores(pred, target, task, input.shape[-1])
    support = tp + fn
    recall = tp.float() / support.clamp(min=1)
    recall[support == 0] = float("nan")
    return reduce_scores(recall, average, support=support)
