"""`EpochSampler`: one rank's part of an epoch's global sample order, the same order on any world size.

The order of an epoch depends on `seed` and the epoch only: `torch.randperm(length)` drawn from a generator seeded
with `seed + epoch` when shuffling (the permutation `RandomSampler` and `DistributedSampler` draw), else the dataset
order. Rank `r` of `world_size` takes every `world_size`-th sample of it from position `r` (as `DistributedSampler`
does), so each micro-step of every rank together consumes the next `batch_size x world_size` samples of the order,
and each optimizer step the next `batch_size x world_size x accum_steps`. A resumed run skips the samples a
checkpoint had consumed in the sampler ([`skip`][danling.runner.loop.sampling.EpochSampler.skip]): their
`__getitem__` is never called again, on any world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DistributedSampler, RandomSampler, Sampler, SequentialSampler


class EpochSampler(Sampler[int]):
    r"""
    One rank's samples of an epoch whose global order is independent of the world size.

    Each epoch ([`set_epoch`][danling.runner.loop.sampling.EpochSampler.set_epoch]) has an order of all `length`
    samples: a permutation drawn from `seed + epoch` when `shuffle`, else `0 .. length - 1`. With `seed=None` (one
    process only) the permutation's seed is drawn from torch's global generator when the iteration starts, as
    `RandomSampler` draws it. The samples left after [`skip`][danling.runner.loop.sampling.EpochSampler.skip] are
    padded to a multiple of `world_size` with the first samples of the order (as `DistributedSampler` pads), and
    rank `r` takes positions `r, r + world_size, ...` of them.

    `len()` is always the whole epoch's share of a rank (what the run's plan and `total_steps` count); an
    iteration after a skip yields only what is left.

    Args:
        length: Samples in the dataset.
        rank: This process's rank.
        world_size: Number of processes.
        shuffle: Whether the order is a random permutation.
        seed: Base seed of the permutation; `None` draws one each epoch (allowed on one process only).

    Raises:
        ValueError: If `world_size < 1`, `rank` is not in `[0, world_size)`, `length < 0`, or `seed` is `None`
            on several processes (every rank must draw the same order).

    Examples:
        >>> sampler = EpochSampler(10, rank=1, world_size=2, shuffle=False)
        >>> list(sampler), len(sampler)
        ([1, 3, 5, 7, 9], 5)
        >>> sampler.skip(4)  # the first 4 samples of the order were consumed: the next iteration starts after them
        >>> list(sampler)
        [5, 7, 9]
    """

    def __init__(
        self, length: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int | None = None
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if seed is None and shuffle and world_size > 1:
            raise ValueError("an EpochSampler on several processes needs a seed: every rank must draw the same order")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = self.skipped = 0  # `skipped`: samples of the order the next iteration starts after (once)
        self.order_seed: int | None = None  # the seed of this epoch's permutation, once known
        self.pinned = False  # the order seed came from a checkpoint
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        r"""Start `epoch`: its own order, from its first sample."""
        self.epoch = epoch
        self.skipped, self.pinned = 0, False
        self.order_seed = self.seed + epoch if self.shuffle and self.seed is not None else None

    def state(self) -> dict[str, Any]:
        r"""
        What identifies the current epoch's order: the epoch, whether it is shuffled and the seed of its
        permutation (`None` until an unseeded one is drawn).

        Examples:
            >>> sampler = EpochSampler(4, seed=7)
            >>> sampler.set_epoch(2)
            >>> sampler.state()
            {'epoch': 2, 'shuffle': True, 'seed': 9}
        """
        return {"epoch": self.epoch, "shuffle": self.shuffle, "seed": self.order_seed}

    def skip(self, samples: int, state: Mapping[str, Any] | None = None) -> None:
        r"""
        Make the next iteration start after the first `samples` samples of the epoch's order.

        Args:
            samples: Samples of the order consumed already (by every rank together).
            state: A [`state`][danling.runner.loop.sampling.EpochSampler.state] saved with them: the order they
                were taken from is kept for the rest of the epoch (an unseeded permutation, or another seed).

        Raises:
            ValueError: If `samples` is not in `[0, length]`.
        """
        if not 0 <= samples <= self.length:
            raise ValueError(f"cannot skip {samples} samples of an epoch of {self.length}")
        self.skipped = samples
        if state is not None:
            self.shuffle = bool(state.get("shuffle", self.shuffle))
            self.order_seed, self.pinned = state.get("seed"), True

    def remaining(self) -> int:
        r"""
        Samples the next iteration yields on this rank (padding included).

        Examples:
            >>> sampler = EpochSampler(11, rank=0, world_size=2, shuffle=False)
            >>> sampler.remaining(), sampler.skip(6), sampler.remaining()
            (6, None, 3)
        """
        return math.ceil((self.length - self.skipped) / self.world_size)

    def order(self) -> torch.Tensor:
        r"""The epoch's global order, drawing the seed of an unseeded permutation first if it has none."""
        if not self.shuffle:
            return torch.arange(self.length)
        if self.order_seed is None:  # as `RandomSampler` draws one, from torch's global generator
            self.order_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(self.order_seed)
        return torch.randperm(self.length, generator=generator)

    def __iter__(self) -> Iterator[int]:
        # A generator: like `RandomSampler`, nothing is drawn before the first sample is asked for.
        skipped, self.skipped = self.skipped, 0  # one iteration only: a later one starts the epoch over
        if self.seed is None and not self.pinned:
            self.order_seed = None  # unseeded: a new permutation each iteration, as `RandomSampler` draws
        order = self.order()
        left = order[skipped:]
        padding = (-len(left)) % self.world_size
        if padding and len(order):
            left = torch.cat([left, order.repeat(math.ceil(padding / len(order)))[:padding]])
        yield from left[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)


