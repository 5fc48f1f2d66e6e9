"""Dataloaders and samplers built from `datasets` and `config.dataloader`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from .sampling import EpochSampler, epoch_sampler
from .workers import seed_worker, seed_worker_batches

# Keys of `config.dataloader` that are DanLing's, not DataLoader arguments.
SPLIT_INDEPENDENT_KEYS = ("shuffle",)


class ShardSampler(Sampler[int]):
    r"""
    Contiguous, unpadded shard of a dataset for one rank, for evaluation and inference.

    Unlike `DistributedSampler`, no sample is repeated to even out the shards, so metrics see every sample
    exactly once, and concatenating the shards in rank order gives the dataset order back.

    Args:
        length: Number of samples in the dataset.
        rank: This process's rank.
        world_size: Number of processes.

    Examples:
        >>> [list(ShardSampler(5, rank, 2)) for rank in range(2)]
        [[0, 1, 2], [3, 4]]
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        per_rank, remainder = divmod(length, world_size)
        self.start = rank * per_rank + min(rank, remainder)
        self.stop = self.start + per_rank + (1 if rank < remainder else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def split_options(dataloader_config: Mapping, split: str, splits: list[str]) -> dict[str, Any]:
    r"""
    DataLoader options of `split`: the shared `config.dataloader` keys overlaid with `config.dataloader.<split>`.

    Args:
        dataloader_config: The `config.dataloader` section (may be empty).
        split: Split name.
        splits: All split names (their sections are not shared options).

    Returns:
        The merged options.

    Examples:
        >>> split_options({"batch_size": 8, "val": {"batch_size": 64}}, "val", ["train", "val"])
        {'batch_size': 64}
    """
    shared = {key: value for key, value in dataloader_config.items() if key not in splits}
    specific = dataloader_config.get(split) or {}
    return {**shared, **dict(specific)}


def build_sampler(
    dataset: Any, train: bool, shuffle: bool, rank: int, world_size: int, seed: int | None
) -> Sampler | None:
    r"""
    Sampler of a split: for training, an [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] (the
    epoch's global order, the same on any world size, each rank its share; a `RandomSampler`,
    `SequentialSampler` or `DistributedSampler` too); to evaluate on several processes, an unpadded
    [`ShardSampler`][danling.runner.loop.data.ShardSampler]; sequential otherwise.

    Args:
        dataset: The dataset (a `torch.utils.data.IterableDataset` gets no sampler).
        train: Whether the split is trained on.
        shuffle: Whether to shuffle.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Seed of the shuffling order (the same on every rank); `None` for unseeded.

    Returns:
        The sampler, or `None` for iterable datasets.
    """
    if isinstance(dataset, torch.utils.data.IterableDataset) or not isinstance(dataset, Sized):
        return None
    if train:
        return epoch_sampler(dataset, rank, world_size, shuffle, seed)
    if world_size > 1:
        return ShardSampler(len(dataset), rank, world_size)
    if shuffle:
        generator = None
        if seed is not None:
            generator = torch.Generator()
            generator.manual_seed(seed)
        return RandomSampler(dataset, generator=generator)
    return SequentialSampler(dataset)


def set_sampler_epoch(sampler: Sampler | None, epoch: int, seed: int | None) -> None:
    r"""
    Make the shuffling order of `epoch` depend only on `seed` and `epoch`, so a resumed run shuffles as a
    straight one would.

    Args:
        sampler: Sampler of the split.
        epoch: Epoch about to start.
        seed: Base seed (`None`: leave unseeded samplers alone).
    """
    if isinstance(sampler, (EpochSampler, DistributedSampler)):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None and seed is not None:
        sampler.generator.manual_seed(seed + epoch)


def build_dataloader(dataset: Any, sampler: Sampler | None, options: Mapping, train: bool, pin: bool) -> DataLoader:
    r"""
    A `DataLoader` over `dataset` with `options`; `drop_last` only ever applies to train splits.

    Args:
        dataset: The dataset.
        sampler: Its sampler (see [`build_sampler`][danling.runner.loop.data.build_sampler]).
        options: DataLoader keyword arguments from the config.
        train: Whether the split is trained on.
        pin: Pin host memory (when the model is on CUDA) for non-blocking copies.

    Returns:
        The dataloader.
    """
    options = {key: value for key, value in options.items() if key not in SPLIT_INDEPENDENT_KEYS}
    if not train:
        options["drop_last"] = False
    options.setdefault("pin_memory", pin)
    if options.get("num_workers", 0) > 0:  # per batch, unless the workers live on across epochs
        options.setdefault("worker_init_fn", seed_worker if options.get("persistent_workers") else seed_worker_batches)
    return DataLoader(dataset, sampler=sampler, **options)


def build_evaluation_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    r"""
    A loader that visits every sample of `loader`'s dataset exactly once, in order, sharded without padding:
    what evaluating a train split needs (its own loader shuffles, pads shards and may drop the last batch).

    Args:
        loader: The train loader.
        rank: This process's rank.
        world_size: Number of processes.

    Returns:
        A loader with the same dataset, batch size, workers and collate function.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> train = DataLoader(TensorDataset(torch.arange(5)), batch_size=2, shuffle=True, drop_last=True)
        >>> [batch[0].tolist() for batch in build_evaluation_loader(train, rank=0, world_size=1)]
        [[0, 1], [2, 3], [4]]
    """
    dataset = loader.dataset
    sampler = build_sampler(dataset, False, False, rank, world_size, None)
    return DataLoader(
        dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        drop_last=False,
    )


def is_sharded_for_training(loader: Any) -> bool:
    r"""
    Whether `loader` shuffles, pads or drops samples (`RandomSampler`, `DistributedSampler` or `drop_last`):
    then evaluating or predicting needs [`build_evaluation_loader`][danling.runner.loop.data.build_evaluation_loader].
    """
    sampler = getattr(loader, "sampler", None)
    return isinstance(sampler, (DistributedSampler, RandomSampler)) or bool(getattr(loader, "drop_last", False))


def loader_length(loader: Any) -> int | None:
    r"""
    Number of batches of `loader`, or `None` when it has no length (an `IterableDataset` without `__len__`).

    Examples:
        >>> loader_length([1, 2, 3]), loader_length(iter([1, 2]))
        (3, None)
    """
    try:
        return len(loader)
    except TypeError:
        return None


def has_more(iterator: Iterator) -> bool:
    r"""
    Whether `iterator` has another item (it is consumed): how an epoch of a loader without a length learns that it
    was cut short.

    Examples:
        >>> has_more(iter([1])), has_more(iter([]))
        (True, False)
    """
    return next(iterator, _END) is not _END


_END = object()


def samples_of(target: Any, pred: Any) -> int:
    r"""
    Samples of a batch, the weight of its loss: the first dimension of the target (or the predictions), the length
    of a list of them, else 1.

    Examples:
        >>> samples_of(torch.zeros(5), None), samples_of(None, [1, 2, 3]), samples_of(torch.tensor(2.0), None)
        (5, 3, 1)
    """
    if type(target) is torch.Tensor and target.ndim:  # the common case first
        return target.shape[0]
    for value in (target, pred):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, (list, tuple)):
            return len(value)
    return 1


