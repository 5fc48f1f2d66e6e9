"""A process group the runner initialised is destroyed at exit, and what still holds it collected, before the
interpreter tears down gloo's threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from danling.runner.distributed.processes import destroy_process_group_at_exit

WORKERS = Path(__file__).parents[1] / "workers"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.mark.distributed
@pytest.mark.parametrize("script_destroys", [False, True], ids=["left-to-exit", "destroyed-by-script"])
def test_group_is_destroyed_and_what_holds_it_collected_at_exit(tmp_path, torchrun, script_destroys):
    # Whether the script destroys the group itself or not, a cycle that holds it is collected at exit.
    extra = ["destroy"] if script_destroys else []
    torchrun(WORKERS / "exit_worker.py", str(tmp_path), *extra, timeout=240)  # fails the test on a non-zero exit
    reports = [json.loads((tmp_path / f"exit-rank{rank}.json").read_text()) for rank in range(2)]
    assert reports == [{"initialized_at_exit": False, "cycle_collected_at_exit": True}] * 2


def test_exit_handler_without_a_group_does_nothing():
    assert not torch.distributed.is_initialized()
    destroy_process_group_at_exit()
    assert not torch.distributed.is_initialized()
