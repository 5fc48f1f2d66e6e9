"""Metric functions in plain torch, checked against scikit-learn and scipy.

Every function takes `(input, target, ...)`, infers the task from `num_classes` / `num_labels` where that applies,
preprocesses the inputs unless `preprocess=False`, and returns a tensor.
"""

from .accuracy import accuracy
from .auprc import auprc
from .auroc import auroc
from .confusion import confusion_matrix
from .correlation import pearson, spearman
from .f1_score import f1_score
from .mcc import mcc
from .regression import mse, r2_score, rmse

__all__ = [
    "accuracy",
    "auprc",
    "auroc",
    "confusion_matrix",
    "f1_score",
    "mcc",
    "mse",
    "pearson",
    "r2_score",
    "rmse",
    "spearman",
]
