"""
Resuming: mid-epoch checkpoints (`save_steps`) continue with the exact next batch, the checkpoint's config is
restored with the user's overrides logged, a changed plan is announced, and new ranks get their own streams.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import danling as dl
from danling.runner.checkpointing.restore import merge_saved_config, seed_derived_stream
from danling.runner.checkpointing.rng import get_rng_state, set_rng_state
from danling.runner.reporting.telemetry import without_telemetry

from ..conftest import ClassifierRunner, parameters_of


class Crash(Exception):
    pass


class NoisyDataset(Dataset):
    """Random augmentation in `__getitem__`: in the loader's workers, it draws from their seeded streams."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        return x + 0.1 * torch.randn_like(x), y


class ShufflingRunner(ClassifierRunner):
    """Dropout, shuffling, augmentation, a scheduler and metrics: every piece of a partial epoch that must survive."""

    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = NoisyDataset(self.datasets.train)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.scheduler = dl.optim.SCHEDULERS.build(self.optimizer, total_steps=self.total_steps, type="cosine")
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3)


class CrashingRunner(ShufflingRunner):
    """Dies right after the mid-epoch checkpoint of step `crash_at`, as a killed job would."""

    def save_position(self, split, batches):
        super().save_position(split, batches)
        if self.steps == self.config.crash_at:
            raise Crash


@pytest.mark.parametrize(("num_workers", "accum_steps", "crash_at"), [(0, 1, 6), (2, 1, 4), (2, 2, 6)])
def test_mid_epoch_resume_is_bit_identical_to_a_straight_run(make_runner, num_workers, accum_steps, crash_at):
    settings = {"seed": 3, "epoch_end": 2, "accum_steps": accum_steps, "save_steps": 2}
    settings["dataloader"] = {"batch_size": 4, "num_workers": num_workers}
    straight = make_runner(ShufflingRunner, **settings)
    straight.train()

    first = make_runner(CrashingRunner, crash_at=crash_at, **settings)
    with pytest.raises(Crash):
        first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    state = torch.load(latest, weights_only=True)
    batches_per_epoch = 40 // 4
    assert state["position"]["split"] == "train"
    assert 0 < state["position"]["batches"] < batches_per_epoch  # really in the middle of an epoch
    assert state["position"]["batches"] % accum_steps == 0  # at an optimizer-step boundary

    resumed = make_runner(ShufflingRunner, checkpoint=latest, **settings)
    assert resumed.steps == crash_at
    assert resumed.epoch_begin == state["position"]["epoch"]
    resumed.train()
    assert resumed.steps == straight.steps
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
    # Meters and metrics of the partial epoch carried over: the epoch results are the same numbers.
    assert without_telemetry(resumed.results) == without_telemetry(straight.results)
    assert resumed.optimizer.state_dict()["state"].keys() == straight.optimizer.state_dict()["state"].keys()


class MultiTaskRunner(ShufflingRunner):
    """The same, with its metrics in a `MultiTaskMetrics` (one task), updated by its own `record`."""

    def __init__(self, config):
        super().__init__(config)
        self.metrics = dl.metrics.MultiTaskMetrics()
        self.metrics["cls"] = dl.metrics.multiclass_metrics(num_classes=3)

    def record(self, pred, target, loss, tokens=None):
        self.meters.loss.update(loss, n=target.shape[0])
        self.current_metrics.update({"cls": (pred.detach(), target)})


class CrashingMultiTaskRunner(MultiTaskRunner):
    def save_position(self, split, batches):
        super().save_position(split, batches)
        if self.steps == self.config.crash_at:
            raise Crash


