from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import danling as dl
from danling.utils import io
from danling.utils.io import SUPPORTED_EXTENSIONS, is_json_serializable, load, save, to_plain

PLAIN = {"name": "run", "values": [1, 2.5, None], "nested": {"flag": True}}


@pytest.mark.parametrize("extension", ["json", "yaml", "yml", "pkl", "pickle", "pth", "pt"])
def test_round_trip_of_plain_data(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"data.{extension}"
    assert save(PLAIN, path) == path
    assert load(path) == PLAIN


@pytest.mark.parametrize("extension", ["pth", "pt"])
def test_round_trip_of_tensors(tmp_path: Path, extension: str) -> None:
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    path = str(tmp_path / f"state.{extension}")
    save(state, path)
    assert torch.equal(load(path)["weight"], state["weight"])
    assert torch.equal(torch.load(path, weights_only=True)["weight"], state["weight"])


def test_round_trip_npy(tmp_path: Path) -> None:
    array = np.arange(12).reshape(3, 4)
    path = str(tmp_path / "array.npy")
    save(array, path)
    np.testing.assert_array_equal(load(path), array)


def test_round_trip_npz(tmp_path: Path) -> None:
    arrays = {"a": np.arange(3), "b": np.ones((2, 2))}
    path = str(tmp_path / "arrays.npz")
    save(arrays, path)
    loaded = load(path)
    assert set(loaded) == {"a", "b"}
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    np.testing.assert_array_equal(loaded["b"], arrays["b"])


def test_npz_needs_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        save(np.arange(3), tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == []


def test_json_of_tensors_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    save({"t": torch.tensor([1.0, 2.0]), "a": np.array([3, 4]), "s": np.float32(0.5)}, path)
    assert load(path) == {"t": [1.0, 2.0], "a": [3, 4], "s": 0.5}


def test_json_writer_arguments(tmp_path: Path) -> None:
    path = tmp_path / "indented.json"
    save({"a": 1}, path, indent=4)
    assert path.read_text() == '{\n    "a": 1\n}'


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "DATA.JSON"
    save({"a": 1}, path)
    assert load(path) == {"a": 1}


@pytest.mark.parametrize("name", ["data.txt", "data", "data.csv"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    extension = os.path.splitext(name)[1].lstrip(".")
    with pytest.raises(ValueError, match="pth, pt, npy, npz, json, yaml, yml, pkl, pickle") as error:
        save({"a": 1}, tmp_path / name)
    assert repr(extension) in str(error.value)
    with pytest.raises(ValueError, match="supported extensions"):
        load(tmp_path / name)
    assert set(SUPPORTED_EXTENSIONS) == {"pth", "pt", "npy", "npz", "json", "yaml", "yml", "pkl", "pickle"}


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.json")


@pytest.mark.parametrize("extension", ["yaml", "yml"])
def test_yaml_loader_is_safe(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"evil.{extension}"
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(yaml.YAMLError):
        load(path)
    path.write_text("!!python/object:collections.OrderedDict {}\n")
    with pytest.raises(yaml.YAMLError):
        load(path)


def test_yaml_save_writes_plain_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    save({"t": (1, 2), "chanfig": dl.Config({"lr": 1}).dict()}, path)
    assert "!!python" not in path.read_text()
    assert load(path)["t"] == [1, 2]


@pytest.mark.parametrize("extension", ["json", "yaml", "pkl", "pth", "npy"])
def test_writes_leave_no_temporary_files(tmp_path: Path, extension: str) -> None:
    obj: Any = np.arange(3) if extension == "npy" else {"a": 1}
    save(obj, tmp_path / f"file.{extension}")
    save(obj, tmp_path / f"file.{extension}")
    assert os.listdir(tmp_path) == [f"file.{extension}"]


def test_failed_write_keeps_the_previous_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    save({"version": 1, "payload": list(range(100))}, path)

    def broken_dump(obj: Any, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write('{"version": 2, "payl')
        raise RuntimeError("crashed mid-write")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="crashed mid-write"):
        save({"version": 2}, path)
    monkeypatch.undo()
    assert load(path) == {"version": 1, "payload": list(range(100))}
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_torch_write_keeps_the_previous_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    save({"w": torch.zeros(2)}, path)

    def broken_save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        with open(file, "wb") as fp:
            fp.write(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save({"w": torch.ones(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load(path)["w"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["model.pth"]


def test_save_returns_the_given_path(tmp_path: Path) -> None:
    assert save([1], str(tmp_path / "x.json")) == str(tmp_path / "x.json")


def test_to_plain() -> None:
    assert to_plain({"a": (1, torch.tensor(2.5))}) == {"a": [1, 2.5]}
    assert to_plain(dl.Config({"lr": 1}))["lr"] == 1
    assert to_plain({1, 2}) in ([1, 2], [2, 1])
    marker = object()
    assert to_plain(marker) is marker


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"a": [1, 2.0, None, "x", True]}, True),
        ([], True),
        ({1, 2}, False),
        (torch.tensor(1), False),
        (object(), False),
        ({"a": object()}, False),
    ],
)
def test_is_json_serializable(obj: object, expected: bool) -> None:
    assert is_json_serializable(obj) is expected
    assert dl.is_json_serializable(obj) is expected


def test_top_level_exports() -> None:
    assert dl.save is io.save
    assert dl.load is io.load


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
@pytest.mark.parametrize("name", ["a.json", "a.yaml", "a.pth", "a.pkl", "a.npy"])
def test_saved_files_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode, name):
    previous = os.umask(umask)
    try:
        obj = np.zeros(2) if name.endswith(".npy") else {"a": 1}
        path = save(obj, str(tmp_path / name))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_flatten_joins_nested_keys_with_dots_and_keeps_sequences():
    from danling.utils.io import flatten

    nested = {"optim": {"lr": 0.1, "betas": (0.9, 0.99), "sched": {"warmup": 5}}, "seed": 1, "empty": {}}
    assert flatten(nested) == {"optim.lr": 0.1, "optim.betas": (0.9, 0.99), "optim.sched.warmup": 5, "seed": 1}
    assert flatten({"a": 1}, prefix="run.") == {"run.a": 1}


# Objects JSON and YAML cannot hold are written as their repr


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_to_serializable_writes_unrepresentable_values_as_repr_and_names_their_keys() -> None:
    import enum

    from danling.utils.io import to_serializable

    class Mode(str, enum.Enum):
        train = "train"

    fn = lambda x: x  # noqa: E731
    obj = {
        "transform": Opaque(),
        "optim": {"lr": 0.1, "betas": (0.9, fn)},
        "net": torch.nn.Linear(1, 1),
        "mode": Mode.train,
        "weights": torch.tensor([1.0, 2.0]),
        "path": Path("a/b"),
        "loss": float("nan"),
        (1, 2): "tuple key",
    }
    converted, written_as_repr = to_serializable(obj)
    assert converted["transform"] == "Opaque()"
    assert converted["optim"] == {"lr": 0.1, "betas": [0.9, repr(fn)]}
    assert converted["net"] == repr(torch.nn.Linear(1, 1))
    assert converted["mode"] == "train"
    assert type(converted["mode"]) is str
    assert converted["weights"] == [1.0, 2.0]
    assert converted["path"] == "a/b"
    assert converted["(1, 2)"] == "tuple key"
    assert written_as_repr == ["transform", "optim.betas[1]", "net", "(1, 2)"]
    assert to_serializable({"a": 1, "b": [None, True, "x"]}) == ({"a": 1, "b": [None, True, "x"]}, [])


def test_to_serializable_survives_broken_reprs_and_cycles() -> None:
    from danling.utils.io import to_serializable

    cyclic: dict = {"name": "x"}
    cyclic["self"] = cyclic
    converted, written_as_repr = to_serializable({"broken": BrokenRepr(), "cyclic": cyclic})
    assert converted["broken"].startswith("<")
    assert "BrokenRepr object at" in converted["broken"]
    assert converted["cyclic"]["name"] == "x"
    assert isinstance(converted["cyclic"]["self"], str)
    assert written_as_repr == ["broken", "cyclic.self"]


@pytest.mark.parametrize("extension", ["json", "yaml"])
def test_json_and_yaml_writes_never_fail_on_objects(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"data.{extension}"
    save({"transform": Opaque(), "fn": len, "loss": float("nan"), "best": float("inf")}, path)
    loaded = load(path)
    assert loaded["transform"] == "Opaque()"
    assert loaded["fn"] == repr(len)
    assert np.isnan(loaded["loss"])
    assert loaded["best"] == float("inf")
    if extension == "json":  # strict JSON: non-finite floats are strings in the file
        assert json.loads(path.read_text(), parse_constant=pytest.fail)["loss"] == "NaN"
    else:
        assert yaml.safe_load(path.read_text())["transform"] == "Opaque()"
