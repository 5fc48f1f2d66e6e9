"""`verify_resume`: agrees for a script that resumes exactly, and names what differs for one that does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ..conftest import ClassifierRunner


class DropoutRunner(ClassifierRunner):
    def __init__(self, config):
        super().__init__(config)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 3))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)


class ForgetfulRunner(DropoutRunner):
    """Drops the optimizer state and the random streams when it loads: its resume is not exact."""

    def load_state_dict(self, state):
        state = {key: value for key, value in state.items() if key not in ("optimizer", "rng", "position")}
        super().load_state_dict(state)


@pytest.mark.parametrize(("num_workers", "accum_steps"), [(0, 1), (2, 2)])
def test_verify_resume_agrees_for_an_exact_script(make_runner, num_workers, accum_steps):
    dataloader = {"batch_size": 4, "num_workers": num_workers}
    runner = make_runner(DropoutRunner, seed=2, accum_steps=accum_steps, dataloader=dataloader)
    check = runner.verify_resume(steps=2)
    assert check.ok, check.mismatches
    assert check.parameters
    assert check.optimizer
    assert check.rng
    assert check.mismatches == []


def test_verify_resume_names_what_differs(make_runner):
    with pytest.warns(RuntimeWarning, match="optimizer state is not in the checkpoint"):
        check = make_runner(ForgetfulRunner, seed=2).verify_resume(steps=2)
    assert not check
    assert not check.optimizer
    assert not check.parameters
    assert any(item.startswith("optimizer state") for item in check.mismatches)
    assert any(item.startswith("parameter") for item in check.mismatches)


def test_verify_resume_needs_enough_batches(make_runner):
    with pytest.raises(ValueError, match="needs 12 batches"):
        make_runner(DropoutRunner, dataloader={"batch_size": 8}).verify_resume(steps=6)
    with pytest.raises(ValueError, match="positive"):
        make_runner(DropoutRunner).verify_resume(steps=0)
