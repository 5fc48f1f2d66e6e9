"""Keeping `best.pth` in agreement with the results a run resumes with.

A save commits `latest.pth` first and its `best.pth` copy after it, then the JSON files that describe them. A kill
between two of those commits leaves `best.pth` one best behind the results. Nothing written later fixes that by
itself (the next epoch may not be a best one), so a run that continues in its directory checks `best.pth` against
the best result of the results it restored, and repairs it from the checkpoint of that epoch when one is left.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .manager import BEST, CheckpointManager
from .manifest import checkpoint_problem, read_manifest


def best_epoch_of(manager: CheckpointManager, field: str = "epochs") -> int | None:
    r"""
    The epoch `best.pth` holds, as its manifest records it (`None` without one); its step with `field="steps"`.

    Examples:
        >>> import tempfile, torch
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> _ = manager.save({"w": torch.ones(1)}, steps=4, epochs=1, best=True, keep=0)
        >>> best_epoch_of(manager)
        1
    """
    manifest = read_manifest(manager.path(BEST)) if os.path.exists(manager.path(BEST)) else None
    if manifest is None or manifest.get(field) is None:
        return None
    return int(manifest[field])


def checkpoint_of_epoch(manager: CheckpointManager, epoch: int, field: str = "epochs") -> str | None:
    r"""
    The checkpoint saved at the end of `epoch` in `manager`'s directory that verifies: of those whose manifest
    names `epoch` (other than `best`), the one with the most steps (a mid-epoch save of `epoch` has fewer). With
    `field="steps"`, one saved at step `epoch` (the step of a record made with `eval_steps`).
    """
    found = []
    for path in manager.candidates():
        manifest = read_manifest(path) or {}
        if os.path.basename(path) == os.path.basename(manager.path(BEST)) or manifest.get(field) != epoch:
            continue
        found.append((int(manifest.get("steps") or 0), manager.priority(os.path.basename(path)), path))
    for *_, path in sorted(found, reverse=True):
        if checkpoint_problem(path, manager.format) is None:
            return path
    return None


def reconcile_best(
    manager: CheckpointManager, best_epoch: int | None, log: Callable[[str], None], field: str = "epochs"
) -> str | None:
    r"""
    Make `best.pth` hold the epoch the results name as the best, when it holds another one.

    Args:
        manager: The manager of the run's checkpoint directory.
        best_epoch: The index (epoch) of the best result of the restored results (`None`: nothing to check); its
            step for results recorded with `eval_steps`.
        log: Called with a message saying what was repaired, or what could not be.
        field: What `best_epoch` counts, as the manifests name it: `"epochs"`, or `"steps"` for records made with
            `eval_steps`.

    Returns:
        The path of the checkpoint `best.pth` was repaired from, or `None` when nothing was repaired.

    Examples:
        >>> import tempfile, torch
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> _ = manager.save({"w": torch.zeros(1)}, steps=4, epochs=0, best=True, keep=0)
        >>> _ = manager.save({"w": torch.ones(1)}, steps=8, epochs=1, best=False, keep=0)  # killed before its best
        >>> os.path.basename(reconcile_best(manager, 1, print))
        repaired best.pth: it held epoch 0, but the results name epoch 1 the best; copied latest.pth
        'latest.pth'
        >>> manager.load(manager.path("best"), weights_only=True)["w"]
        tensor([1.])
    """
    if best_epoch is None:
        return None
    held = best_epoch_of(manager, field)
    if held == best_epoch or not os.path.isdir(manager.directory):
        return None
    source = checkpoint_of_epoch(manager, best_epoch, field)
    unit = "epoch" if field == "epochs" else "step"
    what = "no best.pth" if held is None else f"it held {unit} {held}"
    if source is None:
        log(
            f"best.pth disagrees with the results ({what}, the results name {unit} {best_epoch} the best) and no "
            f"checkpoint of {unit} {best_epoch} is left to repair it from"
        )
        return None
    manager.copy_to(source, BEST)
    log(
        f"repaired best.pth: {what}, but the results name {unit} {best_epoch} the best; copied "
        f"{os.path.basename(source)}"
    )
    return source
