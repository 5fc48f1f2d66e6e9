"""The loaders of a [`TorchRunner`][danling.runner.TorchRunner]'s splits.

The runner builds a [`SplitLoaders`][danling.runner.loop.loaders.SplitLoaders] from its rank, world size and device,
and hands it its `datasets`, `dataloaders` and `datasamplers` mappings at each call, once per epoch (never per
batch): the component keeps only the ordered evaluation copies it builds, and never the runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from ..utils import RunnerMode
from .data import (
    build_dataloader,
    build_evaluation_loader,
    build_sampler,
    check_not_empty,
    is_sharded_for_training,
    loader_length,
    split_options,
)
from .inference import inference_loader


def default_log_interval(dataloaders: Iterable) -> int:
    r"""
    At most ten log lines per epoch of the longest loader, as the reference DanLing sets it: a tenth of its length,
    rounded up (every batch at least; 1 without lengths).

    Args:
        dataloaders: The loaders of the run.

    Examples:
        >>> default_log_interval([range(95), range(20)]), default_log_interval([range(3)]), default_log_interval([])
        (10, 1, 1)
    """
    lengths = [n for n in map(loader_length, dataloaders) if n is not None]
    return max(math.ceil(max(lengths, default=10) / 10), 1)


class SplitLoaders:
    r"""
    The loaders of a runner's splits: dataloaders built from the datasets and `config.dataloader` for the splits
    without one, and for evaluation and inference of a split whose dataloader is sharded for training (a
    `DistributedSampler` pads and shuffles), an ordered, unpadded copy of it, built once and kept here.

    Args:
        rank: This process's rank.
        world_size: Number of processes.
        pin_memory: Whether the loaders it builds pin memory (the model is on CUDA).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> loaders = SplitLoaders(rank=0, world_size=1)
        >>> datasets, dataloaders, samplers = {"train": TensorDataset(torch.randn(40, 2))}, {}, {}
        >>> loaders.build(datasets, dataloaders, samplers, lambda: ["train"], {"batch_size": 4}, seed=None)
        >>> loaders.loader("train", RunnerMode.train, dataloaders) is dataloaders["train"]
        True
        >>> ordered = loaders.loader("train", RunnerMode.evaluate, dataloaders)  # the shuffled loader, in order
        >>> ordered is dataloaders["train"], len(ordered)
        (False, 10)
    """

    def __init__(self, rank: int, world_size: int, pin_memory: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        # Ordered, unpadded loaders of splits whose dataloader is sharded for training, built on first use.
        self.evaluation_loaders: dict[str, Any] = {}

    def build(
        self,
        datasets: Mapping,
        dataloaders: MutableMapping,
        datasamplers: MutableMapping,
        train_splits: Callable[[], Iterable[str]],
        dataloader_config: Mapping | None,
        seed: int | None,
    ) -> None:
        r"""
        Build a dataloader (and its sampler, unless one is set) for every dataset without one.

        Args:
            datasets: Split name to dataset.
            dataloaders: Split name to dataloader; the new loaders are added to it.
            datasamplers: Split name to sampler; the new samplers are added to it.
            train_splits: Reads the splits trained on (they shuffle by default and pad across ranks): the runner's
                `train_splits`; a `ValueError` from it means that none can be inferred.
            dataloader_config: The `config.dataloader` section (`None` for none).
            seed: The run's seed, for the shuffle.
        """
        dataloader_config = dataloader_config or {}
        try:
            trained = set(train_splits())
        except ValueError:
            trained = set()
        splits = list(datasets.keys())
        for split, dataset in datasets.items():
            if split in dataloaders:
                continue
            check_not_empty(split, dataset)
            train = split in trained
            options = split_options(dataloader_config, split, splits)
            sampler = datasamplers.get(split)
            if sampler is None:
                shuffle = options.get("shuffle", train)
                sampler = build_sampler(dataset, train, shuffle, self.rank, self.world_size, seed)
                datasamplers[split] = sampler
            dataloaders[split] = build_dataloader(dataset, sampler, options, train, self.pin_memory)

    def loader(
        self,
        split: str,
        mode: RunnerMode,
        dataloaders: Mapping,
        datasets: Mapping | None = None,
        build: Callable[[], None] | None = None,
    ) -> Any:
        r"""
        The loader a loop in `mode` reads for `split`: its dataloader (built by `build` on first use for a dataset
        assigned after construction), or for evaluation and inference of a training-sharded split, an ordered,
        unpadded loader that keeps the last batch, so that each sample counts exactly once.

        Args:
            split: The split.
            mode: The loop's mode.
            dataloaders: Split name to dataloader.
            datasets: Split name to dataset.
            build: Builds the missing dataloaders (the runner's `build_dataloaders`).

        Raises:
            KeyError: If the split has neither a dataloader nor a dataset, naming the available ones.
            ValueError: If the split's dataset is empty.
        """
        datasets = {} if datasets is None else datasets
        if split not in dataloaders and split in datasets and build is not None:
            build()
        if split not in dataloaders:
            available = sorted(set(dataloaders) | set(datasets))
            raise KeyError(f"no dataloader or dataset for split {split!r}; available splits are {available}")
        loader = dataloaders[split]
        check_not_empty(split, getattr(loader, "dataset", None))
        if mode == RunnerMode.train or not is_sharded_for_training(loader):
            return loader
        if split not in self.evaluation_loaders:
            self.evaluation_loaders[split] = build_evaluation_loader(loader, self.rank, self.world_size)
        return self.evaluation_loaders[split]

    def inference_loader(self, data: Any, dataloader_config: Mapping | None) -> Any:
        r"""
        A loader for [`infer`][danling.runner.TorchRunner.infer] over `data` (a dataset or a tensor, or a loader,
        returned as it is), with `config.dataloader` overlaid with `config.dataloader.infer`; see
        [`inference_loader`][danling.runner.loop.inference.inference_loader].
        """
        return inference_loader(data, dataloader_config, self.rank, self.world_size, self.pin_memory)