def test_mid_epoch_resume_keeps_multi_task_metrics_of_the_partial_epoch(make_runner):
    settings = {"seed": 3, "epoch_end": 1, "save_steps": 2, "dataloader": {"batch_size": 4}}
    straight = make_runner(MultiTaskRunner, **settings)
    straight.train()
    first = make_runner(CrashingMultiTaskRunner, crash_at=6, **settings)
    with pytest.raises(Crash):
        first.train()
    resumed = make_runner(MultiTaskRunner, checkpoint=os.path.join(first.checkpoint_dir, "latest.pth"), **settings)
    resumed.train()
    ours, reference = without_telemetry(resumed.results), without_telemetry(straight.results)
    assert ours[0]["train"]["cls"] == reference[0]["train"]["cls"]  # over all 10 batches, not the 4 after the resume
    assert ours == reference


def test_save_steps_writes_mid_epoch_checkpoints_and_validates(make_runner):
    runner = make_runner(ShufflingRunner, seed=1, epoch_end=1, save_steps=3, keep_checkpoints=5)
    runner.train()
    names = sorted(name for name in os.listdir(runner.checkpoint_dir) if name.startswith("step-"))
    # 5 steps in the epoch: a mid-epoch save at step 3, and the epoch-end save at step 5.
    assert [name for name in names if name.endswith(".pth")] == ["step-3.pth", "step-5.pth"]
    assert torch.load(os.path.join(runner.checkpoint_dir, "step-3.pth"), weights_only=True)["position"]["batches"] == 3
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="save_steps"):
            make_runner(ShufflingRunner, save_steps=bad).train()
    with pytest.raises(ValueError, match="keep_checkpoints"):
        make_runner(ShufflingRunner, keep_checkpoints=-1).train()


def test_best_json_never_names_an_epoch_best_pth_does_not_hold(make_runner, monkeypatch):
    runner = make_runner(ShufflingRunner, epoch_end=3)
    original = type(runner).save_checkpoint

    def fail_at_epoch_one(self, *args, **kwargs):
        if self.epochs == 1:
            raise OSError("disk full")
        original(self, *args, **kwargs)

    monkeypatch.setattr(type(runner), "save_checkpoint", fail_at_epoch_one)
    with pytest.raises(OSError, match="disk full"):
        runner.train()
    best = dl.utils.io.load(os.path.join(runner.dir, "best.json"))
    latest = dl.utils.io.load(os.path.join(runner.dir, "latest.json"))
    assert latest["index"] == best["index"] == 0  # epoch 1's JSON was not written: its checkpoint failed
    assert torch.load(os.path.join(runner.checkpoint_dir, "best.pth"), weights_only=True)["runner"]["epochs"] == 0


# The checkpoint's config


def test_resuming_from_config_checkpoint_alone_restores_the_config(make_runner, tmp_path):
    first = make_runner(seed=7, epoch_end=2, accum_steps=2, precision="bf16", score_split="val", lr=0.05)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    resumed = ClassifierRunner({"checkpoint": latest, "dir": str(tmp_path / "resumed"), "log": False})
    for key, value in {"seed": 7, "epoch_end": 2, "accum_steps": 2, "precision": "bf16", "score_split": "val"}.items():
        assert resumed.config[key] == value, key
    assert resumed.optimizer.param_groups[0]["lr"] == 0.05  # the subclass built its optimizer from the restored lr
    assert resumed.steps == first.steps


