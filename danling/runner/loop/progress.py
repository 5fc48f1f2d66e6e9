"""Splits, batch size and progress of a run, computed from its config, datasets and dataloaders.

Pure functions: the runner's properties (`train_splits`, `batch_size`, `total_steps`...) call them with what they
need. The counters themselves (`steps`, `epochs`, `step_begin`...) live in the config, so checkpoints hold them;
[`ConfigCounter`][danling.runner.loop.progress.ConfigCounter] is the runner attribute that reads and writes one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from math import ceil
from typing import Any, Callable

from .data import loader_length, split_options


class ConfigCounter:
    r"""
    A runner attribute that is a view of one config key: reading it reads `config[key]`, assigning writes it.

    Args:
        key: The config key.
        doc: The attribute's docstring.
        optional: Read with `config.get(key)` (`None` when unset) instead of `config[key]`.
        check: Called with `(key, value)` before an assignment writes the config; raises to refuse the value.

    Examples:
        >>> class Holder:
        ...     steps = ConfigCounter("steps", "Optimizer steps taken so far.")
        ...     def __init__(self): self.config = {"steps": 0}
        >>> holder = Holder()
        >>> holder.steps = 3
        >>> holder.config["steps"], holder.steps
        (3, 3)
    """

    def __init__(
        self, key: str, doc: str, optional: bool = False, check: Callable[[str, Any], None] | None = None
    ) -> None:
        self.key = key
        self.optional = optional
        self.check = check
        self.__doc__ = doc

    def __get__(self, runner: Any, owner: type | None = None) -> Any:
        if runner is None:
            return self
        return runner.config.get(self.key) if self.optional else runner.config[self.key]

    def __set__(self, runner: Any, value: Any) -> None:
        if self.check is not None:
            self.check(self.key, value)
        runner.config[self.key] = value


def infer_train_splits(config: Mapping, datasets: Mapping) -> list[str]:
    r"""
    Splits trained on: `config.train_splits`, else datasets marked `train=True`, else those whose `split` is
    `"train"`, else the dataset named `train`.

    Raises:
        ValueError: If they cannot be inferred.

    Examples:
        >>> infer_train_splits({}, {"train": [0], "val": [1]}), infer_train_splits({"train_splits": ["a"]}, {})
        (['train'], ['a'])
    """
    if config.get("train_splits") is not None:
        return list(config["train_splits"])
    if datasets:
        marked = [key for key, data in datasets.items() if getattr(data, "train", False) is True]
        if marked:
            return marked
        named = [key for key, data in datasets.items() if getattr(data, "split", None) == "train"]
        if named:
            return named
        return [key for key in datasets if key == "train"]
    raise ValueError("train_splits could not be inferred: set config.train_splits or add datasets")


def infer_evaluate_splits(config: Mapping, datasets: Mapping, train_splits: Iterable[str]) -> list[str]:
    r"""
    Splits evaluated: `config.evaluate_splits`, else every dataset that is not a train split.

    Raises:
        ValueError: If they cannot be inferred.

    Examples:
        >>> infer_evaluate_splits({}, {"train": [0], "val": [1], "test": [2]}, ["train"])
        ['val', 'test']
    """
    if config.get("evaluate_splits") is not None:
        return list(config["evaluate_splits"])
    if datasets:
        train_splits = list(train_splits)
        return [key for key in datasets if key not in train_splits]
    raise ValueError("evaluate_splits could not be inferred: set config.evaluate_splits or add datasets")


def infer_batch_size(config: Mapping, dataloaders: Mapping, candidates: Iterable[str]) -> int:
    r"""
    Batch size of the first loader among `candidates` (then any loader) that has one, else
    `config.dataloader.batch_size`.

    Raises:
        AttributeError: If none of them gives one.

    Examples:
        >>> infer_batch_size({"dataloader": {"batch_size": 8}}, {}, [])
        8
    """
    for split in [*candidates, *dataloaders.keys()]:
        loader = dataloaders.get(split)
        if loader is not None and getattr(loader, "batch_size", None) is not None:
            return loader.batch_size
    batch_size = (config.get("dataloader") or {}).get("batch_size")
    if batch_size is not None:
        return batch_size
    raise AttributeError(
        "batch_size could not be inferred: no dataloader has a batch_size "
        f"(dataloaders: {list(dataloaders.keys())}) and config.dataloader.batch_size is not set"
    )


def accum_steps_of(config: Mapping) -> int:
    r"""
    Micro-batches per optimizer step: `config.accum_steps`, default 1.

    Examples:
        >>> accum_steps_of({}), accum_steps_of({"accum_steps": 4})
        (1, 4)
    """
    accum_steps = config.get("accum_steps")
    return 1 if accum_steps is None else int(accum_steps)


def batches_per_epoch(
    config: Mapping, datasets: Mapping, dataloaders: Mapping, splits: list[str], world_size: int
) -> list[int] | None:
    r"""
    Batches per rank of each split in an epoch: from the loaders' lengths, else from `ceil(dataset length / world
    size)` samples per rank (as `DistributedSampler` pads) batched with the split's `dataloader.<split>.batch_size`
    (rounded down with `drop_last`, up otherwise); `None` when a length is unknown (an `IterableDataset`).

    Examples:
        >>> batches_per_epoch({"dataloader": {"batch_size": 4}}, {"train": list(range(10))}, {}, ["train"], 1)
        [3]
    """
    if all(split in dataloaders for split in splits):
        lengths = [loader_length(dataloaders[split]) for split in splits]
        return None if None in lengths else lengths
    if not all(isinstance(datasets.get(split), Sized) for split in splits):
        return None
    dataloader_config = config.get("dataloader") or {}
    names = list(datasets.keys())
    batches = []
    for split in splits:
        options = split_options(dataloader_config, split, names)
        per_rank = ceil(len(datasets[split]) / world_size)
        batch_size = options.get("batch_size", 1)  # DataLoader's default
        batches.append(per_rank // batch_size if options.get("drop_last") else ceil(per_rank / batch_size))
    return batches


def infer_total_steps(
    config: Mapping, datasets: Mapping, dataloaders: Mapping, train_splits: list[str], world_size: int
) -> int:
    r"""
    Optimizer steps in the whole run (a resumed run included): `step_end` when set, else `epoch_end` times the
    optimizer steps of an epoch ([`batches_per_epoch`][danling.runner.loop.progress.batches_per_epoch] of the train
    splits, each divided by `accum_steps` and rounded up). Right before the dataloaders exist too.

    Raises:
        ValueError: If it cannot be inferred.

    Examples:
        >>> config = {"epoch_end": 2, "accum_steps": 2, "dataloader": {"batch_size": 4}}
        >>> infer_total_steps(config, {"train": list(range(16))}, {}, ["train"], 1)
        4
    """
    if config.get("step_end") is not None:
        return config["step_end"]
    epoch_end = config.get("epoch_end")
    if train_splits and epoch_end is not None:
        batches = batches_per_epoch(config, datasets, dataloaders, train_splits, world_size)
        if batches is not None:
            accum_steps = accum_steps_of(config)
            return epoch_end * sum(ceil(n / accum_steps) for n in batches)
    raise ValueError(
        f"total_steps could not be inferred from epoch_end={epoch_end!r} and train splits {train_splits}: "
        "set config.step_end, or config.epoch_end with train datasets that have a length "
        "(an IterableDataset has none)"
    )
