from __future__ import annotations

import os
import pdb
from pathlib import Path

import pytest

import danling as dl
from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, debug, ensure_dir, ensure_parent_dir


def test_ensure_dir_creates_and_returns_an_absolute_path(tmp_path: Path) -> None:
    @ensure_dir
    def outputs(name: str) -> str:
        return os.path.join("out", name)

    path = outputs("a")
    assert path == str(tmp_path / "out" / "a")  # relative to the working directory
    assert os.path.isdir(path)
    assert outputs("a") == path  # existing directory is fine
    assert dl.ensure_dir is ensure_dir


def test_ensure_parent_dir(tmp_path: Path) -> None:
    @ensure_parent_dir
    def log_file() -> str:
        return str(tmp_path / "logs" / "deep" / "run.log")

    path = log_file()
    assert os.path.isdir(os.path.dirname(path))
    assert not os.path.exists(path)


def test_cached_descriptors(tmp_path: Path) -> None:
    calls = []

    class Run:
        @cached_ensure_dir
        def dir(self) -> str:
            calls.append("dir")
            return str(tmp_path / "run")

        @cached_ensure_parent_dir
        def log_file(self) -> str:
            calls.append("log")
            return str(tmp_path / "logs" / "run.log")

    run = Run()
    assert not (tmp_path / "run").exists()
    assert run.dir == str(tmp_path / "run")
    assert (tmp_path / "run").is_dir()
    assert run.dir == str(tmp_path / "run")
    assert run.log_file == str(tmp_path / "logs" / "run.log")
    assert (tmp_path / "logs").is_dir()
    run.log_file
    assert calls == ["dir", "log"]
    assert Run().dir == run.dir
    assert calls == ["dir", "log", "dir"]


def test_debug_disabled_runs_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: calls.append(args))
    ran = []
    with debug(False):
        ran.append(1)
    assert ran == [1]
    with pytest.raises(ValueError, match="untouched"), debug(enable=False):
        raise ValueError("untouched")
    assert calls == []


def test_debug_enabled_starts_post_mortem_and_re_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    tracebacks = []
    monkeypatch.setattr(pdb, "post_mortem", lambda traceback=None: tracebacks.append(traceback))
    with pytest.raises(ValueError, match="broken"), debug(True):
        raise ValueError("broken")
    assert len(tracebacks) == 1
    assert tracebacks[0] is not None


def test_debug_enabled_without_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: calls.append(args))
    with debug():
        value = 1 + 1
    assert value == 2
    assert calls == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_debug_never_intercepts_interrupts(monkeypatch: pytest.MonkeyPatch, error: type[BaseException]) -> None:
    calls = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: calls.append(args))
    with pytest.raises(error), debug(True, error=BaseException):
        raise error
    assert calls == []


def test_debug_exclude(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: calls.append(args))
    with pytest.raises(KeyError), debug(True, exclude=KeyError):
        raise KeyError("k")
    assert calls == []
    assert dl.debug is debug
