"""How far a training epoch's loader got, and how a resumed epoch continues from there.

A mid-epoch checkpoint records how many samples of the epoch's global order
([`EpochSampler`][danling.runner.loop.sampling.EpochSampler]) every rank together had consumed. A resumed run,
on the same world size or another, skips them in its sampler: no consumed sample is loaded again. A loader that
keeps its own state (`state_dict` / `load_state_dict`, such as torchdata's `StatefulDataLoader`) is saved and
restored as it is, per rank. Any other loader is replayed up to the saved batch, on the same world size only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .sampling import EpochSampler, batches_of


def is_stateful(loader: Any) -> bool:
    r"""
    Whether `loader` keeps its own state: it has both `state_dict` and `load_state_dict`.

    Examples:
        >>> is_stateful([1, 2]), is_stateful(type("Loader", (), {"state_dict": 1, "load_state_dict": 1})())
        (False, True)
    """
    return hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")


def loader_states(dataloaders: Mapping) -> dict[str, Any]:
    r"""
    `state_dict()` of each loader of `dataloaders` (split name to loader) that keeps its own state.

    Examples:
        >>> loader_states({"train": [1, 2], "val": [3]})
        {}
    """
    return {split: loader.state_dict() for split, loader in dataloaders.items() if is_stateful(loader)}


def skipping_sampler(loader: Any) -> EpochSampler | None:
    r"""
    The [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] that `loader` batches (`batch_size` samples at
    a time, as a `DataLoader` built with `sampler=` and `batch_size=` does), or `None` when it has none.
    """
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, EpochSampler) or getattr(loader, "batch_size", None) is None:
        return None
    return sampler if getattr(getattr(loader, "batch_sampler", None), "sampler", None) is sampler else None


class EpochFeed:
    r"""
    The samples of an epoch's global order a loader has fed: `skipped` when the iteration started (a resume), then
    `batch_size x world_size` for each micro-batch every rank consumed after micro-batch `start`.

    Args:
        sampler: The loader's sampler.
        per_batch: `batch_size x world_size`.
        skipped: Samples skipped at the start of the iteration.
        start: Micro-batches of the epoch before the iteration.

    Examples:
        >>> feed = EpochFeed(EpochSampler(10, shuffle=False), per_batch=4)
        >>> feed.record(2)["samples"], feed.record(3)["samples"]  # the last batch holds the last 2 samples
        (8, 10)
    """

    __slots__ = ("per_batch", "sampler", "skipped", "start")

    def __init__(self, sampler: EpochSampler, per_batch: int, skipped: int = 0, start: int = 0) -> None:
        self.sampler, self.per_batch, self.skipped, self.start = sampler, per_batch, skipped, start

    @classmethod
    def of(cls, loader: Any, world_size: int, skipped: int = 0, start: int = 0) -> EpochFeed | None:
        r"""The feed of `loader`, or `None` when it cannot skip samples."""
        sampler = skipping_sampler(loader)
        if sampler is None:
            return None
        return cls(sampler, loader.batch_size * world_size, skipped, start)

    def record(self, batches: int) -> dict[str, Any]:
        r"""What a checkpoint after `batches` micro-batches of the epoch records: samples, length and order."""
        length = self.sampler.length
        samples = min(length, self.skipped + (batches - self.start) * self.per_batch)
        return {"samples": samples, "length": length, "order": self.sampler.state()}


def begin_feed(loader: Any, world_size: int, state: Any = None) -> tuple[Iterable, EpochFeed | None]:
    r"""
    Start an epoch of `loader` from its beginning; a loader that keeps its own state first loads `state` (saved by
    an epoch-boundary checkpoint).

    Returns:
        The batches, and the feed that counts the samples.
    """
    if state is not None and is_stateful(loader):
        loader.load_state_dict(state)
    return loader, EpochFeed.of(loader, world_size)


def resume_feed(
    loader: Any, split: str, batches: int, data: Mapping | None, state: Any, world_size: int, saved_world_size: int
) -> tuple[Iterator, int, EpochFeed | None]:
    r"""
    Continue an epoch a checkpoint left after `batches` micro-batches of each rank: a loader with its own `state`
    loads it; an [`EpochSampler`][danling.runner.loop.sampling.EpochSampler] skips the `data["samples"]` consumed
    (on any world size and batch size); any other loader is replayed up to the batch (same world size only).

    Returns:
        The batches left, the index of the first one in the epoch (so that those left end at `len(loader)`), and
        the feed.

    Raises:
        ValueError: If the epoch cannot continue on this world size (see
            [`resume_refusal`][danling.runner.loop.feed.resume_refusal]), or the dataset's length changed.
    """
    problem = resume_refusal(loader, data, state, saved_world_size, world_size)
    if problem is not None:
        raise ValueError(f"cannot continue epoch of {split!r} on world_size {world_size}: {problem}")
    if state is not None and is_stateful(loader):
        loader.load_state_dict(state)
        return iter(loader), batches, None
    sampler = skipping_sampler(loader)
    if sampler is None or data is None:
        return fast_forward(iter(loader), batches, split), batches, EpochFeed.of(loader, world_size)
    if data.get("length") != sampler.length:
        raise ValueError(
            f"cannot continue epoch of {split!r}: its dataset has {sampler.length} samples, but the checkpoint's "
            f"epoch had {data.get('length')}; resume from an epoch-boundary checkpoint"
        )
    samples = int(data["samples"])
    sampler.skip(samples, data.get("order"))
    start = len(loader) - batches_of(sampler.remaining(), loader.batch_size, loader.drop_last)
    return iter(loader), start, EpochFeed(sampler, loader.batch_size * world_size, samples, start)


def resume_refusal(loader: Any, data: Mapping | None, state: Any, saved_world_size: int, world_size: int) -> str | None:
    r"""
    Why a mid-epoch checkpoint saved on `saved_world_size` ranks cannot continue its epoch on `world_size`, or
    `None` when it can (always on the same world size).

    Examples:
        >>> resume_refusal([], None, None, 2, 2) is None
        True
        >>> resume_refusal([], None, None, 2, 1)  # doctest: +ELLIPSIS
        'its loader cannot skip samples (...), so the data shards of the epoch would differ'
    """
    if saved_world_size == world_size:
        return None
    if state is not None and is_stateful(loader):
        return f"its loader keeps its own state, saved per rank on {saved_world_size} ranks"
    if skipping_sampler(loader) is None:
        return (
            "its loader cannot skip samples (a sampler or loader of its own, or an iterable dataset), "
            "so the data shards of the epoch would differ"
        )
    if data is None:
        return "the checkpoint does not record the samples the epoch had consumed (an older checkpoint)"
    return None


def resume_note(split: str, epoch: int, data: Mapping | None, saved_plan: Mapping | None, plan: Mapping) -> str | None:
    r"""
    The start banner's line on a mid-epoch resume on another world size or global batch, or `None` when both
    are the checkpoint's.

    Examples:
        >>> data = {"samples": 24, "length": 48}
        >>> resume_note("train", 0, data, {"world_size": 2, "global_batch": 8}, {"world_size": 1, "global_batch": 8})
        ... # doctest: +ELLIPSIS
        "mid-epoch resume on world_size 1 (saved on 2): epoch 0 of 'train' continues after sample 24 of 48 ..."
    """
    if data is None or not saved_plan:
        return None
    saved_world, world = saved_plan.get("world_size"), plan.get("world_size")
    saved_batch, batch = saved_plan.get("global_batch"), plan.get("global_batch")
    if saved_world == world and saved_batch == batch:
        return None
    where = f"epoch {epoch} of {split!r} continues after sample {data['samples']} of {data['length']} of its order"
    if saved_batch == batch:
        return (
            f"mid-epoch resume on world_size {world} (saved on {saved_world}): {where}; the global batch ({batch}) "
            "is unchanged, so each optimizer step takes the samples of the uninterrupted run's"
        )
    return (
        f"mid-epoch resume with another global batch ({saved_batch} -> {batch}; world_size {saved_world} -> "
        f"{world}): {where}, in optimizer steps of {batch} samples from there"
    )


def fast_forward(iterator: Iterator, batches: int, split: str) -> Iterator:
    r"""
    Consume the first `batches` batches of `iterator` (replaying the loader, workers and their seeds included):
    how a loader that can neither skip samples nor restore its own state resumes.

    Raises:
        ValueError: If the loader has fewer batches than the checkpoint had consumed.

    Examples:
        >>> list(fast_forward(iter(range(5)), 3, "train"))
        [3, 4]
    """
    for index in range(batches):
        try:
            next(iterator)
        except StopIteration:
            raise ValueError(
                f"cannot resume {split!r} at batch {batches}: its loader now has only {index} batches "
                "(the dataset or batch size changed since the checkpoint)"
            ) from None
    return iterator
