"""Seeds and random number generator states of Python, numpy and torch (states in a form
`torch.load(weights_only=True)` accepts)."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from danling.utils import distributed as dist_utils

SEED_RANGE = (0, 2**32 - 1)


def draw_seed() -> int:
    r"""
    A random seed drawn on rank 0 and shared with every rank (a collective when distributed).

    Examples:
        >>> 0 <= draw_seed() < 2**31
        True
    """
    return dist_utils.broadcast_object(random.SystemRandom().randint(0, 2**31 - 1))


def seed_of(seed: int | None, config: Any) -> int:
    r"""
    The base seed of [`set_seed`][danling.runner.BaseRunner.set_seed]: `seed`, else `config.seed`, else one that
    rank 0 draws and shares with every rank (a collective in that case), stored in `config.seed`.

    Examples:
        >>> config = {"seed": 7}
        >>> seed_of(3, config), seed_of(None, config)
        (3, 7)
    """
    if seed is None:
        seed = config.get("seed")
    if seed is None:  # drawn on rank 0 and shared, so that every rank agrees
        seed = draw_seed()
        config["seed"] = seed
    return seed


def biased_seed(seed: int, bias: int | bool | None, rank: int) -> int:
    r"""
    `seed` plus its bias: `None` adds `rank` (different augmentation per process), `False` adds nothing, an integer
    adds itself.

    Raises:
        ValueError: If the result is outside `SEED_RANGE`, `[0, 2**32 - 1]`.

    Examples:
        >>> biased_seed(42, None, rank=3), biased_seed(42, 10, rank=3), biased_seed(42, False, rank=3)
        (45, 52, 42)
    """
    if bias is None:
        bias = rank
    elif bias is False:
        bias = 0
    seed = int(seed) + int(bias)
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], but got {seed}")
    return seed


def seed_python_and_numpy(seed: int) -> None:
    r"""
    Seed Python's `random` and numpy's global generator.

    Examples:
        >>> seed_python_and_numpy(0); first = random.random()
        >>> seed_python_and_numpy(0); random.random() == first
        True
    """
    random.seed(seed)
    np.random.seed(seed)


def use_deterministic_algorithms() -> None:
    r"""
    Make torch deterministic: `torch.use_deterministic_algorithms(True)`, cuDNN benchmarking off and deterministic,
    and `CUBLAS_WORKSPACE_CONFIG` set as CUDA requires (unless already set). Process-wide.

    Examples:
        ```python
        use_deterministic_algorithms()
        torch.are_deterministic_algorithms_enabled()  # True
        ```
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def get_rng_state() -> dict[str, Any]:
    r"""
    Capture the state of every random number generator this process uses.

    Returns:
        A dict of plain types and tensors (numpy's state is stored as a tensor, so the checkpoint loads with
        `weights_only=True`).

    Examples:
        >>> state = get_rng_state()
        >>> first = torch.rand(1)
        >>> set_rng_state(state)
        >>> bool(torch.rand(1) == first)
        True
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    r"""
    Restore a state captured by [`get_rng_state`][danling.runner.checkpointing.rng.get_rng_state].

    Args:
        state: The captured state; missing generators are left alone.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        numpy_state = state["numpy"]
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                numpy_state["kind"],
                keys,
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
