"""Compare danling.metrics with torchmetrics on 1e6 samples on CPU.

Run:
    pip install 'danling[benchmark]'
    python benchmarks/bench_metrics.py [--samples 1000000] [--repeats 5]

Prints, per case, the median wall time of each library over several repeats and the ratio ours / torchmetrics
(below 1 means danling is faster), after checking both give the same value.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch
import torchmetrics.functional as tmf
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)

from danling.metrics import multiclass_metrics
from danling.metrics.functional import auprc, auroc, spearman


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up, and the value to compare
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def multiclass_cycle_ours(logits: torch.Tensor, target: torch.Tensor, batch: int) -> float:
    metrics = multiclass_metrics(num_classes=logits.shape[-1])
    for start in range(0, len(target), batch):
        metrics.update(logits[start : start + batch], target[start : start + batch])
    return metrics.average()["auroc"]


def multiclass_cycle_torchmetrics(logits: torch.Tensor, target: torch.Tensor, batch: int) -> float:
    num_classes = logits.shape[-1]
    collection = {
        "auroc": MulticlassAUROC(num_classes, thresholds=None),
        "auprc": MulticlassAveragePrecision(num_classes, thresholds=None),
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "mcc": MulticlassMatthewsCorrCoef(num_classes),
        "f1": MulticlassF1Score(num_classes, average="micro"),
    }
    for start in range(0, len(target), batch):
        probs = logits[start : start + batch].softmax(-1)
        for metric in collection.values():
            metric.update(probs, target[start : start + batch])
    return {name: metric.compute() for name, metric in collection.items()}["auroc"].item()


def cases(samples: int) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(samples, generator=generator)
    labels = torch.randint(0, 2, (samples,), generator=generator)
    x = torch.randn(samples, generator=generator)
    y = x + torch.randn(samples, generator=generator)
    logits = torch.randn(samples, 10, generator=generator)
    classes = torch.randint(0, 10, (samples,), generator=generator)
    return {
        "binary auroc": (
            lambda: auroc(scores, labels).item(),
            lambda: tmf.classification.binary_auroc(scores, labels).item(),
        ),
        "binary auprc": (
            lambda: auprc(scores, labels).item(),
            lambda: tmf.classification.binary_average_precision(scores, labels).item(),
        ),
        "spearman": (lambda: spearman(x, y).item(), lambda: tmf.spearman_corrcoef(x, y).item()),
        "multiclass_metrics(10) update+average": (
            lambda: multiclass_cycle_ours(logits, classes, 10_000),
            lambda: multiclass_cycle_torchmetrics(logits, classes, 10_000),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, (ours, theirs) in cases(args.samples).items():
        ours_time, ours_value = median_time(ours, args.repeats)
        theirs_time, theirs_value = median_time(theirs, args.repeats)
        rows.append((name, ours_time, theirs_time, ours_value, theirs_value))
    header = f"{'case':<40} {'danling (s)':>12} {'torchmetrics (s)':>17} {'ratio':>7} {'values agree':>13}"
    lines = [f"samples={args.samples} repeats={args.repeats} threads={torch.get_num_threads()}", header]
    for name, ours_time, theirs_time, ours_value, theirs_value in rows:
        agree = abs(ours_value - theirs_value) < 1e-4
        lines.append(
            f"{name:<40} {ours_time:>12.4f} {theirs_time:>17.4f} {ours_time / theirs_time:>7.2f} {agree!s:>13}"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
