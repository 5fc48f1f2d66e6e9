"""The documentation site builds in strict mode and covers every public name.

`python tests/test_docs.py` regenerates the offline inventories in `docs/_inventories/` from `external.txt`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import danling

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
INVENTORIES = DOCS / "_inventories"
PUBLIC_MODULES = (danling, danling.runner, danling.metrics, danling.optim, danling.utils)


def read_inventory_sources(source: Path = INVENTORIES / "external.txt") -> dict[str, list[str]]:
    """Entries of each inventory in `external.txt`: `@ NAME BASE_URL` opens one, `name domain:role uri` adds to it."""
    inventories: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@ "):
            current = inventories.setdefault(line.split()[1], [])
        elif current is None:
            raise ValueError(f"entry before the first `@ NAME BASE_URL` line: {line!r}")
        else:
            current.append(line.strip())
    return inventories


def render_inventory(name: str, entries: list[str]) -> bytes:
    """A Sphinx (v2) `objects.inv` holding `entries`, their uris relative to the base url given in mkdocs.yml."""
    body = []
    for entry in entries:
        identifier, role, uri = entry.split(" ")
        body.append(f"{identifier} {role} 1 {uri.replace('$', identifier)} -\n")
    header = "".join(
        f"{line}\n"
        for line in (
            "# Sphinx inventory version 2",
            f"# Project: {name}",
            "# Version: ",
            "# The remainder is compressed using zlib.",
        )
    )
    return header.encode() + zlib.compress("".join(body).encode(), 9)


def write_inventories() -> None:
    for name, entries in read_inventory_sources().items():
        (INVENTORIES / f"{name}.inv").write_bytes(render_inventory(name, entries))


def test_inventories_are_up_to_date():
    for name, entries in read_inventory_sources().items():
        path = INVENTORIES / f"{name}.inv"
        assert path.read_bytes() == render_inventory(name, entries), f"{path} is stale: run python tests/test_docs.py"
        assert f"file:docs/_inventories/{name}.inv" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_public_name_is_in_the_api_reference():
    text = "\n".join(page.read_text(encoding="utf-8") for page in (DOCS / "api").rglob("*.md"))
    missing = [
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
        for name in module.__all__
        if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text)
    ]
    assert not missing, f"not mentioned in any docs/api page: {missing}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (site / "api" / "runner" / "base_runner" / "index.html").is_file()


if __name__ == "__main__":
    write_inventories()
