"""Data and progress properties of a runner: splits, batch size, steps and epochs."""

from __future__ import annotations

from collections.abc import Sized
from math import ceil
from typing import Any

from chanfig import FlatDict

from .data import loader_length, split_options


class ProgressMixin:
    r"""
    Splits, batch size and progress counters, read from the runner's config and dataloaders.

    Counters (`steps`, `epochs`, `step_begin`...) live in the config, so they are saved in checkpoints.
    """

    config: Any
    datasets: FlatDict
    dataloaders: FlatDict
    split: str | None
    _train_splits: list[str] | None = None
    _evaluate_splits: list[str] | None = None

    world_size: int  # from ProcessMixin

    # Splits

    @property
    def train_splits(self) -> list[str]:
        r"""
        Splits trained on: `config.train_splits`, else datasets marked `train=True` or `split == "train"`.

        Raises:
            ValueError: If they cannot be inferred.
        """
        if self._train_splits is not None:
            return self._train_splits
        if self.config.get("train_splits") is not None:
            return list(self.config["train_splits"])
        if self.datasets:
            marked = [key for key, data in self.datasets.items() if getattr(data, "train", False) is True]
            if marked:
                return marked
            named = [key for key, data in self.datasets.items() if getattr(data, "split", None) == "train"]
            if named:
                return named
            return [key for key in self.datasets if key == "train"]
        raise ValueError("train_splits could not be inferred: set config.train_splits or add datasets")

    @train_splits.setter
    def train_splits(self, splits: list[str]) -> None:
        self._train_splits = list(splits)

    @property
    def evaluate_splits(self) -> list[str]:
        r"""
        Splits evaluated: `config.evaluate_splits`, else every dataset that is not a train split.

        Raises:
            ValueError: If they cannot be inferred.
        """
        if self._evaluate_splits is not None:
            return self._evaluate_splits
        if self.config.get("evaluate_splits") is not None:
            return list(self.config["evaluate_splits"])
        if self.datasets:
            train_splits = self.train_splits
            return [key for key in self.datasets if key not in train_splits]
        raise ValueError("evaluate_splits could not be inferred: set config.evaluate_splits or add datasets")

    @evaluate_splits.setter
    def evaluate_splits(self, splits: list[str]) -> None:
        self._evaluate_splits = list(splits)

    # Batch size

    @property
    def batch_size(self) -> int:
        r"""
        Batch size of the current split's loader, else of the first train/evaluate loader, else of any loader,
        else `config.dataloader.batch_size`.

        Raises:
            AttributeError: If none of them gives one.
        """
        candidates: list[str] = []
        if self.split is not None:
            candidates.append(self.split)
        if self.dataloaders:
            for splits in ("train_splits", "evaluate_splits"):
                try:
                    candidates.extend(getattr(self, splits))
                except ValueError:
                    continue
            candidates.extend(self.dataloaders.keys())
        for split in candidates:
            loader = self.dataloaders.get(split)
            if loader is not None and getattr(loader, "batch_size", None) is not None:
                return loader.batch_size
        batch_size = self.config.get("dataloader.batch_size")
        if batch_size is not None:
            return batch_size
        raise AttributeError(
            "batch_size could not be inferred: no dataloader has a batch_size "
            f"(dataloaders: {list(self.dataloaders.keys())}) and config.dataloader.batch_size is not set"
        )

    @property
    def batch_size_equivalent(self) -> int:
        r"""
        Samples per optimizer step over all processes: `batch_size * world_size * accum_steps`.
        """
        return self.batch_size * self.world_size * self.accum_steps

    @property
    def accum_steps(self) -> int:
        r"""
        Micro-batches per optimizer step (`config.accum_steps`, default 1).
        """
        accum_steps = self.config.get("accum_steps")
        return 1 if accum_steps is None else int(accum_steps)

    # Progress counters (stored in config)

    @property
    def steps(self) -> int:
        r"""Optimizer steps taken so far."""
        return self.config["steps"]

    @steps.setter
    def steps(self, steps: int) -> None:
        self.config["steps"] = steps

    @property
    def epochs(self) -> int:
        r"""Index of the current (or last finished) epoch."""
        return self.config["epochs"]

    @epochs.setter
    def epochs(self, epochs: int) -> None:
        self.config["epochs"] = epochs

    @property
    def step_begin(self) -> int:
        r"""Step this run started from."""
        return self.config["step_begin"]

    @step_begin.setter
    def step_begin(self, step_begin: int) -> None:
        self.config["step_begin"] = step_begin

    @property
    def step_end(self) -> int | None:
        r"""Step to stop at (`None` for no limit)."""
        return self.config.get("step_end")

    @step_end.setter
    def step_end(self, step_end: int | None) -> None:
        self.config["step_end"] = step_end

    @property
    def epoch_begin(self) -> int:
        r"""First epoch of this run."""
        return self.config["epoch_begin"]

    @epoch_begin.setter
    def epoch_begin(self, epoch_begin: int) -> None:
        self.config["epoch_begin"] = epoch_begin

    @property
    def epoch_end(self) -> int | None:
        r"""Epoch to stop before (`None` for no limit)."""
        return self.config.get("epoch_end")

    @epoch_end.setter
    def epoch_end(self, epoch_end: int | None) -> None:
        self.config["epoch_end"] = epoch_end

    @property
    def total_epochs(self) -> int:
        r"""
        Epochs in this run: `epoch_end - epoch_begin`.

        Raises:
            ValueError: If `epoch_end` is not set.
        """
        if self.epoch_end is None:
            raise ValueError("total_epochs needs config.epoch_end, which is not set")
        return self.epoch_end - self.epoch_begin

    @property
    def total_steps(self) -> int:
        r"""
        Optimizer steps in the whole run (a resumed run included, so schedulers built from it agree with the
        straight run): `step_end` when set, else `epoch_end` times the optimizer steps of an epoch, from the train
        loaders' lengths, else from `ceil(dataset length / world size)` samples per rank batched with the split's
        own `dataloader.<split>.batch_size` (rounded down with `drop_last`, up otherwise), each divided by
        `accum_steps` and rounded up. Right in `__init__` too, before the dataloaders exist.

        Raises:
            ValueError: If it cannot be inferred.
        """
        if self.step_end is not None:
            return self.step_end
        try:
            train_splits = self.train_splits
        except ValueError:
            train_splits = []
        if train_splits and self.epoch_end is not None:
            batches = self._batches_per_epoch(train_splits)
            if batches is not None:
                return self.epoch_end * sum(ceil(n / self.accum_steps) for n in batches)
        raise ValueError(
            f"total_steps could not be inferred from epoch_end={self.epoch_end!r} and train splits {train_splits}: "
            "set config.step_end, or config.epoch_end with train datasets that have a length "
            "(an IterableDataset has none)"
        )

    def _batches_per_epoch(self, splits: list[str]) -> list[int] | None:
        if all(split in self.dataloaders for split in splits):
            lengths = [loader_length(self.dataloaders[split]) for split in splits]
            return None if None in lengths else lengths
        if all(isinstance(self.datasets.get(split), Sized) for split in splits):
            dataloader_config = self.config.get("dataloader") or {}
            names = list(self.datasets.keys())
            batches = []
            for split in splits:
                options = split_options(dataloader_config, split, names)
                per_rank = ceil(len(self.datasets[split]) / self.world_size)  # DistributedSampler pads
                batch_size = options.get("batch_size", 1)  # DataLoader's default
                batches.append(per_rank // batch_size if options.get("drop_last") else ceil(per_rank / batch_size))
            return batches
        return None

    @property
    def progress(self) -> float:
        r"""
        Fraction of the run done: `steps / total_steps` (also right after a resume).
        """
        return self.steps / self.total_steps
