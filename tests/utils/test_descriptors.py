from __future__ import annotations

import os
import pdb
from pathlib import Path

import pytest

import danling as dl
from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, debug, ensure_dir, ensure_parent_dir


class Paths:
    __test__ = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    @ensure_dir
    def outputs(self) -> str:
        self.calls.append("outputs")
        return os.path.join(self.root, "out")

    @ensure_parent_dir
    def log_file(self) -> str:
        self.calls.append("log_file")
        return os.path.join(self.root, "logs", "deep", "run.log")

    @cached_ensure_dir
    def run_dir(self) -> str:
        self.calls.append("run_dir")
        return os.path.join(self.root, "run")

    @cached_ensure_parent_dir
    def result_file(self) -> str:
        self.calls.append("result_file")
        return os.path.join(self.root, "results", "best.json")


def test_ensure_dir_is_an_attribute_that_creates_the_directory_on_every_read(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert not (tmp_path / "out").exists()
    assert paths.outputs == str(tmp_path / "out")
    assert (tmp_path / "out").is_dir()
    os.rmdir(paths.outputs)
    assert os.path.isdir(paths.outputs)
    assert paths.calls.count("outputs") == 3  # not cached: the method runs on every read
    assert dl.ensure_dir is ensure_dir
    with pytest.raises(AttributeError):
        paths.outputs = "elsewhere"


def test_ensure_dir_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    class Relative:
        @ensure_dir
        def temp(self) -> str:
            return "temp"

    assert Relative().temp == str(tmp_path / "temp")
    assert (tmp_path / "temp").is_dir()


def test_ensure_parent_dir_creates_only_the_parent(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    path = paths.log_file
    assert os.path.isdir(os.path.dirname(path))
    assert not os.path.exists(path)
    os.rmdir(os.path.dirname(path))
    assert os.path.isdir(os.path.dirname(paths.log_file))


def test_cached_variants_cache_the_path_but_recreate_the_directory(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert not (tmp_path / "run").exists()
    assert paths.run_dir == str(tmp_path / "run")
    assert (tmp_path / "run").is_dir()
    os.rmdir(tmp_path / "run")
    assert os.path.isdir(paths.run_dir)  # the cached path is re-created on the next read
    parent = os.path.dirname(paths.result_file)
    os.rmdir(parent)
    assert os.path.isdir(os.path.dirname(paths.result_file))
    assert not os.path.exists(paths.result_file)
    assert paths.calls == ["run_dir", "result_file"]
    assert Paths(tmp_path).run_dir == paths.run_dir  # the cache is per instance


def test_cached_variants_can_be_assigned_and_reset(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.run_dir = str(tmp_path / "custom")
    assert paths.run_dir == str(tmp_path / "custom")
    assert (tmp_path / "custom").is_dir()
    del paths.run_dir
    assert paths.run_dir == str(tmp_path / "run")
    assert paths.calls == ["run_dir"]


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
