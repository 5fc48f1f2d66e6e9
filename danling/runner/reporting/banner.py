"""The start banner of a run: where it writes, what it runs on, how big it is, what it optimises, what changed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from math import ceil
from typing import Any

from danling.optim.lr_scheduler.preview import DEFAULT_FRACTIONS, planned_lrs
from danling.utils.io import flatten, to_plain

from ..config import VOLATILE_KEYS, Config

# Keys never listed as "differs from the defaults": identity and progress, already shown on their own lines.
IDENTITY_KEYS = frozenset({"run_id", "experiment_id", "name", "run_name", "experiment_name"}) | VOLATILE_KEYS
# Keys of a rerun's config that are not hyper-parameters and so are never "changed on resume".
PROGRESS_KEYS = VOLATILE_KEYS | {"run_id"}
# Longest value shown in the banner before it is cut.
MAX_VALUE_WIDTH = 60


def config_changes(before: Mapping, after: Mapping, ignored: frozenset[str] = PROGRESS_KEYS) -> list[str]:
    r"""
    Keys whose values differ between two configs, as `key: old -> new` (new keys as `key: -> new`).

    Args:
        before: The earlier config (e.g. the checkpoint's).
        after: The later one.
        ignored: Top-level keys to leave out (progress and I/O locations).

    Examples:
        >>> config_changes({"lr": 0.1, "steps": 5}, {"lr": 0.2, "steps": 9, "ema": True, "precision": None})
        ['lr: 0.1 -> 0.2', 'ema: -> True']
    """
    old, new = flatten(to_plain(dict(before))), flatten(to_plain(dict(after)))
    changes = []
    for key, value in new.items():
        if key.split(".", 1)[0] in ignored:
            continue
        if key not in old:
            if value is not None:  # a key added since (e.g. by a newer version) at its empty default is no change
                changes.append(f"{key}: -> {_short(value)}")
        elif old[key] != value:
            changes.append(f"{key}: {_short(old[key])} -> {_short(value)}")
    return changes


def non_defaults(config: Config) -> list[str]:
    r"""
    `key: value` for every key of `config` that differs from a fresh instance of its class (identity, progress and
    I/O keys left out).

    Examples:
        >>> non_defaults(Config({"epoch_end": 3, "optim": {"lr": 0.1}}))
        ['epoch_end: 3', 'optim.lr: 0.1']
    """
    try:
        defaults = type(config)()
    except Exception:  # a config class that needs arguments: compare with the plain Config
        defaults = Config()
    old, new = flatten(to_plain(defaults.dict())), flatten(to_plain(config.dict()))
    return [
        f"{key}: {_short(value)}"
        for key, value in new.items()
        if key.split(".", 1)[0] not in IDENTITY_KEYS and (key not in old or old[key] != value)
    ]


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_VALUE_WIDTH else text[: MAX_VALUE_WIDTH - 3] + "..."


def banner_lines(runner: Any, mode: str) -> list[str]:
    r"""
    Lines of the start banner of `runner` about to `mode` (`train` or `evaluate`).

    Shows the run directory and id, device, precision, world size, accumulation and effective batch size,
    parameters (trainable / total), steps per epoch and in total, the score that selects the best result, the keys
    that differ from the defaults and, after a resume, the checkpoint and the keys that changed since it was saved.
    Facts a runner cannot tell (no model, no dataloaders yet) are left out.

    Args:
        runner: A [`BaseRunner`][danling.runner.BaseRunner].
        mode: What the runner starts.

    Returns:
        The lines, without trailing newlines.
    """
    config = runner.config
    lines = [f"{mode} {runner.name} (id {runner.id})", f"run directory: {runner.dir}"]
    device = getattr(runner, "device", None)
    precision = config.get("precision") or "fp32"
    lines.append(f"device: {device if device is not None else 'n/a'}\tprecision: {precision}")
    lines.append(f"world size: {runner.world_size}\t{_batch_line(runner)}")
    parameters = _parameters_line(runner.model)
    if parameters is not None:
        lines.append(parameters)
    if mode == "train":
        lines.append(_steps_line(runner))
        planned = _planned_lr_line(runner)
        if planned is not None:
            lines.append(planned)
    lines.append(_score_line(runner))
    resume = getattr(runner, "resume_record", None)
    if resume is not None:
        file = resume.get("file") or "a checkpoint"
        if mode == "train":
            lines.append(f"resumed from {file} at epoch {runner.epoch_begin}, step {runner.step_begin}")
        else:
            lines.append(f"evaluating {file}, saved at epoch {runner.epochs}, step {runner.steps}")
        changes = resume.get("changes") or []
        lines.append("changed since the checkpoint: " + (", ".join(changes) if changes else "nothing"))
        if resume.get("schedule") is not None:
            lines.append(resume["schedule"])
        if resume.get("data") is not None and mode == "train":  # a mid-epoch resume on another world size or batch
            lines.append(resume["data"])
    differences = non_defaults(config)
    lines.append("differs from the defaults: " + (", ".join(differences) if differences else "nothing"))
    return lines


def _batch_line(runner: Any) -> str:
    accum_steps = runner.accum_steps
    try:
        batch_size = runner.batch_size
    except (AttributeError, ValueError):
        return f"accumulation: {accum_steps}"
    effective = batch_size * runner.world_size * accum_steps
    return f"batch size: {batch_size}\taccumulation: {accum_steps}\teffective batch size: {effective}"


def _parameters_line(model: Any) -> str | None:
    if model is None or not hasattr(model, "parameters"):
        return None
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return f"parameters: {trainable:,} trainable / {total:,} total"


def _steps_line(runner: Any) -> str:
    per_epoch = "unknown"
    try:
        loaders = [runner.dataloaders[split] for split in runner.train_splits if split in runner.dataloaders]
        if loaders and all(hasattr(loader, "__len__") for loader in loaders):
            per_epoch = str(sum(ceil(len(loader) / runner.accum_steps) for loader in loaders))
    except (ValueError, TypeError):
        pass
    try:
        total = str(runner.total_steps)
    except (ValueError, TypeError):
        total = "unknown"
    return f"optimizer steps: {per_epoch} per epoch, {total} in total"


def _planned_lr_line(runner: Any) -> str | None:
    # The lr the schedule plans at 0, 25, 50, 75 and 100% of the run, so that no schedule is a surprise.
    optimizer = getattr(runner, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "param_groups", None):
        return None
    try:
        total = runner.total_steps
    except (ValueError, TypeError, AttributeError):
        return None
    scheduler = getattr(runner, "scheduler", None)
    if scheduler is None:
        lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        planned = [(fraction, round(fraction * total), lr) for fraction in DEFAULT_FRACTIONS]
    else:
        planned = planned_lrs(scheduler, total)
    if not planned:
        return None
    points = ", ".join(f"{fraction:.0%} (step {step}): {float(lr):.3g}" for fraction, step, lr in planned)
    return f"planned lr: {points}"


def _score_line(runner: Any) -> str:
    config = runner.config
    split = config.get("score_split")
    if split is None:
        try:
            splits = list(runner.evaluate_splits) or list(runner.train_splits)
        except ValueError:
            splits = []
        preferred = [name for name in ("val", "validate") if name in splits]
        split = preferred[0] if preferred else (splits[0] if splits else "inferred from the results")
    direction = "lower" if getattr(runner.best_fn, "__name__", "") == "min" else "higher"
    return f"best result: {config.get('score_name', 'loss')} on {split} ({direction} is better)"


def log_banner(runner: Any, mode: str) -> None:
    r"""
    Log the banner through the runner's logger, on the main process only (no-op without a logger).

    Args:
        runner: A [`BaseRunner`][danling.runner.BaseRunner].
        mode: `train` or `evaluate`.
    """
    if runner.logger is None or not runner.is_main_process:
        return
    for line in banner_lines(runner, mode):
        runner.log(line, logging.INFO)
