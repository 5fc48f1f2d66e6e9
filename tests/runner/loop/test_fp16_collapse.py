"""A collapsing fp16 loss scale stops a real run with `FloatingPointError`; normal fp16 overflows do not."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ..conftest import ClassifierRunner

# 64 samples in batches of 1: 64 optimizer steps an epoch, room for 30 overflows in a row within one epoch.
CONFIG = {"precision": "fp16", "epoch_end": 2, "train_size": 64, "dataloader": {"batch_size": 1}, "log": True}


class OverflowingRunner(ClassifierRunner):
    """
    Its training loss is finite, but so large that the fp16 gradients overflow, on the batches it is told. On the
    others it is quartered, so that no batch overflows at the scaler's initial scale (2**16) unless told to.
    """

    def __init__(self, config, overflows) -> None:
        super().__init__(config)
        self.overflows = overflows  # which training batches (counted from 0 over the run) overflow
        self.batches = 0
        loss = self.criterion

        def criterion(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if not self.model.training:
                return loss(pred, target)
            self.batches += 1
            return loss(pred, target) * (1e30 if self.overflows(self.batches - 1) else 0.25)

        self.criterion = criterion


def run_log(runner) -> str:
    return (Path(runner.dir) / "run.log").read_text()


def test_a_scale_collapsing_in_a_real_run_raises_naming_the_step_and_the_scale(make_runner):
    # Ten good steps, then every batch overflows: the scale halves at each, from 2**16 to below 1e-4 in 30.
    runner = make_runner(lambda config: OverflowingRunner(config, lambda batch: batch >= 10), **CONFIG)
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    scale = runner.scaler.get_scale()
    assert scale == 2.0**-14
    message = str(error.value)
    assert "at step 11, after 10 optimizer steps" in message
    assert f"collapsed to {scale:.3g}" in message  # 6.1e-05
    assert "bf16" in message
    assert runner.steps == 10
    assert runner.batches == 40  # raised at the very overflow that took the scale below the floor
    assert f"[ERROR] danling.runner.{runner.id}: {message}" in run_log(runner)


@pytest.mark.parametrize("burst", [3, 29])
def test_a_burst_of_overflows_that_leaves_the_scale_above_the_floor_trains_on(make_runner, burst):
    # Normal fp16 dynamics: a few skipped steps, the scale settles and the run finishes (29 halvings of 2**16
    # still leave 2**-13, above 1e-4).
    runner = make_runner(lambda config: OverflowingRunner(config, lambda batch: 5 <= batch < 5 + burst), **CONFIG)
    runner.train()
    assert runner.steps == 2 * 64 - burst
    assert runner.scaler.get_scale() == 2.0 ** (16 - burst)
    assert "collapsed" not in run_log(runner)
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


SCRIPT = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import danling as dl


    class Runner(dl.TorchRunner):
        def __init__(self, config):
            super().__init__(config)
            generator = torch.Generator().manual_seed(0)
            self.datasets.train = TensorDataset(torch.randn(64, 4, generator=generator), torch.randint(0, 3, (64,)))
            self.model = nn.Linear(4, 3)
            self.criterion = lambda pred, target: nn.functional.cross_entropy(pred, target) * 1e30
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


    Runner({"dir": "run", "device": "cpu", "precision": "fp16", "epoch_end": 1,
            "dataloader": {"batch_size": 1}}).train()
    print("finished")
"""


def test_a_script_whose_scale_collapses_exits_non_zero_with_the_error_in_its_log(tmp_path, subprocess_run):
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    result = subprocess_run([sys.executable, "train.py"], cwd=tmp_path)
    assert result.returncode != 0
    assert "finished" not in result.stdout
    assert "FloatingPointError: fp16 loss scale collapsed to 6.1e-05" in result.stderr
    assert "at step 1, after 0 optimizer steps" in result.stderr
    logs = list((tmp_path / "run").rglob("run.log"))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert "ERROR" in log
    assert "fp16 loss scale collapsed to 6.1e-05 (below 0.0001) at step 1" in log
