"""
Resume on any world size without replaying data: a mid-epoch checkpoint records the samples of the epoch's global
order consumed, and a resumed run skips them in its sampler, so no consumed sample is loaded again. Two ranks x
`accum_steps` 1 preempted by `SIGTERM` continue on one process x `accum_steps` 2 as the uninterrupted run (to 1e-6);
another global batch continues from the consumed samples and says so. Loaders that keep their own state are saved
and restored as they are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler

from ..workers.anysize_worker import LENGTH, LR, SEED, AnySizeRunner, RecordingDataset, run_config

WORKER = Path(__file__).parents[1] / "workers" / "anysize_worker.py"


class Crash(Exception):
    pass


class CrashingRunner(AnySizeRunner):
    """Dies right after the mid-epoch checkpoint of step `crash_at`, as a killed job would."""

    def save_position(self, split, batches):
        super().save_position(split, batches)
        if self.steps == self.config.crash_at:
            raise Crash


def torch_order(seed: int) -> list[int]:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(LENGTH, generator=generator).tolist()


def parameters(runner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]


def by_hand(model_state: dict, windows: list[list[list[int]]]) -> list[torch.Tensor]:
    r"""SGD over `windows` (each a list of micro-batches of indices): the mean of the micro-batches' mean losses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    model.load_state_dict(model_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = RecordingDataset()
    for window in windows:
        for micro in window:
            loss = nn.functional.mse_loss(model(data.x[micro]), data.y[micro])
            (loss / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


def cut(order: list[int], batch_size: int, accum_steps: int) -> list[list[list[int]]]:
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + accum_steps] for i in range(0, len(micro), accum_steps)]


def banner(runner) -> str:
    return Path(runner.log_file).read_text().split("differs from the defaults")[0]


def crash_then_resume(tmp_path, crash_at: int, resumed_changes: dict, **settings):
    first = CrashingRunner(run_config(str(tmp_path / "first"), crash_at=crash_at, save_steps=crash_at, **settings))
    with pytest.raises(Crash):
        first.train()
    first.close()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    resumed = AnySizeRunner(run_config(str(tmp_path / "resumed"), checkpoint=latest, **settings, **resumed_changes))
    return first, torch.load(latest, weights_only=True), resumed


# One process


def test_a_same_size_resume_loads_no_consumed_sample_and_is_bit_identical(tmp_path):
    straight = AnySizeRunner(run_config(str(tmp_path / "straight"), log=False))
    straight.train()
    first, state, resumed = crash_then_resume(tmp_path, 5, {}, log=False)
    assert state["position"]["batches"] == 5
    assert state["position"]["data"] == {"samples": 20, "length": 48, "order": {"epoch": 0, "shuffle": True, "seed": 5}}
    resumed.train()
    epoch0, epoch1 = torch_order(SEED), torch_order(SEED + 1)
    assert straight.datasets.train.asked == epoch0 + epoch1  # torch's permutation of seed + epoch, in order
    assert first.datasets.train.asked == epoch0[:20]
    assert resumed.datasets.train.asked == epoch0[20:] + epoch1  # not one consumed sample loaded again
    assert resumed.steps == straight.steps == 24
    for ours, reference in zip(parameters(resumed), parameters(straight)):
        assert torch.equal(ours, reference)


def test_another_accumulation_continues_from_the_consumed_samples_in_windows_from_there(tmp_path):
    # 3 steps of 4 samples (accum 1) consumed 12; accum 2 then takes windows of 8 from sample 12 on: 9 micro-batches
    # left in epoch 0, so its windows start at micro-batch 3 and the last one holds a single micro-batch.
    with pytest.warns(RuntimeWarning, match="global_batch changed from 4 to 8"):
        first, state, resumed = crash_then_resume(tmp_path, 3, {"accum_steps": 2})
    resumed.train()
    resumed.close()
    epoch0, epoch1 = torch_order(SEED), torch_order(SEED + 1)
    assert resumed.datasets.train.asked == epoch0[12:] + epoch1
    assert resumed.steps == 3 + 5 + 6
    expected = by_hand(state["model"], cut(epoch0[12:], 4, 2) + cut(epoch1, 4, 2))
    for ours, reference in zip(parameters(resumed), expected):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert "another global batch (4 -> 8; world_size 1 -> 1)" in banner(resumed)
    assert "continues after sample 12 of 48" in banner(resumed)


