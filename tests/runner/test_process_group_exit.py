"""A process group the runner initialised is destroyed at exit, and what still holds it collected, before the
interpreter tears down gloo's threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from danling.runner.distributed import destroy_process_group_at_exit

WORKERS = Path(__file__).parent / "workers"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.mark.distributed
def test_group_left_by_the_script_is_destroyed_at_exit(tmp_path, torchrun):
    torchrun(WORKERS / "exit_worker.py", str(tmp_path), timeout=240)  # fails the test on a non-zero exit
    reports = [json.loads((tmp_path / f"exit-rank{rank}.json").read_text()) for rank in range(2)]
    assert reports == [{"initialized_at_exit": False, "cycle_collected_at_exit": True}] * 2


def test_exit_handler_without_a_group_does_nothing():
    assert not torch.distributed.is_initialized()
    destroy_process_group_at_exit()
    assert not torch.distributed.is_initialized()
