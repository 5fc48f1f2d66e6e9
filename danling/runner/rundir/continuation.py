"""Where a run that loaded a checkpoint continues from: the checkpoint's place in the run, and its run directory.

What a run records as it goes (`metrics.jsonl`, the experiment trackers) must continue a resumed run's records
without a gap or a repeat: it keeps what the run recorded up to the checkpoint and drops what came after it, which
the resumed run records again. [`Continuation`][danling.runner.rundir.continuation.Continuation] says where that
cut is and where the earlier records are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Continuation", "continuation_of"]


@dataclass(frozen=True)
class Continuation:
    r"""
    The checkpoint a run continues from, as its records see it.

    Attributes:
        steps: Optimizer steps of the checkpoint.
        epoch: Its epoch (the one it stopped in, for a mid-epoch checkpoint).
        split: The train split a mid-epoch checkpoint stopped in; `None` at an epoch boundary.
        batches: Batches of `split` consumed before the checkpoint.
        finished: Train splits of `epoch` finished before a mid-epoch checkpoint.
        source: The run directory the checkpoint was saved in (the folder above its checkpoint directory), or
            `None` when the checkpoint was not a file.

    Examples:
        >>> record = {"position": {"steps": 6, "epoch": 1, "split": "train", "batches": 1, "finished": []}}
        >>> at = continuation_of(record, "runs/a/checkpoints/latest.pth")
        >>> at.steps, at.epoch, at.split, at.batches, at.source == os.path.abspath("runs/a")
        (6, 1, 'train', 1, True)
        >>> continuation_of(None, None) is None  # a run that starts afresh
        True
    """

    steps: int
    epoch: int
    split: str | None = None
    batches: int = 0
    finished: tuple[str, ...] = ()
    source: str | None = None

    @property
    def mid_epoch(self) -> bool:
        r"""Whether the checkpoint was saved inside an epoch (the resumed run finishes that epoch)."""
        return self.split is not None


def continuation_of(resume_record: Mapping | None, checkpoint: Any) -> Continuation | None:
    r"""
    The continuation of a runner that loaded a checkpoint, from its `resume_record` (the `position` the loop noted
    when loading, see [`loaded_position`][danling.runner.loop.interruptions.Recovery.loaded_position]) and its
    `config.checkpoint`; `None` when it loaded none (a run that starts afresh).

    Args:
        resume_record: `runner.resume_record`.
        checkpoint: `runner.config.checkpoint`: the checkpoint file, or sharded directory, it loaded.
    """
    position = (resume_record or {}).get("position")
    if not isinstance(position, Mapping):
        return None
    source = None
    if isinstance(checkpoint, (str, bytes, os.PathLike)):
        source = os.path.dirname(os.path.dirname(os.path.abspath(os.fsdecode(checkpoint))))
    return Continuation(
        steps=int(position.get("steps") or 0),
        epoch=int(position.get("epoch") or 0),
        split=position.get("split"),
        batches=int(position.get("batches") or 0),
        finished=tuple(position.get("finished") or ()),
        source=source,
    )