def test_explicit_keys_override_the_checkpoint_and_each_override_is_logged(make_runner, tmp_path):
    first = make_runner(seed=7, epoch_end=2, accum_steps=2)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    config = {"checkpoint": latest, "dir": str(tmp_path / "resumed"), "log": True, "seed": 8, "epoch_end": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan changes too (tested below)
        resumed = ClassifierRunner(config)
    assert resumed.config.seed == 8
    assert resumed.config.epoch_end == 3
    assert resumed.config.accum_steps == 2  # not set by the user: restored
    log = Path(resumed.log_file).read_text()
    assert "config.seed overrides the checkpoint: it was 7 there, now 8" in log
    assert "config.epoch_end overrides the checkpoint: it was 2 there, now 3" in log
    assert "accum_steps" not in log
    resumed.close()


def test_merge_saved_config_follows_the_config_class_defaults():
    class MyConfig(dl.Config):
        epoch_end: int = 5

    config = MyConfig()
    config.lr = 0.1
    overrides = merge_saved_config(config, {"epoch_end": 9, "lr": 0.2, "steps": 40, "run_id": "x", "dropout": 0.3})
    assert config.epoch_end == 9  # left at the class default: the checkpoint's value
    assert config.dropout == 0.3
    assert config.lr == 0.1
    assert overrides == [("lr", 0.2, 0.1)]
    assert config.steps == 0  # progress is not the config's business here
    assert config.run_id != "x"


def test_a_changed_plan_is_announced(make_runner):
    first = make_runner(epoch_end=2)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    with pytest.warns(RuntimeWarning, match="epoch_end changed from 2 to 4") as record:
        make_runner(epoch_end=4, checkpoint=latest)
    assert "total_steps changed from 10 to 20" in str(record[0].message)
    with pytest.warns(RuntimeWarning, match=r"train_lengths changed from \{'train': 40\} to \{'train': 48\}"):
        make_runner(epoch_end=2, train_size=48, checkpoint=latest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_runner(epoch_end=2, checkpoint=latest)  # same plan: silent


# Ranks that did not exist when the checkpoint was saved


def test_new_ranks_get_derived_streams_not_rank_zeros(make_runner, monkeypatch):
    first = make_runner(seed=1, epoch_end=1)
    first.train()
    state = torch.load(os.path.join(first.checkpoint_dir, "latest.pth"), weights_only=True)
    assert len(state["rng"]) == 1
    set_rng_state(state["rng"][0])
    rank0_draw = torch.rand(4)
    seed_derived_stream(state["rng"][0], 1)
    rank1_draw = torch.rand(4)
    seed_derived_stream(state["rng"][0], 1)
    assert torch.equal(torch.rand(4), rank1_draw)  # derived deterministically
    assert not torch.equal(rank1_draw, rank0_draw)

    runner = make_runner(seed=1, epoch_end=1)
    monkeypatch.setattr(type(runner), "rank", property(lambda self: 1))
    before = get_rng_state()
    runner.load_state_dict(state)
    assert torch.equal(torch.rand(4), rank1_draw)
    set_rng_state(before)


def test_metrics_without_a_state_dict_are_named_when_a_checkpoint_cannot_keep_them():
    from danling.runner.checkpointing.restore import metrics_state

    class Counting:
        def update(self, pred, target):
            pass

    with pytest.warns(RuntimeWarning, match="Counting have no state_dict"):
        assert metrics_state(Counting()) is None
    assert metrics_state(dl.metrics.Metrics())["inputs"] is None


class UnscheduledRunner(ShufflingRunner):
    """Without the cosine schedule, which follows `total_steps` (its first lr too): other budgets train alike."""

    def __init__(self, config):
        super().__init__(config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.scheduler = None


@pytest.mark.parametrize(("num_workers", "accum_steps"), [(0, 1), (2, 2)])
def test_a_step_budget_cut_mid_epoch_resumes_at_the_next_batch(make_runner, num_workers, accum_steps):
    # 40 samples in batches of 4: 10 batches an epoch. A budget of 13 (or 3 with accumulation 2) steps stops epoch
    # 1 (or 0) in its middle; raised on resume, the run must go on as one that had the larger budget all along.
    first_budget, budget = (13, 17) if accum_steps == 1 else (3, 8)
    settings = {"seed": 3, "accum_steps": accum_steps, "dataloader": {"batch_size": 4, "num_workers": num_workers}}
    straight = make_runner(UnscheduledRunner, step_end=budget, **settings)
    straight.train()
    cut = make_runner(UnscheduledRunner, step_end=first_budget, **settings)
    cut.train()
    assert without_telemetry(cut.results)[cut.epochs]["partial"] is True
    latest = os.path.join(cut.checkpoint_dir, "latest.pth")
    position = torch.load(latest, weights_only=True)["position"]
    assert position["split"] == "train"
    assert 0 < position["batches"] < 10
    resumed = make_runner(UnscheduledRunner, checkpoint=latest, step_end=budget, **settings)
    resumed.train()
    assert resumed.steps == straight.steps == budget
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
    assert without_telemetry(resumed.results) == without_telemetry(straight.results)


def test_a_runner_cut_by_its_step_budget_says_how_to_go_on(make_runner):
    runner = make_runner(ShufflingRunner, step_end=7, dataloader={"batch_size": 4})
    runner.train()
    runner.step_end = 12
    with pytest.raises(ValueError, match=r"epoch 0 stopped at step 7 in the middle.*config.checkpoint.*latest.pth"):
        runner.train()
    assert runner.steps == 7


def test_the_saved_plan_holds_the_train_batch_whatever_split_ran_last(make_runner):
    # The epoch's checkpoint is written after the val split ran, with batches of 8 against the train split's 4.
    settings = {"epoch_end": 1, "dataloader": {"batch_size": 4, "val": {"batch_size": 8}}}
    first = make_runner(ShufflingRunner, **settings)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    assert torch.load(latest, weights_only=True)["position"]["plan"]["global_batch"] == 4
    with pytest.warns(RuntimeWarning) as caught:
        resumed = make_runner(ShufflingRunner, checkpoint=latest, **{**settings, "epoch_end": 2})
    messages = [str(warning.message) for warning in caught]
    assert any("continues at step 10 of 20" in message for message in messages), messages  # not "20 of 20"
    assert not any("global_batch" in message for message in messages), messages
    resumed.train()
    assert resumed.steps == 20


def test_a_new_lr_on_resume_is_named_where_the_checkpoint_state_wins(make_runner):
    first = make_runner(epoch_end=1, lr=0.1)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    with pytest.warns(RuntimeWarning, match=r"built with lr 0.01 \(param group 0\) but the checkpoint's .* has 0.1"):
        resumed = make_runner(epoch_end=2, lr=0.01, checkpoint=latest)
    assert resumed.optimizer.param_groups[0]["lr"] == 0.1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the optimizer was built", category=RuntimeWarning)
        same = make_runner(epoch_end=2, lr=0.1, checkpoint=latest)  # the same lr: nothing to say
    assert same.optimizer.param_groups[0]["lr"] == 0.1


def test_a_schedule_that_moved_the_lr_is_not_mistaken_for_a_new_lr(make_runner):
    first = make_runner(ShufflingRunner, epoch_end=1)  # cosine: the saved lr is not the one it starts from
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    saved_lr = torch.load(latest, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the optimizer was built", category=RuntimeWarning)
        resumed = make_runner(ShufflingRunner, epoch_end=1, checkpoint=latest)
    assert resumed.optimizer.param_groups[0]["lr"] == saved_lr != 0.01


class AugmentedStream(torch.utils.data.IterableDataset):
    """The train samples as a stream without a length, augmented from the global generator as they are read."""

    def __init__(self, base):
        self.base = base

    def __iter__(self):
        for index in range(len(self.base)):
            x, y = self.base[index]
            yield x + 0.1 * torch.randn_like(x), y


class StreamRunner(UnscheduledRunner):
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = AugmentedStream(self.datasets.train.base)


def test_a_step_budget_cut_in_a_stream_resumes_at_the_next_batch(make_runner):
    # Without a length, the runner asks the stream for one more batch to know the epoch was cut: the checkpoint
    # holds the state from before that question, so the resumed run reads (and augments) that batch as a straight run.
    settings = {"seed": 3, "dataloader": {"batch_size": 4}}
    straight = make_runner(StreamRunner, step_end=14, **settings)
    straight.train()
    cut = make_runner(StreamRunner, step_end=6, **settings)
    cut.train()
    resumed = make_runner(
        StreamRunner, checkpoint=os.path.join(cut.checkpoint_dir, "latest.pth"), step_end=14, **settings
    )
    resumed.train()
    for ours, reference in zip(parameters_of(resumed), parameters_of(straight)):
        assert torch.equal(ours, reference)
    assert without_telemetry(resumed.results) == without_telemetry(straight.results)
