"""The start banner: what a run logs about itself when `train()` or `evaluate()` starts."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

import danling as dl
from danling.runner import Config
from danling.runner.reporting.banner import config_changes, non_defaults

from ..conftest import ClassifierRunner


def log_text(runner) -> str:
    runner.close()
    return Path(runner.log_file).read_text()


def test_train_banner_describes_the_run(make_runner):
    runner = make_runner(log=True, accum_steps=2, precision="bf16", score_name="loss", score_mode="max", patience=3)
    runner.train()
    text = log_text(runner)
    assert f"train DanLing-Run (id {runner.id})" in text
    assert f"run directory: {runner.dir}" in text
    assert "device: cpu\tprecision: bf16" in text
    assert "world size: 1\tbatch size: 8\taccumulation: 2\teffective batch size: 16" in text
    parameters = sum(p.numel() for p in runner.model.parameters())
    assert f"parameters: {parameters:,} trainable / {parameters:,} total" in text
    assert "optimizer steps: 3 per epoch, 6 in total" in text  # 5 batches, windows of 2
    assert "best result: loss on val (higher is better)" in text
    differences = text.split("differs from the defaults: ", 1)[1].splitlines()[0]
    for expected in ("accum_steps: 2", "precision: 'bf16'", "score_mode: 'max'", "patience: 3", "epoch_end: 2"):
        assert expected in differences
    assert "resumed from" not in text
    assert text.count("train DanLing-Run") == 1  # once per train(), not per epoch


def test_banner_counts_frozen_parameters(make_runner):
    runner = make_runner(log=True, epoch_end=1)
    runner.model[0].weight.requires_grad_(False)
    runner.train()
    total = sum(p.numel() for p in runner.model.parameters())
    frozen = runner.model[0].weight.numel()
    assert f"parameters: {total - frozen:,} trainable / {total:,} total" in log_text(runner)


def test_resume_banner_names_the_checkpoint_and_the_changed_keys(make_runner):
    first = make_runner(epoch_end=2, max_grad_norm=1.0)
    first.train()
    latest = os.path.join(first.checkpoint_dir, "latest.pth")
    resumed = make_runner(log=True, epoch_end=4, max_grad_norm=0.5, checkpoint=latest)
    resumed.train()
    text = log_text(resumed)
    assert f"resumed from {latest} at epoch 2, step 10" in text
    changed = text.split("changed since the checkpoint: ", 1)[1].splitlines()[0]
    assert "max_grad_norm: 1.0 -> 0.5" in changed
    assert "epoch_end: 2 -> 4" in changed
    assert "steps" not in changed  # progress is not a change of the config


def test_evaluate_banner_and_lower_is_better(make_runner):
    runner = make_runner(log=True)
    runner.evaluate(["val"])
    text = log_text(runner)
    assert "evaluate DanLing-Run" in text
    assert "best result: loss on val (lower is better)" in text
    assert "optimizer steps" not in text


def test_banner_only_on_the_main_process(make_runner, monkeypatch):
    runner = make_runner(log=True, epoch_end=1)
    monkeypatch.setattr(type(runner), "is_main_process", property(lambda self: False))
    runner.announce("train")
    monkeypatch.undo()
    runner.log("the main process logs")
    assert "train DanLing-Run" not in log_text(runner)
    assert not (Path(runner.dir) / "config.yaml").exists()


def test_config_changes_and_non_defaults_are_pure():
    assert config_changes({"optim": {"lr": 0.1}}, {"optim": {"lr": 0.2}}) == ["optim.lr: 0.1 -> 0.2"]
    assert non_defaults(Config()) == []
    assert non_defaults(Config({"seed": 3})) == ["seed: 3"]


@pytest.mark.parametrize("runner_class", [ClassifierRunner])
def test_banner_goes_through_the_runners_logger_only(make_runner, capsys, runner_class):
    runner = make_runner(runner_class, log=False, epoch_end=1)
    runner.train()
    assert capsys.readouterr().out == ""


class WarmupCosineRunner(ClassifierRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.scheduler = dl.optim.SCHEDULERS.build(
            self.optimizer, type="cosine_with_warmup", warmup_steps=2, total_steps=self.total_steps
        )


def test_train_banner_prints_the_planned_lr_at_quarters_of_the_run(make_runner):
    runner = make_runner(WarmupCosineRunner, epoch_end=2, log=True)  # 40 samples, batches of 8: 10 steps
    runner.train()
    line = next(line for line in log_text(runner).splitlines() if "planned lr:" in line)
    for fraction, step in ((0.0, 0), (0.25, 3), (0.5, 5), (0.75, 8), (1.0, 10)):
        closed = 0.1 * step / 2 if step < 2 else 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 8))
        assert f"{fraction:.0%} (step {step}): {closed:.3g}" in line


def test_train_banner_prints_a_constant_lr_without_a_scheduler(make_runner):
    runner = make_runner(epoch_end=1, log=True, lr=0.25)
    runner.train()
    assert "planned lr: 0% (step 0): 0.25, 25% (step 1): 0.25" in log_text(runner)
