"""Resuming a run: the saved config against the user's, the position inside an epoch, and per-rank state."""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import distributed as dist

from danling.utils.io import to_plain

from ..config import VOLATILE_KEYS

POSITION = "position"
RANKS = "ranks"
DATA = "data"  # in `position`: the samples of the epoch's order consumed (a mid-epoch checkpoint)
LOADERS = "loaders"  # in each rank's part of `position`: the state of the loaders that keep their own
# Progress comes from the checkpoint alone; identity and paths stay with the run being built.
PROGRESS_KEYS = frozenset({"steps", "epochs", "step_begin", "epoch_begin", "checkpoint"})
KEPT_KEYS = frozenset({"run_id", "experiment_id", "auto_resume"})


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    r"""
    Dotted keys of a nested mapping.

    Examples:
        >>> flatten({"a": {"b": 1}, "c": 2})
        {'a.b': 1, 'c': 2}
    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def default_values(config_type: type) -> dict[str, Any]:
    r"""Dotted keys and values of a config built with no arguments (what "not set by the user" means)."""
    try:
        defaults = config_type()
    except Exception:  # a config class that needs arguments: fall back to the library's defaults
        from ..config import Config

        defaults = Config()
    return flatten(to_plain(defaults.dict()))


def merge_saved_config(config: Any, saved: Mapping) -> list[tuple[str, Any, Any]]:
    r"""
    Restore a checkpoint's config into `config`, letting the keys the user set win.

    A key counts as set by the user when `config` holds it with a value other than its default (command line
    or code). Progress keys come from the checkpoint (set elsewhere); identity keys and the keys saying where and
    how this launch writes (`dir`, `log`, `tensorboard`... the volatile keys) stay when present.

    Args:
        config: The run's [`Config`][danling.runner.Config] (modified in place).
        saved: The config stored in the checkpoint.

    Returns:
        `(key, checkpoint value, value kept)` for every key the user overrode.

    Examples:
        >>> from danling.runner import Config
        >>> config = Config({"lr": 0.5})
        >>> merge_saved_config(config, {"lr": 0.1, "seed": 7, "epoch_end": 4})
        [('lr', 0.1, 0.5)]
        >>> config.seed, config.epoch_end, config.lr
        (7, 4, 0.5)
    """
    defaults = default_values(type(config))
    current = flatten(to_plain(config.dict()))
    overrides = []
    for key, value in flatten(to_plain(saved)).items():
        top = key.split(".", 1)[0]
        if top in PROGRESS_KEYS or top in KEPT_KEYS:
            continue
        if key in current and top in VOLATILE_KEYS:
            continue  # where and how this launch writes: its own business
        if key in current and (key not in defaults or defaults[key] != current[key]):
            if current[key] != value:
                overrides.append((key, value, current[key]))
            continue
        try:
            config[key] = value
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return overrides


# Per-rank state


def metrics_state(metrics: Any) -> Any:
    r"""
    State of a partial epoch's metrics: their `state_dict()` (every metrics type of `danling.metrics` has one).

    Metrics without one cannot be kept: a warning names their type, since after a resume from this checkpoint the
    epoch's metrics would cover only the batches read after it.
    """
    if metrics is None:
        return None
    if not hasattr(metrics, "state_dict"):
        warnings.warn(
            f"metrics of type {type(metrics).__name__} have no state_dict(): a mid-epoch checkpoint cannot keep the "
            "epoch's partial metrics, so after resuming from it the epoch's metrics cover only the later batches",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return metrics.state_dict()


def load_metrics_state(metrics: Any, state: Any) -> None:
    r"""Restore what [`metrics_state`][danling.runner.checkpointing.restore.metrics_state] captured."""
    if metrics is None or state is None:
        return
    if hasattr(metrics, "load_state_dict"):
        metrics.load_state_dict(state)


def gather_to_main(obj: Any) -> list[Any] | None:
    r"""
    Every rank's `obj`, in rank order, on the main process (`None` on the others). Collective when distributed.

    Examples:
        >>> gather_to_main({"x": 1})
        [{'x': 1}]
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def seed_derived_stream(state: Mapping, rank: int) -> int:
    r"""
    Seed Python, numpy and torch with a stream derived from a saved rank's torch state and this `rank`.

    Used when a run resumes on more ranks than it saved: the new ranks get their own streams, not rank 0's.

    Returns:
        The seed.
    """
    data = state["torch"].numpy().tobytes() + int(rank).to_bytes(4, "little")
    seed = int.from_bytes(hashlib.sha256(data).digest()[:4], "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


@dataclass
class ResumePoint:
    r"""
    Where a mid-epoch checkpoint left a training epoch, for this rank.

    Attributes:
        epoch: The epoch.
        split: The train split that was running.
        batches: Micro-batches of `split` consumed (always at an optimizer-step boundary).
        finished: Results of the train splits already finished in this epoch.
        rng: This rank's random state at the checkpoint.
        epoch_rng: This rank's random state when the split's epoch started (replays the loader's draws).
        meters: State of the meters of the partial epoch.
        metrics: State of the metrics of the partial epoch.
        data: The samples of the epoch's global order consumed by every rank together, the epoch's length and
            its order (see [`EpochFeed`][danling.runner.loop.feed.EpochFeed]); `None` when the loader could not
            tell.
    """

    epoch: int
    split: str
    batches: int
    finished: dict = field(default_factory=dict)
    rng: Any = None
    epoch_rng: Any = None
    meters: Any = None
    metrics: Any = None
    data: Any = None


def resume_point(state: Mapping, rank: int, world_size: int = 1) -> ResumePoint | None:
    r"""
    The [`ResumePoint`][danling.runner.checkpointing.restore.ResumePoint] of `rank` (of `world_size`) in a checkpoint,
    or `None` when the checkpoint was saved at an epoch boundary. Saved on more ranks than there are now, rank `r`
    also takes the meters and metrics of the saved ranks `r + world_size`, `r + 2 * world_size`...: no rank's share
    of the partial epoch is lost.
    """
    position = state.get(POSITION) or {}
    if position.get("split") is None:
        return None
    ranks = position.get(RANKS) or [{}]
    own = ranks[rank] if rank < len(ranks) else {}
    folded = ranks[rank::world_size] if len(ranks) > world_size else [own]
    rng_states = state.get("rng") or [None]
    return ResumePoint(
        epoch=int(position["epoch"]),
        split=position["split"],
        batches=int(position["batches"]),
        finished=dict(position.get("finished") or {}),
        rng=rng_states[rank] if rank < len(rng_states) else None,
        epoch_rng=own.get("epoch_rng"),
        meters=merge_partial_states([saved.get("meters") for saved in folded]),
        metrics=merge_partial_states([saved.get("metrics") for saved in folded]),
        data=position.get(DATA),
    )


def merge_partial_states(states: list[Any]) -> Any:
    r"""
    One state of a partial epoch's meters or metrics from those of several ranks: meters add their sums and counts,
    `Metrics` concatenate their stored batches, nested states merge key by key. A single state is returned as it is
    (a meter then folds its pending updates in the same blocks as before).

    Examples:
        >>> merge_partial_states([{"loss": {"val": 1.0, "n": 2, "sum": 2.0, "count": 2}},
        ...                       {"loss": {"val": 3.0, "n": 2, "sum": 6.0, "count": 2}}])
        {'loss': {'val': 1.0, 'n': 2, 'sum': 8.0, 'count': 4}}
        >>> merge_partial_states([{"inputs": torch.ones(2), "targets": torch.zeros(2)},
        ...                       {"inputs": None, "targets": None}])["inputs"]
        tensor([1., 1.])
    """
    present = [state for state in states if state is not None]
    if len(present) <= 1:
        return present[0] if present else None
    first = present[0]
    if not isinstance(first, Mapping):
        return first
    if "inputs" in first and "targets" in first:  # `Metrics`: this rank's stored batches
        kept = [state for state in present if state.get("inputs") is not None]
        if not kept:
            return dict(first)
        return {key: torch.cat([state[key] for state in kept]) for key in ("inputs", "targets")}
    if "sum" in first and "count" in first:  # a meter: the pending block is folded into the sum
        return {
            "val": first["val"],
            "n": first.get("n", 1),
            "sum": sum(float(state["sum"]) for state in present),
            "count": sum(state["count"] for state in present),
        }
    keys = list(dict.fromkeys(key for state in present if isinstance(state, Mapping) for key in state))
    return {key: merge_partial_states([state.get(key) for state in present]) for key in keys}


def saved_loader_states(state: Mapping, rank: int) -> dict[str, Any]:
    r"""The `state_dict()` of each loader that keeps its own state, by split, as `rank` saved it in a checkpoint."""
    ranks = (state.get(POSITION) or {}).get(RANKS) or []
    own = ranks[rank] if rank < len(ranks) else {}
    return dict(own.get(LOADERS) or {})


def plan_changes(saved: Mapping | None, current: Mapping) -> list[str]:
    r"""
    Human descriptions of how the training plan differs from the one a checkpoint was saved under.

    Examples:
        >>> plan_changes({"epoch_end": 2, "world_size": 1}, {"epoch_end": 4, "world_size": 1})
        ['epoch_end changed from 2 to 4']
    """
    if not saved:
        return []
    return [
        f"{key} changed from {saved[key]} to {current[key]}"
        for key in current
        if key in saved and key != "world_size" and to_plain(saved[key]) != to_plain(current[key])
    ]


class EpochPosition:
    r"""
    Where the training loop is inside the current epoch: the split running, the batches it consumed (set only
    while a mid-epoch checkpoint is written), the random state its loader started from, the samples of the
    epoch's order its loader fed (an [`EpochFeed`][danling.runner.loop.feed.EpochFeed], or `None`), and the
    results of the train splits already finished in this epoch.
    """

    __slots__ = ("split", "batches", "epoch_rng", "feed", "finished")

    def __init__(self) -> None:
        self.split: str | None = None
        self.batches = 0
        self.epoch_rng: Any = None
        self.feed: Any = None
        self.finished: dict[str, Any] = {}
