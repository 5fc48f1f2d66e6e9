"""The loaders of a [`TorchRunner`][danling.runner.TorchRunner]'s splits, and the start of an epoch over one.

The runner holds a [`SplitLoaders`][danling.runner.loop.loaders.SplitLoaders]; `build_dataloaders`, `_start_epoch` and
`_iterate` delegate to it once per epoch (never per batch). It calls back through the runner's methods
(`build_dataloaders`), so a subclass's override is the one that runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..callbacks import ProgressBarCallback
from ..utils import RunnerMode
from .data import (
    build_dataloader,
    build_evaluation_loader,
    build_sampler,
    check_not_empty,
    is_sharded_for_training,
    loader_length,
    set_sampler_epoch,
    split_options,
)


class SplitLoaders:
    r"""
    The loaders of a runner's splits: dataloaders built from `datasets` and `config.dataloader` for the splits
    without one, and for evaluation and inference of a split whose dataloader is sharded for training (a
    `DistributedSampler` pads and shuffles), an ordered, unpadded copy of it, built once and kept here.

    Args:
        runner: The runner whose splits are loaded.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from danling.runner import TorchRunner
        >>> class Runner(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.datasets.train = TensorDataset(torch.randn(40, 2), torch.randn(40, 1))
        >>> runner = Runner({"log": False, "dir": tempfile.mkdtemp(), "dataloader": {"batch_size": 4}})
        >>> runner._loaders.loader("train", RunnerMode.train) is runner.dataloaders.train
        True
        >>> ordered = runner._loaders.loader("train", RunnerMode.evaluate)  # the shuffled loader, in order
        >>> ordered is runner.dataloaders.train, len(ordered), runner.config.log_interval
        (False, 10, 1)
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        # Ordered, unpadded loaders of splits whose dataloader is sharded for training, built on first use.
        self.evaluation_loaders: dict[str, Any] = {}

    def build(self) -> None:
        r"""The body of [`build_dataloaders`][danling.runner.TorchRunner.build_dataloaders]."""
        runner = self.runner
        dataloader_config = runner.config.get("dataloader") or {}
        splits = list(runner.datasets.keys())
        try:
            train_splits = runner.train_splits
        except ValueError:
            train_splits = []
        seed = runner.config.get("seed")
        for split, dataset in runner.datasets.items():
            if split in runner.dataloaders:
                continue
            check_not_empty(split, dataset)
            train = split in train_splits
            options = split_options(dataloader_config, split, splits)
            shuffle = options.get("shuffle", train)
            sampler = runner.datasamplers.get(split)
            if sampler is None:
                sampler = build_sampler(dataset, train, shuffle, runner.rank, runner.world_size, seed)
                runner.datasamplers[split] = sampler
            pin = runner.device.type == "cuda"
            runner.dataloaders[split] = build_dataloader(dataset, sampler, options, train, pin)

    def default_log_interval(self) -> int:
        r"""
        At most ten log lines per epoch of the longest loader, as the reference DanLing sets it: a tenth of its
        length, rounded up (every batch at least; 1 without lengths).
        """
        lengths = [n for n in map(loader_length, self.runner.dataloaders.values()) if n is not None]
        return max(math.ceil(max(lengths, default=10) / 10), 1)

    def loader(self, split: str, mode: RunnerMode) -> Any:
        r"""
        The loader a loop in `mode` reads for `split`: its dataloader (built on first use for a dataset assigned
        after construction), or for evaluation and inference of a training-sharded split, an ordered, unpadded
        loader that keeps the last batch, so that each sample counts exactly once.

        Raises:
            KeyError: If the split has neither a dataloader nor a dataset, naming the available ones.
            ValueError: If the split's dataset is empty.
        """
        runner = self.runner
        if split not in runner.dataloaders and split in runner.datasets:
            runner.build_dataloaders()
        if split not in runner.dataloaders:
            available = sorted(set(runner.dataloaders) | set(runner.datasets))
            raise KeyError(f"no dataloader or dataset for split {split!r}; available splits are {available}")
        loader = runner.dataloaders[split]
        check_not_empty(split, getattr(loader, "dataset", None))
        if mode == RunnerMode.train or not is_sharded_for_training(loader):
            return loader
        if split not in self.evaluation_loaders:
            self.evaluation_loaders[split] = build_evaluation_loader(loader, runner.rank, runner.world_size)
        return self.evaluation_loaders[split]

    def start_epoch(self, split: str, mode: RunnerMode, loader: Any = None) -> Any:
        r"""
        Start an epoch of `split` in `mode`: the runner's mode and split, the model's train/eval mode, fresh meters
        and metrics, the telemetry's epoch, and in training the sampler's epoch (for its shuffle).

        Args:
            split: The split.
            mode: The loop's mode.
            loader: The loader to read (default: [`loader`][danling.runner.loop.loaders.SplitLoaders.loader]).

        Returns:
            The loader to read.
        """
        runner = self.runner
        own = loader is None
        if own:
            loader = self.loader(split, mode)
        runner.mode = mode
        runner.split = split
        if runner.model is not None:
            runner.model.train(mode == RunnerMode.train)
        runner.meters.reset()
        runner._loss_meter = runner.meters.loss
        metrics = runner.current_metrics
        if metrics is not None:
            metrics.reset()
        runner.telemetry.start_epoch(mode, runner.steps)
        if own and mode == RunnerMode.train:
            set_sampler_epoch(runner.datasamplers.get(split), runner.epochs, runner.config.get("seed"))
        return loader

    def iterate(self, loader: Iterable, split: str, length: int | None) -> Iterable:
        r"""
        The batches of `loader`, timed by the runner's telemetry, through the progress bar of its
        [`ProgressBarCallback`][danling.runner.callbacks.ProgressBarCallback] when one is shown.
        """
        runner = self.runner
        batches = runner.telemetry.iterate(loader)
        bar = runner._callbacks.find(ProgressBarCallback)
        return batches if bar is None else bar.wrap(runner, batches, split, length)

    def show_progress_bar(self) -> bool:
        r"""`config.progress_bar` on the main process; `None` means only on an interactive terminal."""
        return ProgressBarCallback.shown(self.runner)
