"""Save and load objects, choosing the format from the file extension; writes are atomic."""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, Callable

import torch

PathStr = str | os.PathLike

TORCH_EXTENSIONS = ("pth", "pt")
NUMPY_EXTENSIONS = ("npy", "npz")
JSON_EXTENSIONS = ("json",)
YAML_EXTENSIONS = ("yaml", "yml")
PICKLE_EXTENSIONS = ("pkl", "pickle")
SUPPORTED_EXTENSIONS = TORCH_EXTENSIONS + NUMPY_EXTENSIONS + JSON_EXTENSIONS + YAML_EXTENSIONS + PICKLE_EXTENSIONS


def _extension(file: PathStr) -> str:
    extension = os.path.splitext(os.fspath(file))[1].lower().lstrip(".")
    if extension not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {os.fspath(file)!r} from its extension {extension!r}; "
            f"supported extensions are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return extension


def to_plain(obj: Any) -> Any:
    r"""
    Convert an object into plain Python types (dict, list, str, int, float, bool, None) where possible.

    Mappings (including chanfig's `FlatDict`/`NestedDict`) become dicts, tuples and sets become lists,
    tensors and numpy arrays become (nested) lists or scalars.

    Args:
        obj: Object to convert.

    Returns:
        The converted object; unknown types are returned unchanged.

    Examples:
        >>> to_plain({"a": (1, torch.tensor(2.5))})
        {'a': [1, 2.5]}
    """
    if isinstance(obj, Mapping):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(value) for value in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# How NaN and infinities are spelled in JSON files (bare `NaN`/`Infinity` are not JSON), and back.
NON_FINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    r"""
    A nested mapping as `dotted.key -> value` (sequences stay values).

    Examples:
        >>> flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 1})
        {'optim.lr': 0.1, 'optim.betas': [0.9, 0.99], 'seed': 1}
    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def encode_non_finite(obj: Any) -> Any:
    r"""
    Replace NaN and infinite floats in nested dicts and lists by the strings `"NaN"`, `"Infinity"`, `"-Infinity"`,
    so the result is strict JSON.

    Examples:
        >>> encode_non_finite({"loss": float("nan"), "scores": [1.0, float("-inf")]})
        {'loss': 'NaN', 'scores': [1.0, '-Infinity']}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {key: encode_non_finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_non_finite(value) for value in obj]
    return obj


