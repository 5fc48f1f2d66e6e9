"""General utilities: file I/O, decorators, directory descriptors, base-X encodings and distributed helpers."""

from .basex import BaseX, base58, base62, base64
from .context_managers import debug
from .decorators import catch, flexible_decorator, method_cache
from .descriptors import cached_ensure_dir, cached_ensure_parent_dir, ensure_dir, ensure_parent_dir
from .distributed import get_local_rank, get_rank, get_world_size, is_distributed
from .io import is_json_serializable, load, save, to_plain

__all__ = [
    "BaseX",
    "base58",
    "base62",
    "base64",
    "debug",
    "catch",
    "flexible_decorator",
    "method_cache",
    "ensure_dir",
    "ensure_parent_dir",
    "cached_ensure_dir",
    "cached_ensure_parent_dir",
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "is_distributed",
    "save",
    "load",
    "to_plain",
    "is_json_serializable",
]