def describe_loader(loader: Any) -> str:
    r"""
    Samples, batch size and `drop_last` of a loader, for error messages.

    Examples:
        >>> describe_loader(DataLoader(list(range(5)), batch_size=8, drop_last=True))
        '5 samples, batch_size 8, drop_last True'
    """
    dataset = getattr(loader, "dataset", None)
    samples = f"{len(dataset)} samples" if isinstance(dataset, Sized) else "an iterable dataset"
    batch_size, drop_last = getattr(loader, "batch_size", None), getattr(loader, "drop_last", None)
    return f"{samples}, batch_size {batch_size}, drop_last {drop_last}"


def check_not_empty(split: str, dataset: Any) -> None:
    r"""
    Raise when the dataset of `split` has no samples (a dataset without a length passes).

    Raises:
        ValueError: Naming the split.

    Examples:
        >>> check_not_empty("val", [])
        Traceback (most recent call last):
        ValueError: the dataset of split 'val' is empty (0 samples)
    """
    if isinstance(dataset, Sized) and len(dataset) == 0:
        raise ValueError(f"the dataset of split {split!r} is empty (0 samples)")


def check_has_batches(split: str, loader: Any, length: int | None) -> None:
    r"""
    Raise when a train split's loader has no batches (`length` 0; a loader without a length passes).

    Raises:
        ValueError: Naming the split, its samples, `batch_size` and `drop_last`.

    Examples:
        >>> loader = DataLoader([], batch_size=2)
        >>> check_has_batches("train", loader, None)  # no length: it may still yield
        >>> check_has_batches("train", loader, 0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: split 'train' has no batches to train on (0 samples, batch_size 2, drop_last False); add data, ...
    """
    if length == 0:
        raise ValueError(
            f"split {split!r} has no batches to train on ({describe_loader(loader)}); "
            "add data, lower dataloader.batch_size or set dataloader.drop_last=False"
        )
