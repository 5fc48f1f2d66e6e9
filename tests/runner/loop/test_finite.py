"""Non-finite numbers: a NaN training loss stops the run before it is checkpointed; NaN metrics and JSON."""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch

import danling as dl
from danling.runner.loop.finite import NonFiniteLossGuard
from danling.utils.io import load, save

from ..conftest import ClassifierRunner


class PoisonedRunner(ClassifierRunner):
    """Multiplies the loss of batch `config.poison_batch` of epoch `config.poison_epoch` by NaN."""

    def advance(self, loss):
        if self.epochs == self.config.poison_epoch and self._stepper.windows.micro_step == self.config.poison_batch:
            loss = loss * float("nan")
        super().advance(loss)


@pytest.mark.parametrize("log_interval", [1, 100])
def test_a_nan_training_loss_raises_naming_split_epoch_and_step_and_keeps_latest(make_runner, log_interval):
    runner = make_runner(PoisonedRunner, poison_epoch=1, poison_batch=2, epoch_end=3, log_interval=log_interval)
    with pytest.raises(FloatingPointError, match=r"split 'train' at epoch 1, step 8 \(batch 2"):
        runner.train()
    latest = torch.load(os.path.join(runner.checkpoint_dir, "latest.pth"), weights_only=True)
    assert latest["runner"]["epochs"] == 0  # epoch 1 was never checkpointed
    assert all(torch.isfinite(value).all() for value in latest["model"].values())
    assert list(runner.results) == [0]
    with pytest.raises(FloatingPointError):  # nor can the poisoned weights be saved by hand
        runner.save_checkpoint()


def test_a_nan_training_loss_stops_at_the_next_log_step(make_runner):
    runner = make_runner(PoisonedRunner, poison_epoch=0, poison_batch=1, epoch_end=1, log_interval=2)
    seen = []
    runner.train_step = lambda data, step=runner.train_step: (seen.append(1), step(data))[1]
    with pytest.raises(FloatingPointError, match="step 2"):
        runner.train()
    assert len(seen) == 2  # detected at the log step after the NaN, not at the end of the epoch


@pytest.mark.parametrize("bad", [[5], [NonFiniteLossGuard.FOLD + 1], [7, NonFiniteLossGuard.FOLD + 2]])
def test_the_guard_finds_the_first_bad_step_without_reading_the_device(monkeypatch, bad):
    guard = NonFiniteLossGuard()
    guard.start("train", epoch=3, steps=100, accum_steps=2)
    losses = [torch.tensor(float("nan") if i in bad else 0.5) for i in range(NonFiniteLossGuard.FOLD + 5)]

    def forbidden(self, *args, **kwargs):
        raise AssertionError("host-device synchronisation")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
            patch.setattr(torch.Tensor, name, forbidden)
        for micro_step, loss in enumerate(losses):  # folds once on the way, on the device
            guard.watch(loss, micro_step)
    step = 100 + bad[0] // 2 + 1
    with pytest.raises(FloatingPointError, match=rf"epoch 3, step {step} \(batch {bad[0]} "):
        guard.check()


def test_a_nan_evaluation_loss_is_reported_not_raised(make_runner):
    runner = make_runner(epoch_end=1)
    runner.metrics = dl.metrics.multiclass_metrics(num_classes=3)
    runner.train()
    with torch.no_grad():
        runner.model[0].weight.fill_(float("nan"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.evaluate(["val"])["val"]
    assert math.isnan(result["loss"])
    assert math.isnan(result["acc"])
    assert math.isnan(result["auroc"])
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1


def test_json_files_stay_valid_json_and_read_back(tmp_path):
    values = {"loss": float("nan"), "best": float("inf"), "worst": -float("inf"), "acc": 0.5}
    path = save({"val": values}, os.path.join(tmp_path, "result.json"))

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    with open(path) as fp:
        strict = json.load(fp, parse_constant=reject)
    assert strict["val"]["acc"] == 0.5
    loaded = load(path)["val"]
    assert math.isnan(loaded["loss"])
    assert loaded["best"] == math.inf
    assert loaded["worst"] == -math.inf


def test_results_json_with_a_nan_score_is_valid_json(new_runner):
    runner = new_runner()
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    runner.save_result()
    runner.append_result({"val": {"loss": float("nan")}}, index=1)
    runner.save_result()
    with open(os.path.join(runner.dir, "results.json")) as fp:
        text = fp.read()
    assert "NaN" not in text.replace('"NaN"', "")
    assert math.isnan(load(os.path.join(runner.dir, "results.json"))["results"]["1"]["val"]["loss"])
    assert load(os.path.join(runner.dir, "best.json"))["index"] == 0


def test_the_training_step_never_waits_for_the_device(make_runner, monkeypatch):
    runner = make_runner(PoisonedRunner, poison_epoch=0, poison_batch=1, epoch_end=1)
    runner._start_epoch("train", runner.mode)
    runner._begin_accumulation(None)
    runner._stepper.loss_guard.start("train", epoch=0, steps=0, accum_steps=1)
    batches = list(runner.dataloaders.train)[:3]

    def forbidden(self, *args, **kwargs):
        raise AssertionError("host-device synchronisation")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
            patch.setattr(torch.Tensor, name, forbidden)
        for batch in batches:  # batch 1 is poisoned: noted on the device, not read
            runner.train_step(batch)
    assert runner.steps == 3
    with pytest.raises(FloatingPointError, match="batch 1"):
        runner._stepper.loss_guard.check()


def test_large_finite_losses_pass_and_a_nan_among_them_is_still_located():
    guard = NonFiniteLossGuard()
    guard.start("train", epoch=0, steps=0, accum_steps=1)
    for index in range(20):  # a float32 sum of these would overflow to inf; the check sums in float64
        guard.watch(torch.tensor(3e38), index)
    guard.check()
    assert guard.pending == []
    for index in range(20, 30):
        guard.watch(torch.tensor(float("inf") if index == 27 else 3e38), index)
    with pytest.raises(FloatingPointError, match=r"step 28 \(batch 27 of the epoch\)"):
        guard.check()
