"""
`EpochSampler`: one global order per epoch (torch's own `randperm` of `seed + epoch`) on any world size, each
optimizer step the next `batch_size x world_size x accum_steps` samples of it, a skip that loads nothing, and
`DataLoader` workers whose augmentation follows the batch, not the worker.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from danling.runner.loop.accumulation import AccumulationWindows
from danling.runner.loop.data import build_dataloader
from danling.runner.loop.feed import EpochFeed, resume_feed, resume_refusal
from danling.runner.loop.sampling import EpochSampler, epoch_sampler
from danling.runner.loop.workers import seed_worker


def torch_order(length: int, seed: int) -> list[int]:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(length, generator=generator).tolist()


def rank_batches(length, rank, world_size, batch_size, seed, epoch, skip=0) -> list[list[int]]:
    sampler = EpochSampler(length, rank, world_size, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    sampler.skip(skip)
    return [batch.tolist() for batch in DataLoader(range(length), batch_size=batch_size, sampler=sampler)]


@pytest.mark.parametrize(("world_size", "accum_steps"), [(1, 4), (2, 2), (4, 1)])
def test_every_optimizer_step_takes_the_next_samples_of_one_global_order(world_size, accum_steps):
    # 2 x 2 x 4 = 16 samples a step on any split of it into ranks and micro-batches, from torch's permutation.
    length, seed, epoch = 48, 11, 3
    batch_size = 16 // (world_size * accum_steps)
    order = torch_order(length, seed + epoch)
    ranks = [rank_batches(length, rank, world_size, batch_size, seed, epoch) for rank in range(world_size)]
    steps = len(ranks[0]) // accum_steps
    assert steps == 3
    for step in range(steps):
        micro = range(step * accum_steps, (step + 1) * accum_steps)
        taken = sorted(index for rank in ranks for m in micro for index in rank[m])
        assert taken == sorted(order[step * 16 : (step + 1) * 16])
    # Rank r's share of a step is every world_size-th sample of the step's block, from position r.
    assert [index for batch in ranks[-1][:accum_steps] for index in batch] == order[world_size - 1 : 16 : world_size]


def test_a_fresh_run_draws_the_orders_torch_samplers_drew():
    dataset = list(range(37))
    generator = torch.Generator()
    generator.manual_seed(5 + 2)
    single = epoch_sampler(dataset, 0, 1, True, 5)
    single.set_epoch(2)
    assert isinstance(single, RandomSampler)
    assert list(single) == list(RandomSampler(dataset, generator=generator))
    for rank in range(3):
        ours = epoch_sampler(dataset, rank, 3, True, 5)
        theirs = DistributedSampler(dataset, 3, rank, shuffle=True, seed=5)
        ours.set_epoch(2)
        theirs.set_epoch(2)
        assert isinstance(ours, DistributedSampler)
        assert list(ours) == list(theirs)  # padded to 39 with the first samples of the order
        assert len(ours) == len(theirs) == 13
    torch.manual_seed(3)
    unseeded = list(RandomSampler(dataset))
    torch.manual_seed(3)
    ours = epoch_sampler(dataset, 0, 1, True, None)
    assert list(ours) == unseeded  # the seed drawn from torch's generator, as RandomSampler draws it


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_skip_resumes_the_order_on_any_world_size_and_once(world_size):
    length, seed, epoch, consumed = 29, 4, 1, 16
    order = torch_order(length, seed + epoch)
    ranks = [rank_batches(length, rank, world_size, 3, seed, epoch, skip=consumed) for rank in range(world_size)]
    left = [index for rank in ranks for batch in rank for index in batch]
    padding = (-(length - consumed)) % world_size
    assert sorted(left) == sorted(order[consumed:] + order[:padding])  # the rest once, padded as torch pads
    sampler = EpochSampler(length, 0, world_size, seed=seed)
    sampler.set_epoch(epoch)
    sampler.skip(consumed)
    assert sampler.remaining() == len(ranks[0][0]) + sum(len(batch) for batch in ranks[0][1:])
    assert len(sampler) == -(-length // world_size)  # the whole epoch's share: what the plan counts
    list(sampler)
    assert len(list(sampler)) == len(sampler)  # the skip was for one iteration


def test_an_unseeded_order_is_kept_by_its_state():
    sampler = EpochSampler(20, shuffle=True, seed=None)
    first = list(sampler)
    again = EpochSampler(20, shuffle=True, seed=None)
    again.skip(8, sampler.state())
    assert list(again) == first[8:]
    unshuffled = EpochSampler(20, shuffle=True, seed=3)
    unshuffled.skip(5, {"epoch": 0, "shuffle": False, "seed": None})  # the checkpoint's epoch was not shuffled
    assert list(unshuffled) == list(range(5, 20))


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="rank 2 of world_size 2"):
        EpochSampler(10, rank=2, world_size=2, seed=0)
    with pytest.raises(ValueError, match="needs a seed"):
        EpochSampler(10, rank=0, world_size=2, seed=None)
    with pytest.raises(ValueError, match="cannot skip 11 samples of an epoch of 10"):
        EpochSampler(10, seed=0).skip(11)


def test_the_feed_counts_samples_of_the_global_order():
    sampler = EpochSampler(50, rank=0, world_size=2, seed=1)
    feed = EpochFeed(sampler, per_batch=4 * 2, skipped=16, start=2)
    assert feed.record(5) == {"samples": 16 + 3 * 8, "length": 50, "order": {"epoch": 0, "shuffle": True, "seed": 1}}
    assert feed.record(7)["samples"] == 50  # the short last batch: the epoch is consumed
    loader = DataLoader(range(50), batch_size=4, sampler=EpochSampler(50, seed=1))
    assert EpochFeed.of(loader, world_size=1) is not None
    assert EpochFeed.of(DataLoader(range(50), batch_size=4), world_size=1) is None  # a sampler that cannot skip
    assert "cannot skip samples" in resume_refusal(DataLoader(range(50)), None, None, 2, 1)
    assert "does not record" in resume_refusal(loader, None, None, 2, 1)
    assert resume_refusal(loader, {"samples": 8}, None, 2, 1) is None


def test_a_resume_skips_in_the_sampler_and_refuses_a_dataset_of_another_length():
    loader = DataLoader(range(30), batch_size=4, sampler=EpochSampler(30, seed=2))
    data = {"samples": 12, "length": 30, "order": {"epoch": 0, "shuffle": True, "seed": 2}}
    batches, start, feed = resume_feed(loader, "train", 3, data, None, world_size=1, saved_world_size=1)
    assert start == 3  # 8 batches in all, 5 left
    assert [index for batch in batches for index in batch.tolist()] == torch_order(30, 2)[12:]
    assert feed.record(5)["samples"] == 20
    with pytest.raises(ValueError, match="its dataset has 30 samples, but the checkpoint's epoch had 31"):
        resume_feed(loader, "train", 3, {**data, "length": 31}, None, world_size=1, saved_world_size=1)
    other = DataLoader(range(30), batch_size=4)
    with pytest.raises(ValueError, match="cannot continue epoch of 'train' on world_size 1: its loader cannot skip"):
        resume_feed(other, "train", 3, None, None, world_size=1, saved_world_size=2)
    replayed, start, _ = resume_feed(other, "train", 3, None, None, world_size=1, saved_world_size=1)
    assert start == 3
    assert next(replayed).tolist() == [12, 13, 14, 15]  # a sampler that cannot skip: the loader is replayed


def test_windows_after_a_resume_start_where_it_resumed():
    # 9 micro-batches left of 12 with accum_steps 2: windows [3, 5), [5, 7), [7, 9), [9, 11), [11, 12).
    windows = AccumulationWindows(accum_steps=2, length=12)
    windows.resume_at(3)
    sizes, steps = [], []
    for micro_step in range(3, 12):
        sizes.append(windows.size())
        if windows.advance():
            steps.append(micro_step + 1)
    assert sizes == [2, 2, 2, 2, 2, 2, 2, 2, 1]
    assert steps == [5, 7, 9, 11, 12]


class Augmented(Dataset):
    """A random draw per sample, in the worker that loads it."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(()) + index


def batches(loader: DataLoader, skip: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(0)
    loader.sampler.skip(skip)
    torch.manual_seed(123)  # the base seed the workers get: what a resumed epoch restores
    return list(loader)


@pytest.mark.parametrize("per_batch", [True, False])
def test_worker_augmentation_follows_the_batch(per_batch):
    options = {"batch_size": 4, "num_workers": 2}
    if not per_batch:
        options["worker_init_fn"] = seed_worker  # torch's per-worker streams, seeded once
    loader = build_dataloader(Augmented(), EpochSampler(24, seed=0), options, train=True, pin=False)
    straight = batches(loader, skip=0)
    resumed = batches(loader, skip=4)  # one batch skipped: every later batch goes to the other worker
    same = all(torch.equal(a, b) for a, b in zip(straight[1:], resumed))
    assert same is per_batch
