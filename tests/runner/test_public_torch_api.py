"""The runner uses torch's public API only: no private torch names anywhere in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import danling

# Private torch names the hot loop once used for speed; each may change or vanish in any torch release.
FORBIDDEN = ("_profiler_enabled", "_per_optimizer_states", "_step_supports_amp_scaling", "torch._C")
# Private names of torch and TensorBoard objects the package once read or set; each had a public replacement.
ONCE_USED = ("_foreach_", "_get_file_writer", "_load_state_dict_from_keys", "_wrapped_by_lr_sched", "_opt_called")
# `torch.compile`'s wrapper has no public way to the module it wraps: `unwrap` reads `_orig_mod`, as every trainer does.
ALLOWED = {"_orig_mod"}
TORCH_ROOTS = {"torch", "dist", "nn", "dcp", "_dcp"}

SOURCES = sorted(Path(danling.__file__).parent.rglob("*.py"))


def test_the_package_sources_are_found():
    assert any(path.name == "stepping.py" for path in SOURCES)


@pytest.mark.parametrize("name", FORBIDDEN + ONCE_USED)
def test_no_private_torch_name_is_used(name):
    found = [
        f"{path}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if name in line
    ]
    assert not found, f"{name} used at {', '.join(found)}"


def _root(node: ast.expr) -> str | None:
    # The name an attribute chain starts from: `torch` in `torch.a.b`, `_dcp` in `_dcp().a`.
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else None


def private_torch_attributes(source: str) -> list[tuple[int, str]]:
    r"""`(line, name)` of each private attribute read or set on a chain that starts from a torch module."""
    return [
        (node.lineno, node.attr)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in ALLOWED
        and _root(node.value) in TORCH_ROOTS
    ]


def test_the_scan_finds_private_torch_attributes():
    source = "import torch\ntorch._foreach_mul_(x, 2)\n_dcp().loader._load(x)\ny = model._orig_mod\nself._x = 1\n"
    assert private_torch_attributes(source) == [(2, "_foreach_mul_"), (3, "_load")]


def test_no_private_attribute_of_a_torch_module_is_used():
    found = [
        f"{path}:{line} {name}" for path in SOURCES for line, name in private_torch_attributes(path.read_text("utf-8"))
    ]
    assert not found, f"private torch names used: {found}"
