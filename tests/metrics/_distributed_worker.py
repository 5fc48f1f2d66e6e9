"""Worker for `test_distributed.py`; run with `python -m torch.distributed.run --nproc_per_node=2 ... OUT.json`.

Each rank updates meters and metrics with a shard of a different size; rank 0 writes the synced results and the
scikit-learn / numpy values on the concatenated data to OUT.json.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import numpy as np
import torch
from sklearn import metrics as skm
from torch import distributed as dist

from danling.metrics import AverageMeter, AverageMeters, Metrics, binary_metrics, multiclass_metrics
from danling.metrics.functional import auroc

SIZES = (37, 61)


def shard(data: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SIZES[:rank])
    return data[start : start + SIZES[rank]]


COLLECTIVES = ("all_gather", "all_gather_object", "all_reduce", "broadcast", "broadcast_object_list", "barrier")


def count_collectives(calls: list[str]) -> None:
    """Record the name of every collective called through `torch.distributed` from now on."""
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def latest_batch_check(rank: int) -> dict:
    """`input`/`target` are the latest batch of every rank in rank order; `update` itself never communicates."""
    generator = torch.Generator().manual_seed(1)
    batches = {r: [(torch.rand(n, 1, generator=generator), torch.randint(0, 2, (n,), generator=generator))
                   for n in (5 + r, 3 + 2 * r)] for r in (0, 1)}  # fmt: skip
    metrics = Metrics(auroc=auroc)
    calls: list[str] = []
    count_collectives(calls)
    for pred, target in batches[rank]:
        metrics.update(pred, target)
    update_calls = len(calls)
    input, target = metrics.input, metrics.target
    read_calls = len(calls)
    expected_input = torch.cat([batches[r][-1][0].view(-1) for r in (0, 1)])
    expected_target = torch.cat([batches[r][-1][1] for r in (0, 1)])
    all_input = torch.cat([pred.view(-1) for r in (0, 1) for pred, _ in batches[r]])
    return {
        "update_collectives": update_calls,
        "read_collectives": read_calls - update_calls,
        "input_ok": bool(torch.equal(input, expected_input)),
        "target_ok": bool(torch.equal(target, expected_target)),
        "input_shape": list(input.shape),
        "inputs_ok": bool(torch.equal(metrics.inputs, all_input)),
        "local_value_auroc": metrics.local_value()["auroc"],
        "expected_local_value_auroc": skm.roc_auc_score(batches[rank][-1][1].numpy(), batches[rank][-1][0].numpy()),
        "value_auroc": metrics.value()["auroc"],
        "batch_auroc": metrics.batch()["auroc"],
        "expected_batch_auroc": skm.roc_auc_score(expected_target.numpy(), expected_input.numpy()),
    }


def run(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a deadlock fails instead of hanging
    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(0)
    total = sum(SIZES)
    logits = torch.randn(total, 4, generator=generator)
    classes = torch.randint(0, 4, (total,), generator=generator)
    scores = torch.rand(total, generator=generator)
    labels = torch.randint(0, 2, (total,), generator=generator)
    losses = torch.rand(total, generator=generator)

    multiclass, binary, only_rank0 = multiclass_metrics(num_classes=4), binary_metrics(), Metrics(auroc=auroc)
    local_logits, local_classes = shard(logits, rank), shard(classes, rank)
    for start in range(0, len(local_logits), 16):  # several uneven batches per rank
        multiclass.update(local_logits[start : start + 16], local_classes[start : start + 16])
    binary.update(shard(scores, rank), shard(labels, rank))
    if rank == 0:
        only_rank0.update(shard(scores, 0), shard(labels, 0))

    meter, meters = AverageMeter(), AverageMeters()
    for value in shard(losses, rank):
        meter.update(value, n=2)
        meters.update(loss=value)
    meters[f"rank{rank}"].update(float(rank + 1))  # a meter that exists on one rank only

    result = {
        "multiclass": multiclass.average().dict(),
        "binary": binary.average().dict(),
        "only_rank0": only_rank0.average().dict(),
        "meter": meter.average(),
        "meters": meters.average().dict(),
        "batch_acc": binary.batch()["acc"],
        "latest": latest_batch_check(rank),  # last: it wraps the collectives of `torch.distributed`
    }
    if rank == 0:
        probs = logits.softmax(-1).numpy()
        expected = {
            "multiclass_auroc": skm.roc_auc_score(classes.numpy(), probs, multi_class="ovr"),
            "multiclass_acc": skm.accuracy_score(classes.numpy(), probs.argmax(1)),
            "binary_auprc": skm.average_precision_score(labels.numpy(), scores.numpy()),
            "only_rank0_auroc": skm.roc_auc_score(shard(labels, 0).numpy(), shard(scores, 0).numpy()),
            "loss": float(np.mean(losses.numpy())),
            "acc": skm.accuracy_score(labels.numpy(), scores.numpy() >= 0.5),
        }
        with open(out, "w") as file:
            json.dump({"result": result, "expected": expected, "world_size": dist.get_world_size()}, file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