# The torch sampler each one replaces, as a base too: code that checks for a `RandomSampler` (a shuffled loader),
# a `SequentialSampler` or a `DistributedSampler` (a loader sharded for training) still finds one.


class ShuffledEpochSampler(EpochSampler, RandomSampler):
    r"""An [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] that shuffles, on one process."""

    def __init__(self, dataset: Any, seed: int | None = None) -> None:
        RandomSampler.__init__(self, dataset)
        EpochSampler.__init__(self, len(dataset), shuffle=True, seed=seed)


class OrderedEpochSampler(EpochSampler, SequentialSampler):
    r"""An [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] in dataset order, on one process."""

    def __init__(self, dataset: Any) -> None:
        SequentialSampler.__init__(self, dataset)
        EpochSampler.__init__(self, len(dataset), shuffle=False)


class ShardedEpochSampler(EpochSampler, DistributedSampler):
    r"""An [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] on several processes."""

    def __init__(self, dataset: Any, rank: int, world_size: int, shuffle: bool, seed: int) -> None:
        DistributedSampler.__init__(self, dataset, world_size, rank, shuffle=shuffle, seed=seed)
        EpochSampler.__init__(self, len(dataset), rank, world_size, shuffle, seed)


def epoch_sampler(dataset: Any, rank: int, world_size: int, shuffle: bool, seed: int | None) -> EpochSampler:
    r"""
    The [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] of a train split: a `RandomSampler`, a
    `SequentialSampler` or (on several processes) a `DistributedSampler` too. Several processes shuffle with seed
    0 when `seed` is `None`, as `DistributedSampler` does.

    Examples:
        >>> from torch.utils.data import RandomSampler
        >>> isinstance(epoch_sampler(range(8), 0, 1, True, 3), RandomSampler)
        True
    """
    if world_size > 1:
        return ShardedEpochSampler(dataset, rank, world_size, shuffle, 0 if seed is None else seed)
    if shuffle:
        return ShuffledEpochSampler(dataset, seed)
    return OrderedEpochSampler(dataset)


def batches_of(samples: int, batch_size: int, drop_last: bool) -> int:
    r"""
    Batches a loader makes of `samples` samples.

    Examples:
        >>> batches_of(10, 4, False), batches_of(10, 4, True)
        (3, 2)
    """
    return samples // batch_size if drop_last else math.ceil(samples / batch_size)