def decode_non_finite(obj: Any) -> Any:
    r"""
    Inverse of [`encode_non_finite`][danling.utils.io.encode_non_finite]: the strings become floats again.

    Examples:
        >>> decode_non_finite({"loss": "NaN", "scores": [1.0, "-Infinity"], "name": "run"})
        {'loss': nan, 'scores': [1.0, -inf], 'name': 'run'}
    """
    if isinstance(obj, str):
        return NON_FINITE_STRINGS.get(obj, obj)
    if isinstance(obj, dict):
        return {key: decode_non_finite(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [decode_non_finite(value) for value in obj]
    return obj


def _json_default(obj: Any) -> Any:
    plain = to_plain(obj)
    if plain is obj:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    return plain


def current_umask() -> int:
    r"""
    The process's file-mode creation mask, read without changing it where the platform allows.

    Examples:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fp:
        for line in fp:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)  # no other way to read it: set and restore at once
    os.umask(umask)
    return umask


def _write(file: str, writer: Callable[[str], None]) -> None:
    # Write to a temporary file in the same directory, make it durable, then atomically rename it over the
    # target: a crash at any instant leaves either the old file or the new one, never a torn file.
    # mkstemp creates the file 0600; the result gets the mode any new file would (0644 under umask 022).
    directory = os.path.dirname(os.path.abspath(file))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(file)}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        writer(temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, file)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    with suppress(OSError):  # make the rename itself durable; not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _text_writer(dump: Callable[[Any, Any], None]) -> Callable[[str], None]:
    def writer(path: str) -> None:
        with open(path, "w", encoding="utf-8") as fp:
            dump(fp)

    return writer


def save(obj: Any, file: PathStr, *args: Any, **kwargs: Any) -> PathStr:
    r"""
    Save `obj` to `file` in the format named by its extension, atomically and durably.

    Formats: `pth`/`pt` (`torch.save`), `npy` (`numpy.save`), `npz` (`numpy.savez` of a mapping), `json` (strict:
    NaN and infinities are written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, and `load` reads them back),
    `yaml`/`yml` (`yaml.safe_dump`), `pkl`/`pickle`. Extra arguments go to the underlying writer
    (e.g. `indent=4` for json).

    Args:
        obj: Object to save.
        file: Destination path.
        *args: Passed to the writer.
        **kwargs: Passed to the writer.

    Returns:
        `file`.

    Raises:
        ValueError: If the extension is not supported.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "result.json")
        >>> save({"acc": 0.9}, path) == path
        True
        >>> load(path)
        {'acc': 0.9}
    """
    extension = _extension(file)
    path = os.fspath(file)
    if extension in TORCH_EXTENSIONS:
        _write(path, lambda tmp: torch.save(obj, tmp, *args, **kwargs))
    elif extension in NUMPY_EXTENSIONS:
        _write(path, _numpy_writer(obj, extension, *args, **kwargs))
    elif extension in JSON_EXTENSIONS:
        kwargs.setdefault("default", _json_default)
        kwargs.setdefault("allow_nan", False)
        obj = encode_non_finite(to_plain(obj))
        _write(path, _text_writer(lambda fp: json.dump(obj, fp, *args, **kwargs)))
    elif extension in YAML_EXTENSIONS:
        import yaml

        _write(path, _text_writer(lambda fp: yaml.safe_dump(to_plain(obj), fp, *args, **kwargs)))
    else:
        _write(path, _binary_writer(lambda fp: pickle.dump(obj, fp, *args, **kwargs)))
    return file


def _binary_writer(dump: Callable[[Any], None]) -> Callable[[str], None]:
    def writer(path: str) -> None:
        with open(path, "wb") as fp:
            dump(fp)

    return writer


def _numpy_writer(obj: Any, extension: str, *args: Any, **kwargs: Any) -> Callable[[str], None]:
    import numpy as np

    if extension == "npz":
        if not isinstance(obj, Mapping):
            raise ValueError(f"saving to npz needs a mapping of arrays, but got {type(obj).__name__}")
        return _binary_writer(lambda fp: np.savez(fp, *args, **obj, **kwargs))
    return _binary_writer(lambda fp: np.save(fp, obj, *args, **kwargs))


def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
    r"""
    Load an object from `file` in the format named by its extension.

    `pth`/`pt` use `torch.load` (with torch's default `weights_only=True`; pass `map_location` as usual),
    `yaml`/`yml` use `yaml.safe_load` (no arbitrary Python objects), `npz` returns a dict of arrays.

    Args:
        file: Path to read.
        *args: Passed to the reader.
        **kwargs: Passed to the reader.

    Returns:
        The loaded object.

    Raises:
        ValueError: If the extension is not supported.
        FileNotFoundError: If `file` does not exist.

    Examples:
        >>> import tempfile
        >>> path = save([1, 2], os.path.join(tempfile.mkdtemp(), "list.yaml"))
        >>> load(path)
        [1, 2]
    """
    extension = _extension(file)
    if extension in TORCH_EXTENSIONS:
        return torch.load(file, *args, **kwargs)
    if extension in NUMPY_EXTENSIONS:
        import numpy as np

        if extension == "npz":
            with np.load(file, *args, **kwargs) as archive:
                return dict(archive)
        return np.load(file, *args, **kwargs)
    if extension in JSON_EXTENSIONS:
        with open(file, encoding="utf-8") as fp:
            return decode_non_finite(json.load(fp, *args, **kwargs))
    if extension in YAML_EXTENSIONS:
        import yaml

        with open(file, encoding="utf-8") as fp:
            return yaml.safe_load(fp)
    with open(file, "rb") as fp:
        return pickle.load(fp, *args, **kwargs)


def is_json_serializable(obj: Any) -> bool:
    r"""
    Whether `json.dumps` accepts `obj` as it is.

    Args:
        obj: Object to test.

    Returns:
        `True` if `obj` can be dumped to JSON without a custom encoder.

    Examples:
        >>> is_json_serializable({"a": [1, 2.0, None]})
        True
        >>> is_json_serializable({1, 2})
        False
    """
    try:
        json.dumps(obj)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
