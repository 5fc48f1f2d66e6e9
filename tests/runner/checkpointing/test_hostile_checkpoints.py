"""Hostile or wrong checkpoint files get errors that protect the user, and never run what they carry."""

from __future__ import annotations

import pytest
import torch

from danling.runner.checkpointing import CheckpointError
from danling.runner.checkpointing.files import NotACheckpointError


class Payload:
    """Unpickling it creates a marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_needs_pickle_is_refused_without_running_it(make_runner, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"runner": {"steps": 3}, "model": {}, "extra": Payload(str(marker))}, evil)
    for load in (
        lambda: make_runner(checkpoint=str(evil)),
        lambda: make_runner().load_checkpoint(str(evil)),
        lambda: make_runner().load_pretrained(str(evil)),
    ):
        with pytest.raises(CheckpointError) as error:
            load()
        message = str(error.value)
        assert str(evil) in message
        assert "pickle" in message
        assert "weights_only" not in message  # no advice to unpickle it
        assert not marker.exists()


def test_an_unrelated_torch_save_is_named_with_its_keys(make_runner, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "net": {"w": torch.ones(2)}, "opt": {}}, other)
    with pytest.raises(NotACheckpointError, match=r"is not a DanLing checkpoint: its top-level keys are \['epoch'"):
        make_runner(checkpoint=str(other))
    runner = make_runner()
    with pytest.raises(NotACheckpointError, match="'epoch', 'net', 'opt'"):
        runner.load_checkpoint(str(other))


def test_a_bare_state_dict_of_the_model_still_loads(make_runner, tmp_path):
    runner = make_runner()
    weights = tmp_path / "weights.pth"
    state = {key: torch.full_like(value, 0.5) for key, value in runner.model.state_dict().items()}
    torch.save(state, weights)
    with pytest.warns(RuntimeWarning, match="optimizer state is not in the checkpoint"):
        runner.load_checkpoint(str(weights))
    assert all(torch.equal(value, state[key]) for key, value in runner.model.state_dict().items())
