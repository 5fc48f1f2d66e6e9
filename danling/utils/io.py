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
from chanfig import Variable

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


# Scalars that both JSON and YAML (`yaml.safe_dump`) write as they are; exact base types, subclasses are converted.
SAFE_SCALARS = (str, bool, int, float, type(None))


def to_serializable(obj: Any) -> tuple[Any, list[str]]:
    r"""
    Convert an object into types that JSON and safe YAML both write, turning whatever else it holds into its `repr`.

    Like [`to_plain`][danling.utils.io.to_plain] (mappings, sequences, tensors, arrays and paths become plain types),
    then every value that is still no plain scalar (a transform, a lambda, a module) becomes its `repr` string, and
    subclasses of `str`/`int`/`float` (enums) become the base type. NaN and infinities stay floats: YAML writes them
    as `.nan`/`.inf`, and [`save`][danling.utils.io.save] writes them to JSON as `"NaN"`/`"Infinity"`. So writing the
    result never fails, and a file written from it loads with `yaml.safe_load`/`json.load`.

    Args:
        obj: Object to convert (usually a config or a result).

    Returns:
        The converted object, and the dotted keys whose values (or mapping keys) had to be written as `repr`
        strings (`"transform"`, `"optim.betas[1]"`; `""` for `obj` itself).

    Examples:
        >>> class Compose:
        ...     def __repr__(self):
        ...         return "Compose()"
        >>> to_serializable({"data": {"transform": Compose(), "size": (28, 28)}, "lr": 0.1})
        ({'data': {'transform': 'Compose()', 'size': [28, 28]}, 'lr': 0.1}, ['data.transform'])
    """
    written_as_repr: list[str] = []
    return _serializable(obj, "", written_as_repr, set()), written_as_repr


def _serializable(obj: Any, path: str, written_as_repr: list[str], ancestors: set[int]) -> Any:
    if type(obj) in SAFE_SCALARS:
        return obj
    if isinstance(obj, Variable):  # chanfig's wrapper of a declared value
        obj = obj.value
    plain = _plain_or_none(obj) if id(obj) not in ancestors else None  # None: a container holding itself
    if plain is None:
        written_as_repr.append(path)
        return _safe_repr(obj)
    if type(plain) in SAFE_SCALARS:
        return plain
    ancestors = ancestors | {id(obj)}
    if isinstance(plain, Mapping):
        converted = {}
        for key, value in plain.items():
            name = f"{path}.{key}" if path else str(key)
            if type(key) not in SAFE_SCALARS:
                written_as_repr.append(name)
                key = _safe_repr(key)
            converted[key] = _serializable(value, name, written_as_repr, ancestors)
        return converted
    return [_serializable(value, f"{path}[{i}]", written_as_repr, ancestors) for i, value in enumerate(plain)]


def _plain_or_none(obj: Any) -> Any:
    # The plain form of one level of `obj` (a scalar of a base type, a mapping or a sequence), or None.
    try:
        for base in (bool, int, float, str):
            if isinstance(obj, base):  # an enum, numpy.float64...: the value as its base type
                return str.__str__(obj) if base is str else base(obj)
        plain = obj if isinstance(obj, (Mapping, list, tuple, set, frozenset)) else to_plain(obj)
    except Exception:  # a conversion that fails is written as repr instead
        return None
    if type(plain) in SAFE_SCALARS or isinstance(plain, (Mapping, list, tuple, set, frozenset)):
        return plain
    return None


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception:  # a broken __repr__ must not stop a write either
        return object.__repr__(obj)


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
    # Every file `save` writes goes through here (tests record writes by patching it).
    write_atomic(file, writer)


def write_atomic(file: str, writer: Callable[[str], None], temporary: str | None = None) -> None:
    r"""
    Write `file` atomically and durably: `writer(temporary)` writes a temporary file in the same directory, which is
    fsynced and renamed over `file`, then the directory is fsynced. A crash at any instant leaves the old file or
    the new one, never a torn one; a failure removes the temporary and leaves `file` as it was.

    Args:
        file: The target.
        writer: Writes the content to the path it is given.
        temporary: Where to write first (created here, exclusively); default: a fresh hidden `.{name}.*.tmp` next
            to `file`. The new file gets the mode any new file would (0644 under umask 022).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> write_atomic(path, lambda tmp: open(tmp, "w").write("done"))
        >>> open(path).read(), os.listdir(os.path.dirname(path))
        ('done', ['x.txt'])
    """
    directory = os.path.dirname(os.path.abspath(file))
    if temporary is None:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(file)}.", suffix=".tmp", dir=directory)
    else:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        writer(temporary)
        fsync_path(temporary)
        os.replace(temporary, file)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    with suppress(OSError):  # make the rename itself durable; not every platform can open a directory
        fsync_path(directory)


def fsync_path(path: str) -> None:
    r"""
    Make the file or directory `path` durable (`os.fsync` of a descriptor opened for it).

    Examples:
        >>> import tempfile
        >>> fsync_path(tempfile.mkdtemp())
    """
    fd = os.open(path, os.O_RDONLY)
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
        kwargs.setdefault("allow_nan", False)
        obj = encode_non_finite(to_serializable(obj)[0])
        _write(path, _text_writer(lambda fp: json.dump(obj, fp, *args, **kwargs)))
    elif extension in YAML_EXTENSIONS:
        import yaml

        obj = to_serializable(obj)[0]
        _write(path, _text_writer(lambda fp: yaml.safe_dump(obj, fp, *args, **kwargs)))
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
