from __future__ import annotations

import pytest
import torch


@pytest.fixture
def no_device_sync(monkeypatch: pytest.MonkeyPatch):
    """Make every tensor -> Python conversion raise, to prove a code path never waits for the device."""

    def forbidden(self, *args, **kwargs):
        raise AssertionError("host-device synchronisation")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    return monkeypatch