def test_a_loader_with_its_own_sampler_resumes_by_replay_and_refuses_another_world_size(tmp_path):
    class OwnSamplerRunner(CrashingRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasamplers.train = RandomSampler(self.datasets.train, generator=torch.Generator().manual_seed(1))

    first = OwnSamplerRunner(run_config(str(tmp_path / "first"), log=False, crash_at=4, save_steps=4))
    with pytest.raises(Crash):
        first.train()
    state = torch.load(os.path.join(first.checkpoint_dir, "latest.pth"), weights_only=True)
    assert state["position"]["data"] is None  # its sampler cannot tell the samples of a global order
    state["position"]["world_size"] = 2
    state["rng"] = state["rng"] * 2
    path = tmp_path / "two-ranks.pth"
    torch.save(state, path)
    resumed = OwnSamplerRunner(run_config(str(tmp_path / "resumed"), log=False, checkpoint=str(path), crash_at=-1))
    with pytest.raises(ValueError, match="world_size 2, but this run has world_size 1: its loader cannot skip"):
        resumed.train()
    assert resumed.steps == 4


# Loaders that keep their own state


class PositionLoader:
    """A loader that keeps its own place in the epoch, as torchdata's `StatefulDataLoader` does."""

    def __init__(self, dataset, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.epoch = self.position = 0  # batches of the current epoch yielded
        self.loaded: list[dict] = []

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        order = torch_order(100 + self.epoch)
        for batch in range(self.position, len(self)):
            samples = [self.dataset[index] for index in order[batch * self.batch_size : (batch + 1) * self.batch_size]]
            self.position = batch + 1
            yield torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.loaded.append(dict(state))
        self.epoch, self.position = state["epoch"], state["position"]


class StatefulRunner(CrashingRunner):
    def __init__(self, config):
        super().__init__(config)
        self.dataloaders.train = PositionLoader(self.datasets.train, 4)


def test_a_loader_with_its_own_state_is_saved_and_restored_as_it_is(tmp_path):
    settings = {"log": False, "crash_at": -1}
    straight = StatefulRunner(run_config(str(tmp_path / "straight"), **settings))
    straight.train()
    first = StatefulRunner(run_config(str(tmp_path / "first"), **{**settings, "crash_at": 16, "save_steps": 8}))
    with pytest.raises(Crash):
        first.train()
    state = torch.load(os.path.join(first.checkpoint_dir, "latest.pth"), weights_only=True)
    assert state["position"]["ranks"][0]["loaders"] == {"train": {"epoch": 1, "position": 4}}
    resumed = StatefulRunner(run_config(str(tmp_path / "resumed"), checkpoint=first.checkpoint_dir, **settings))
    resumed.train()
    assert resumed.dataloaders.train.loaded == [{"epoch": 1, "position": 4}]
    assert resumed.datasets.train.asked == torch_order(101)[16:]  # nothing replayed
    for ours, reference in zip(parameters(resumed), parameters(straight)):
        assert torch.equal(ours, reference)

    # At an epoch's end too: the next epoch is the loader's second, not a fresh first.
    one = StatefulRunner(run_config(str(tmp_path / "one"), **{**settings, "epoch_end": 1}))
    one.train()
    latest = os.path.join(one.checkpoint_dir, "latest.pth")
    with pytest.warns(RuntimeWarning, match="epoch_end changed from 1 to 2"):
        two = StatefulRunner(run_config(str(tmp_path / "two"), checkpoint=latest, **settings))
    two.train()
    assert two.dataloaders.train.loaded == [{"epoch": 1, "position": 0}]
    for ours, reference in zip(parameters(two), parameters(straight)):
        assert torch.equal(ours, reference)


def test_torchdata_stateful_dataloader_is_restored_as_it_is(tmp_path):
    stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")

    class TorchdataRunner(CrashingRunner):
        def __init__(self, config):
            super().__init__(config)
            self.dataloaders.train = stateful_dataloader.StatefulDataLoader(self.datasets.train, batch_size=4)

    settings = {"log": False, "crash_at": -1}
    straight = TorchdataRunner(run_config(str(tmp_path / "straight"), **settings))
    straight.train()
    first = TorchdataRunner(run_config(str(tmp_path / "first"), **{**settings, "crash_at": 6, "save_steps": 6}))
    with pytest.raises(Crash):
        first.train()
    resumed = TorchdataRunner(run_config(str(tmp_path / "resumed"), checkpoint=first.checkpoint_dir, **settings))
    resumed.train()
    assert resumed.datasets.train.asked[:24] == list(range(24, 48))  # unshuffled: the epoch's second half
    for ours, reference in zip(parameters(resumed), parameters(straight)):
        assert torch.equal(ours, reference)


# Two ranks under torchrun, resumed on one process


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, torchrun) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("two-ranks")
    result = torchrun(WORKER, str(out), check=False)
    reports = {
        name: [json.loads((out / f"{name}-rank{rank}.json").read_text()) for rank in range(2)]
        for name in ("straight", "preempted")
    }
    assert [report["outcome"] for report in reports["straight"]] == ["finished", "finished"], result.stderr[-3000:]
    assert [report["outcome"] for report in reports["preempted"]] == ["exit 143", "exit 143"], result.stderr[-3000:]
    return out, reports


@pytest.mark.distributed
def test_two_ranks_preempted_continue_on_one_process_with_the_same_global_batch(tmp_path, two_ranks):
    out, reports = two_ranks
    latest = out / "preempted" / "checkpoints" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    assert (state["position"]["split"], state["position"]["batches"]) == ("train", 3)
    assert state["position"]["data"]["samples"] == 24  # 3 steps of 2 ranks x 4 samples
    resumed = AnySizeRunner(run_config(str(tmp_path / "resumed"), checkpoint=str(latest), accum_steps=2))
    with pytest.warns(RuntimeWarning, match="world_size 2 on world_size 1"):
        resumed.train()
    resumed.close()
    assert resumed.steps == reports["straight"][0]["steps"] == 12
    for ours, reference in zip(parameters(resumed), reports["straight"][0]["parameters"]):
        torch.testing.assert_close(ours.flatten(), torch.tensor(reference), rtol=0, atol=1e-6)
    # The partial epoch's loss counts both ranks' batches before the checkpoint, not only rank 0's.
    losses = {str(index): result["train"]["loss"] for index, result in resumed.results.items()}
    assert losses == pytest.approx(reports["straight"][0]["train_loss"], rel=1e-6)
    epoch0, epoch1 = torch_order(SEED), torch_order(SEED + 1)
    before = [report["asked"] for report in reports["preempted"]]
    assert before == [epoch0[0:24:2], epoch0[1:24:2]]  # each rank every other sample of the steps' blocks
    assert resumed.datasets.train.asked == epoch0[24:] + epoch1
    assert sorted(before[0] + before[1] + epoch0[24:]) == list(range(LENGTH))  # the epoch, each sample once
    line = "mid-epoch resume on world_size 1 (saved on 2): epoch 0 of 'train' continues after sample 24 of 48"
    assert line in banner(resumed)
    assert "the global batch (8) is unchanged" in banner(resumed)


@pytest.mark.distributed
def test_two_ranks_preempted_continue_on_one_process_with_another_global_batch(tmp_path, two_ranks):
    out, _ = two_ranks
    latest = out / "preempted" / "checkpoints" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    with pytest.warns(RuntimeWarning, match="global_batch changed from 8 to 4"):
        resumed = AnySizeRunner(run_config(str(tmp_path / "resumed"), checkpoint=str(latest)))
    with pytest.warns(RuntimeWarning, match="world_size 2 on world_size 1"):
        resumed.train()
    resumed.close()
    epoch0, epoch1 = torch_order(SEED), torch_order(SEED + 1)
    assert resumed.datasets.train.asked == epoch0[24:] + epoch1
    assert resumed.steps == 3 + 6 + 12  # then steps of 4 samples: 6 for the rest of epoch 0, 12 for epoch 1
    expected = by_hand(state["model"], cut(epoch0[24:], 4, 1) + cut(epoch1, 4, 1))
    for ours, reference in zip(parameters(resumed), expected):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert "mid-epoch resume with another global batch (8 -> 4; world_size 2 -> 1)" in banner(resumed)
