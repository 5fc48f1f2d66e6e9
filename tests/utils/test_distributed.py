from __future__ import annotations

import pytest
import torch

from danling.utils import distributed as dist_utils
from danling.utils import get_local_rank, get_rank, get_world_size, is_distributed


def test_single_process_defaults() -> None:
    assert is_distributed() is False
    assert get_world_size() == 1
    assert get_rank() == 0
    assert get_local_rank() == 0
    assert dist_utils.communication_device() == torch.device("cpu")


def test_ranks_follow_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (get_world_size(), get_rank(), get_local_rank()) == (4, 2, 1)
    assert is_distributed() is False  # no process group yet


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_all_reduce_clones_and_does_not_mutate(op: str) -> None:
    tensor = torch.tensor([1.0, 2.0])
    reduced = dist_utils.all_reduce(tensor, op=op)
    assert torch.equal(reduced, torch.tensor([1.0, 2.0]))
    assert reduced is not tensor
    assert reduced.data_ptr() != tensor.data_ptr()
    reduced.add_(1)
    assert torch.equal(tensor, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("op", ["max", "SUM", "avg"])
def test_all_reduce_rejects_unknown_ops(op: str) -> None:
    with pytest.raises(ValueError, match="sum"):
        dist_utils.all_reduce(torch.ones(1), op=op)


def test_all_gather_uneven_in_one_process() -> None:
    tensor = torch.arange(3)
    assert torch.equal(dist_utils.all_gather_uneven(tensor), tensor)


def test_broadcast_object_and_barrier_in_one_process() -> None:
    obj = {"seed": 1}
    assert dist_utils.broadcast_object(obj) == {"seed": 1}
    assert dist_utils.barrier() is None
