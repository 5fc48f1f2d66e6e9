"""Seeding of `DataLoader` workers: random augmentation in a worker follows its batch, not the worker's history.

Torch seeds each worker once, from a base seed the loader draws when its iteration starts, so a worker's draws for
a batch depend on every batch it loaded before. A resumed epoch skips the batches a checkpoint had consumed
without loading them, and hands the rest to other workers: with the default `worker_init_fn`
([`seed_worker_batches`][danling.runner.loop.workers.seed_worker_batches]) each worker reseeds Python, numpy and
torch before each batch from the base seed and the batch's indices, so a batch is augmented the same however it
was reached.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info


def seed_worker(worker_id: int) -> None:
    r"""
    Seed numpy in a DataLoader worker from the seed torch gave the worker (torch already seeds itself and
    `random`), so augmentation with numpy is reproducible and differs across workers.

    Args:
        worker_id: Index of the worker (unused: torch's worker seed already includes it).
    """
    np.random.seed(torch.initial_seed() % 2**32)


def seed_worker_batches(worker_id: int) -> None:
    r"""
    [`seed_worker`][danling.runner.loop.workers.seed_worker], then reseed before each batch of a map-style
    dataset (see [`BatchSeeding`][danling.runner.loop.workers.BatchSeeding]); the default `worker_init_fn` of the
    loaders DanLing builds, unless `persistent_workers` keeps the workers across epochs.

    Args:
        worker_id: Index of the worker.
    """
    seed_worker(worker_id)
    info = get_worker_info()
    if info is not None:
        BatchSeeding.install(info.dataset, info.seed - info.id)


def batch_seed(base_seed: int, indices: Sequence) -> int:
    r"""
    A 63-bit seed from a loader iteration's base seed and a batch's indices.

    Examples:
        >>> batch_seed(7, [3, 1, 2]) == batch_seed(7, [3, 1, 2]) != batch_seed(8, [3, 1, 2])
        True
    """
    try:
        data = array("q", indices).tobytes()
    except (TypeError, OverflowError):  # indices that are not integers (a sampler of one's own)
        data = repr(list(indices)).encode()
    digest = hashlib.blake2b(int(base_seed).to_bytes(8, "little", signed=True) + data, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchSeeding:
    r"""
    The `__getitems__` of a worker's copy of a map-style dataset: seed Python, numpy and torch's CPU generator
    from the batch ([`batch_seed`][danling.runner.loop.workers.batch_seed]), then fetch it as the dataset would.
    It costs tens of microseconds per batch, in the worker (about 30 us for 32 indices on a 2-core VM).

    Args:
        dataset: The worker's copy of the dataset.
        base_seed: The base seed of the loader's iteration (the same on every worker).
    """

    def __init__(self, dataset: Any, base_seed: int) -> None:
        self.dataset, self.base_seed = dataset, base_seed
        self.fetch = getattr(dataset, "__getitems__", None) or None  # the dataset's own batched fetch, if any

    @classmethod
    def install(cls, dataset: Any, base_seed: int) -> bool:
        r"""Make `dataset` (in a worker) reseed before each batch; `False` when it takes no attributes."""
        try:
            dataset.__getitems__ = cls(dataset, base_seed)
        except (AttributeError, TypeError):
            return False
        return True

    def __call__(self, indices: Sequence) -> list:
        seed = batch_seed(self.base_seed, indices)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU generator: `torch.manual_seed` costs 100x more
        if self.fetch is not None:
            return self.fetch(indices)
        return [self.dataset[index] for index in indices]
