"""The runner uses torch's public API only: no private torch names anywhere in the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import danling

# Private torch names the hot loop once used for speed; each may change or vanish in any torch release.
FORBIDDEN = ("_profiler_enabled", "_per_optimizer_states", "_step_supports_amp_scaling", "torch._C")

SOURCES = sorted(Path(danling.__file__).parent.rglob("*.py"))


def test_the_package_sources_are_found():
    assert any(path.name == "stepping.py" for path in SOURCES)


@pytest.mark.parametrize("name", FORBIDDEN)
def test_no_private_torch_name_is_used(name):
    found = [
        f"{path}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if name in line
    ]
    assert not found, f"{name} used at {', '.join(found)}"
