"""Worker for `test_distributed.py`: `value()` scores the latest batch of every rank, `local_value()` this rank's.

Run with `python -m torch.distributed.run --nproc_per_node=4 ... OUT_DIR`. Every rank updates one batch per step,
of a size that differs across ranks and steps; the last rank has no batch at step 0 and rank 1 skips step 1 (so its
latest batch is still the one of step 0). After each update every rank reads the values, as the reference library's
`test_tensor_binary_distributed` does, and writes them to OUT_DIR/rank{rank}.json next to scikit-learn's numbers.
Every rank builds every rank's batches from the same seeds, so the expected numbers never come from a gather.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import timedelta
from pathlib import Path

import torch
from sklearn import metrics as skm
from torch import distributed as dist

from danling.metrics import Metrics, MultiTaskMetrics, ScoreMetrics
from danling.metrics.functional import accuracy, auroc

STEPS = 3
COLLECTIVES = ("all_gather", "all_gather_object", "all_reduce", "broadcast", "broadcast_object_list", "barrier")


def record_collectives(calls: list[str]) -> None:
    """Append the name of each `torch.distributed` collective to `calls` whenever one is called from now on."""

    def recorded(name: str, collective):
        def call(*args, **kwargs):
            calls.append(name)
            return collective(*args, **kwargs)

        return call

    for name in COLLECTIVES:
        setattr(dist, name, recorded(name, getattr(dist, name)))


def has_batch(rank: int, step: int, world_size: int) -> bool:
    return not ((rank == world_size - 1 and step == 0) or (rank == 1 and step == 1))


def make_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary batch of `5 + 3 * rank + 2 * step` samples holding both classes."""
    size = 5 + 3 * rank + 2 * step
    generator = torch.Generator().manual_seed(100 * rank + step)
    target = torch.randint(0, 2, (size,), generator=generator)
    target[:2] = torch.tensor([0, 1])
    return torch.rand(size, generator=generator), target


def latest(rank: int, step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch `rank` last updated at or before `step`, or `None` when it has none yet."""
    for past in range(step, -1, -1):
        if has_batch(rank, past, world_size):
            return make_batch(rank, past)
    return None


def sklearn_scores(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """AUROC and accuracy (at 0.5) of the concatenated batches; `nan` when there are none."""
    if not batches:
        return {"auroc": math.nan, "acc": math.nan}
    input = torch.cat([pred for pred, _ in batches]).numpy()
    target = torch.cat([label for _, label in batches]).numpy()
    return {"auroc": skm.roc_auc_score(target, input), "acc": skm.accuracy_score(target, input >= 0.5)}


def check_step(metrics: ScoreMetrics, tasks: MultiTaskMetrics, calls: list[str], step: int) -> dict:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    before = len(calls)
    if has_batch(rank, step, world_size):
        input, target = make_batch(rank, step)
        metrics.update(input.requires_grad_(), target)  # a prediction with a graph, as in training
        tasks.update({"cls": (input, target)})
    after_update = len(calls)
    local, tasks_local = metrics.local_value().dict(), tasks.local_value().dict()
    local_calls = len(calls) - after_update
    everyone = [batch for r in range(world_size) if (batch := latest(r, step, world_size)) is not None]
    own = latest(rank, step, world_size)
    history = [make_batch(r, s) for r in range(world_size) for s in range(step + 1) if has_batch(r, s, world_size)]
    return {
        "update_collectives": after_update - before,
        "local_collectives": local_calls,
        "value": metrics.value().dict(),
        "val": metrics.val.dict(),
        "bat": metrics.bat.dict(),
        "batch": metrics.batch().dict(),
        "batch_score": metrics.batch_score,
        "tasks": tasks.value().dict()["cls"],
        "local": local,
        "tasks_local": tasks_local["cls"],
        "average": metrics.average().dict(),
        "input_in_rank_order": torch.equal(metrics.input, torch.cat([pred for pred, _ in everyone])),
        "expected": sklearn_scores(everyone),
        "expected_local": sklearn_scores([] if own is None else [own]),
        "expected_average": sklearn_scores(history),
    }


def run(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a deadlock fails instead of hanging
    rank = dist.get_rank()
    metrics = ScoreMetrics(auroc=auroc, acc=accuracy, score_name="auroc")
    tasks = MultiTaskMetrics()
    tasks["cls"] = Metrics(auroc=auroc, acc=accuracy)
    calls: list[str] = []
    record_collectives(calls)
    steps = [check_step(metrics, tasks, calls, step) for step in range(STEPS)]
    report = {"rank": rank, "world_size": dist.get_world_size(), "steps": steps}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
