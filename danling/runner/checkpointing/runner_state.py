"""How a runner saves and restores itself: the checkpoint subsystem a [`BaseRunner`][danling.runner.BaseRunner] holds.

The runner's public checkpoint methods (`state_dict`, `save_checkpoint`, `load_config`, `load_checkpoint`,
`load_state_dict`, `load_pretrained`, `from_checkpoint`) are thin delegates to a
[`RunnerCheckpoints`][danling.runner.checkpointing.runner_state.RunnerCheckpoints]. It calls back through those
methods of the runner, never straight into itself, so that a subclass's override is the one that runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any
from warnings import warn

from chanfig import NestedDict

from danling.utils import distributed as dist_utils
from danling.utils import io as dl_io
from danling.utils.io import to_plain, to_serializable

from ..distributed.processes import resolve_device
from ..reporting.banner import config_changes
from . import files as ckpt
from .async_writer import AsyncCheckpointWriter
from .consistency import reconcile_best
from .discovery import checkpoint_dir_of, find_run_checkpoint, is_sharded_dir, resolve_checkpoint
from .manager import CheckpointManager
from .manifest import CheckpointError, checkpoint_problem
from .restore import merge_saved_config
from .temporaries import run_directories, sweep_run_directories

# Where a run writes: never taken from a checkpoint, so that resuming or evaluating a run writes a new directory.
RUN_LOCATION_KEYS = ("dir", "log_file", "checkpoint_dir")


class RunnerCheckpoints:
    r"""
    The checkpointing of a runner: what a checkpoint holds, how a save is committed (in the background with
    `async_save`), which checkpoint `auto_resume` continues, and how a checkpoint is restored.

    A runner builds one in `__init__` (its class's `_checkpoints_type`). It keeps no runner: each method takes the
    runner it serves as its first argument and uses its public API only (calling back through the runner's public
    methods, so that a subclass's override is the one that runs), as a [`Callback`][danling.runner.Callback] does.

    Examples:
        >>> import tempfile
        >>> from danling.runner import BaseRunner
        >>> runner = BaseRunner({"log": False, "dir": tempfile.mkdtemp(), "lr": 0.1})
        >>> state = RunnerCheckpoints().state_dict(runner)
        >>> sorted(state), state["runner"]["lr"]
        (['results', 'runner'], 0.1)
    """

    def __init__(self) -> None:
        # The checkpoint of `config.checkpoint`, read at construction and loaded once the model is set.
        self.pending: Mapping | None = None
        # What resuming decided (auto_resume's choice, config keys that override the checkpoint), logged once the
        # runner's logger exists.
        self.notes: list[str] = []
        # The `{name}-{id}` directory of the checkpoint auto_resume chose, when the run's id changed since.
        self.renamed_from: str | None = None

    # Reading

    def read(
        self, runner: Any, checkpoint: ckpt.CheckpointLike, *args: Any, what: str = "checkpoint", **kwargs: Any
    ) -> Mapping:
        r"""
        [`read_checkpoint`][danling.runner.checkpointing.files.read_checkpoint] with this runner's `map_location` (see
        [`map_location`][danling.runner.checkpointing.runner_state.RunnerCheckpoints.map_location]) unless the caller
        gives one.
        """
        if not args and "map_location" not in kwargs:
            location = self.map_location(runner)
            if location is not None:
                kwargs["map_location"] = location
        return ckpt.read_checkpoint(checkpoint, *args, what=what, **kwargs)

    def map_location(self, runner: Any) -> Any:
        r"""Where tensors of a checkpoint file are read to: `None` leaves them where they were saved from."""
        return None

    # Saving

    def state_dict(self, runner: Any) -> dict[str, Any]:
        r"""The runner config (plain types), the results, the unwrapped model, the optimizer and the scheduler."""
        return {**self.host_parts(runner), **self.module_parts(runner)}

    def checkpoint_state(self, runner: Any) -> Mapping:
        r"""What a save writes: the runner's `state_dict()` (through the runner: a subclass's override is used)."""
        return runner.state_dict()

    def host_parts(self, runner: Any) -> dict[str, Any]:
        r"""
        The parts of a checkpoint written whole by the main process: the config (plain types), the results and the
        scheduler. Framework runners add theirs (grad scaler, random states, position).
        """
        # Plain types only (an object in the config is stored as its repr): the file loads with weights_only=True.
        config, results = to_serializable(runner.config.dict())[0], to_serializable(runner.results)[0]
        state: dict[str, Any] = {ckpt.RUNNER: config, ckpt.RESULTS: results}
        if runner.scheduler is not None and hasattr(runner.scheduler, "state_dict"):
            state[ckpt.SCHEDULER] = runner.scheduler.state_dict()
        return state

    def module_parts(self, runner: Any) -> dict[str, Any]:
        r"""The parts that hold tensors of the model's size: the unwrapped model and the optimizer."""
        state: dict[str, Any] = {}
        if runner.model is not None:
            state[ckpt.MODEL] = runner.unwrap(runner.model).state_dict()
        if runner.optimizer is not None and hasattr(runner.optimizer, "state_dict"):
            state[ckpt.OPTIMIZER] = runner.optimizer.state_dict()
        return state

    def save(self, runner: Any, name: str, epochs: int | None, save_best: bool) -> None:
        r"""The body of [`save_checkpoint`][danling.runner.BaseRunner.save_checkpoint]."""
        state = runner.checkpoint_state()
        if not runner.is_main_process and not runner.checkpoint_manager.collective:
            return
        epochs = runner.epochs if epochs is None else epochs
        interval = runner.config.get("save_interval")
        epoch_copy = interval is not None and interval > 0 and (epochs + 1) % interval == 0
        self.commit(runner, state, name, epochs, save_best and runner.is_best, epoch_copy)

    def commit(self, runner: Any, state: Mapping, name: str, epochs: int, best: bool, epoch_copy: bool) -> str:
        r"""
        Hand `state` to the runner's checkpoint manager as `name` (with its step, best and epoch copies and the
        retention of `keep_checkpoints`), through the background writer when there is one.

        Returns:
            The path of the checkpoint `name` (committed once a background save finishes).

        Raises:
            ValueError: If `keep_checkpoints` is not a non-negative integer.
        """
        keep = runner.config.get("keep_checkpoints")
        keep = 2 if keep is None else keep
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep_checkpoints must be a non-negative integer (default 2), but got {keep!r}")
        steps = int(state.get(ckpt.RUNNER, {}).get("steps", runner.config.get("steps", 0)))
        manager = runner.checkpoint_manager
        policy: dict[str, Any] = {
            "steps": steps,
            "epochs": epochs,
            "best": best,
            "keep": keep,
            "epoch_copy": epoch_copy,
        }

        def commit(state: Mapping) -> str:
            try:
                return manager.save(state, name, **policy)
            except OSError as error:  # a full disk: into run.log when it happens (in the thread with async_save)
                runner.log(f"rank {runner.rank}: saving checkpoint {name!r} failed: {error}", logging.ERROR)
                raise

        saver = runner.async_saver
        if saver is None:
            return commit(state)
        saver.submit(state, manager.path(name), commit)
        return manager.path(name)

    def after_commit(self, runner: Any, callback: Callable[[], None]) -> None:
        r"""The body of [`after_checkpoint`][danling.runner.BaseRunner.after_checkpoint]."""
        saver = runner.async_saver
        if saver is None:
            callback()
        else:
            saver.after_commit(callback)

    def build_manager(self, runner: Any) -> CheckpointManager:
        r"""The manager of the runner's `checkpoint_dir`."""
        return CheckpointManager(runner.checkpoint_dir)

    def build_async_saver(self, runner: Any) -> AsyncCheckpointWriter | None:
        r"""
        The background writer `async_save` asks for, else `None`.

        Raises:
            ValueError: If `async_save` is not a bool, or is on with sharded (collective) checkpoints.
        """
        enabled = runner.config.get("async_save", False)
        if not isinstance(enabled, bool):
            raise ValueError(f"async_save must be True or False, but got {enabled!r}")
        if not enabled:
            return None
        manager = runner.checkpoint_manager
        if manager.collective:
            raise ValueError(
                "async_save=True is not supported with sharded checkpoints (strategy='fsdp' on several ranks: every "
                "rank writes its shards collectively); set async_save=False"
            )
        fmt = manager.format
        return AsyncCheckpointWriter(verify=lambda path: checkpoint_problem(path, fmt))

    def dir_path(self, runner: Any) -> str:
        r"""Where the runner's `checkpoint_dir` points, without creating it."""
        return checkpoint_dir_of(runner.config, f"{runner.name}-{runner.id}", runner.timestamp)

    def remove_temporaries(self, runner: Any) -> None:
        r"""
        Remove what killed saves left in the run's checkpoint directories that no live process writes: this
        launch's and, without an explicit `dir`, the run's other launches' (main process only).
        """
        if runner.is_main_process:
            sweep_run_directories(run_directories(runner.config, f"{runner.name}-{runner.id}", runner.timestamp))

    # Resuming

    def prepare_resume(self, runner: Any) -> None:
        r"""
        At construction: find the checkpoint `auto_resume` continues (when `config.checkpoint` is unset), then read
        `config.checkpoint` and restore its config, so that the model is built with the run's settings and seed.
        """
        if runner.config.get("auto_resume") is True and runner.config.get("checkpoint") is None:
            self.discover(runner)
        if runner.config.get("checkpoint") is not None:
            path = self.resolve(runner, runner.config["checkpoint"])
            if isinstance(path, str) and is_sharded_dir(path):
                # Sharded: read its config now; the shards load once the model is built (on any world size).
                from .sharded import read_sharded_entries  # imports torch.distributed.checkpoint: only when used

                self.pending = path
                saved = read_sharded_entries(path, {ckpt.RUNNER})
                runner.load_config(saved)
                runner.config["checkpoint"] = path
            else:
                self.pending = saved = self.read(runner, path, weights_only=True)
                if ckpt.RUNNER not in saved:  # a resume needs the run's config: weights alone are `pretrained`
                    ckpt.check_is_checkpoint(saved, os.fsdecode(path) if not isinstance(path, Mapping) else "mapping")
                runner.load_config(self.pending)
            self.note_renamed_run(runner, saved.get(ckpt.RUNNER) or {})

    def resolve(self, runner: Any, checkpoint: Any) -> Any:
        r"""
        The checkpoint `config.checkpoint` stands for (see
        [`resolve_checkpoint`][danling.runner.checkpointing.discovery.resolve_checkpoint]); a mapping as it is.
        When it names a directory, the choice (and any checkpoint skipped) is noted for the log.
        """
        if not isinstance(checkpoint, (str, bytes, os.PathLike)) or not os.path.isdir(os.fsdecode(checkpoint)):
            return checkpoint
        name = runner.config.get("checkpoint_dir_name") or "checkpoints"
        path = resolve_checkpoint(checkpoint, name, warn=self.notes.append)
        if path != os.fsdecode(checkpoint):
            self.notes.append(f"checkpoint {os.fsdecode(checkpoint)!r}: resuming from {path}")
            runner.config["checkpoint"] = path
        return path

    def log_notes(self, runner: Any) -> None:
        r"""Log the notes of resuming: `auto_resume` skipping a checkpoint as a warning, the others as info."""
        for note in self.notes:
            warning = note.startswith(("auto_resume skips", "auto_resume: the run id changed"))
            runner.log(note, logging.WARNING if warning else logging.INFO)

    def resume(self, runner: Any) -> None:
        r"""The body of [`init_resume`][danling.runner.BaseRunner.init_resume]."""
        if runner.config.get("pretrained") is not None and self.pending is None:
            runner.load_pretrained(runner.config["pretrained"])
        if self.pending is not None:
            checkpoint, self.pending = self.pending, None
            if runner.model is not None:
                runner.load_checkpoint(checkpoint)  # a mapping, or the path of a sharded checkpoint
                self.reconcile(runner)

    def reconcile(self, runner: Any) -> None:
        r"""
        A run that continues in the directory of its checkpoint: make `best.pth` and the JSON files agree with the
        results it restored, whatever instant a kill of the last save landed at (main process).
        """
        path = runner.config.get("checkpoint")
        if not runner.is_main_process or path is None or not runner.results:
            return
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(self.dir_path(runner)) or not os.path.samefile(directory, self.dir_path(runner)):
            return  # a new directory: the old one is not this launch's to touch
        best, record = runner.best_index, runner.best_result or {}
        # A record of `eval_steps` names its step: best.pth is the checkpoint saved at that step.
        best, field = (int(record["step"]), "steps") if "step" in record and "epoch" in record else (best, "epochs")
        reconcile_best(runner.checkpoint_manager, best, lambda message: runner.log(message, logging.WARNING), field)
        runner.save_result()
        if best is not None and runner.best_result is not None:
            header = {"name": runner.name, "id": runner.id, "timestamp": runner.timestamp}
            dl_io.save({**header, **to_plain(runner.best_result)}, os.path.join(runner.dir, "best.json"), indent=4)

    def discover(self, runner: Any) -> None:
        r"""
        `auto_resume`: rank 0 looks for the newest valid checkpoint of this run (its experiment and run name, any
        id) and every rank adopts its answer (a collective when distributed); sets `config.checkpoint` when one is
        found, and continues in the launch directory it belongs to.

        Raises:
            CheckpointError: If checkpoints of the run exist but none verifies (each file and why).
        """
        found = None
        if runner.is_main_process:
            found = self._find_resumable(runner)
        found = dist_utils.broadcast_object(found) if runner.distributed else found
        self.notes.extend(found["notes"])
        if found["path"] is None:
            if found["problems"]:
                raise CheckpointError(
                    "auto_resume found checkpoints of this run, but none verifies:\n  "
                    + "\n  ".join(found["problems"])
                    + "\nrepair or remove them (or set auto_resume to false) to start the run afresh"
                )
            self.notes.append("auto_resume: no checkpoint of this run found; starting fresh")
            return
        self.notes.append(f"auto_resume: resuming from {found['path']}")
        runner.config["checkpoint"] = found["path"]
        if runner.config.get("dir") is None and runner.config.get("checkpoint_dir") is None:
            self.continue_in(runner, os.path.dirname(os.path.dirname(found["path"])))

    def continue_in(self, runner: Any, launch: str) -> None:
        r"""Write into `launch`, the launch directory of the checkpoint `auto_resume` chose: one run, one directory."""
        run_dir_name = os.path.basename(os.path.dirname(launch))
        if run_dir_name == f"{runner.name}-{runner.id}":
            runner.timestamp = os.path.basename(launch)
            return
        runner.config["dir"] = launch
        self.renamed_from = run_dir_name

    def note_renamed_run(self, runner: Any, saved: Mapping) -> None:
        r"""After `auto_resume` crossed run ids: note at WARNING what differs (config keys and git revision)."""
        record = runner.resume_record or {}
        if self.renamed_from is None:
            return
        changes = [change for change in record.get("changes") or [] if not change.startswith(("run_id", "dir"))]
        revision = saved.get("experiment_id")
        if revision is not None and revision != runner.config.get("experiment_id"):
            changes.append(f"git revision (experiment_id): {revision!r} -> {runner.config.get('experiment_id')!r}")
        self.notes.append(
            f"auto_resume: the run id changed ({self.renamed_from} -> {runner.name}-{runner.id}); resuming "
            f"{record.get('file')} in its own directory {runner.config['dir']}; changed since the checkpoint: "
            + (", ".join(changes) if changes else "nothing but the id")
        )

    def _find_resumable(self, runner: Any) -> dict[str, Any]:
        notes: list[str] = []
        problems: list[str] = []
        path = find_run_checkpoint(runner.config, runner.name, warn=notes.append, problems=problems)
        for note in notes:
            warn(note, RuntimeWarning, stacklevel=5)  # to the caller of the runner's `__init__`
        return {"path": path, "notes": notes, "problems": problems}

    # Loading

    def load_config(
        self, runner: Any, checkpoint: ckpt.CheckpointLike, overwrite: bool, *args: Any, **kwargs: Any
    ) -> None:
        r"""The body of [`load_config`][danling.runner.BaseRunner.load_config]."""
        loaded = self.read(runner, checkpoint, *args, **kwargs)
        config = dict(loaded.get(ckpt.RUNNER, loaded))
        config.pop("checkpoint", None)
        for key in RUN_LOCATION_KEYS:
            config.pop(key, None)
        file = os.fsdecode(checkpoint) if not isinstance(checkpoint, Mapping) else runner.config.get("checkpoint")
        runner.resume_record = {"file": file, "changes": config_changes(config, runner.config)}
        if overwrite:
            runner.config.merge(config, overwrite=True)
        else:
            self._keep_user_overrides(runner, config)
        if runner.config.getattr("auto_run_id", False):
            runner.config.refresh_run_id()
        runner.steps = runner.step_begin = int(config.get("steps", 0))
        runner.epochs = int(config.get("epochs", 0))
        runner.epoch_begin = runner.epochs + 1

    def _keep_user_overrides(self, runner: Any, config: Mapping) -> None:
        # Take the saved values of keys left at their default; log each key the user set that wins over them.
        for key, saved, kept in merge_saved_config(runner.config, config):
            note = f"config.{key} overrides the checkpoint: it was {saved!r} there, now {kept!r}"
            if note not in self.notes:
                self.notes.append(note)
                runner.log(note)

    def load_checkpoint(self, runner: Any, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""The body of [`load_checkpoint`][danling.runner.BaseRunner.load_checkpoint]."""
        if runner.model is None:
            raise ValueError("cannot load a checkpoint before the model is set: assign self.model first")
        checkpoint = self.resolve(runner, checkpoint)
        loaded = self.read(runner, checkpoint, *args, **kwargs)
        if not isinstance(checkpoint, Mapping):
            model_keys = runner.unwrap(runner.model).state_dict().keys()
            ckpt.check_is_checkpoint(loaded, os.fsdecode(checkpoint), model_keys)
        runner.load_state_dict(loaded)
        if ckpt.RUNNER in loaded:
            runner.load_config(loaded)
        if not isinstance(checkpoint, Mapping):
            runner.config["checkpoint"] = os.fsdecode(checkpoint)

    def load_state_dict(self, runner: Any, state: Mapping) -> None:
        r"""The body of [`load_state_dict`][danling.runner.BaseRunner.load_state_dict]."""
        runner.unwrap(runner.model).load_state_dict(ckpt.extract_model_state(state))
        self.load_part(state, ckpt.OPTIMIZER, runner.optimizer)
        self.restore_host_parts(runner, state)

    def restore_host_parts(self, runner: Any, state: Mapping) -> None:
        r"""
        Restore what [`host_parts`][danling.runner.checkpointing.runner_state.RunnerCheckpoints.host_parts] saved.
        """
        self.load_scheduler(runner, state)
        self.load_results(runner, state)

    def load_part(self, state: Mapping, key: str, part: Any) -> None:
        r"""Load `state[key]` into `part` when both exist; warn when the runner has `part` but `state` lacks it."""
        if part is None:
            return
        if key in state:
            part.load_state_dict(state[key])
        else:
            # stacklevel: past this object and the runner's delegates, to the caller of `load_checkpoint`
            warn(f"{key} state is not in the checkpoint; {key} starts fresh", RuntimeWarning, stacklevel=6)

    def load_scheduler(self, runner: Any, state: Mapping) -> None:
        r"""Restore the scheduler's state (framework runners may continue a schedule rebuilt for a new plan)."""
        self.load_part(state, ckpt.SCHEDULER, runner.scheduler)

    def load_results(self, runner: Any, state: Mapping) -> None:
        r"""Restore the runner's results from `state`, when it has them."""
        if ckpt.RESULTS in state:
            results = state[ckpt.RESULTS].items()
            runner.results = NestedDict({index: NestedDict(result) for index, result in results})

    def load_pretrained(self, runner: Any, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""The body of [`load_pretrained`][danling.runner.BaseRunner.load_pretrained]."""
        if runner.model is None:
            raise ValueError("cannot load pretrained weights before the model is set: assign self.model first")
        loaded = self.read(runner, checkpoint, *args, what="pretrained", **kwargs)
        runner.unwrap(runner.model).load_state_dict(ckpt.extract_model_state(loaded))


def runner_from_checkpoint(
    cls: type, checkpoint: ckpt.CheckpointLike, *args: Any, overrides: Mapping | None = None, **kwargs: Any
) -> Any:
    r"""
    The body of [`from_checkpoint`][danling.runner.BaseRunner.from_checkpoint]: build `cls` from the config stored
    in `checkpoint` (without its run locations and `auto_resume`: the checkpoint is named, not searched for), with
    `overrides` applied, and load the checkpoint into it.

    Raises:
        ValueError: If the checkpoint has no runner config.
    """
    if not args and "map_location" not in kwargs:  # before the runner exists: the device it will choose by default
        kwargs["map_location"] = ckpt.restore_location(resolve_device(None, dist_utils.get_local_rank()))
    loaded = ckpt.read_checkpoint(checkpoint, *args, **kwargs)
    if ckpt.RUNNER not in loaded:
        raise ValueError(f"checkpoint has no {ckpt.RUNNER!r} config (keys: {list(loaded.keys())})")
    config = dict(loaded[ckpt.RUNNER])
    for key in ("checkpoint", "auto_resume", *RUN_LOCATION_KEYS):
        config.pop(key, None)
    runner = cls(merge_overrides(config, overrides))
    runner.load_checkpoint(loaded)
    if not isinstance(checkpoint, Mapping):
        runner.resume_record = {**(runner.resume_record or {}), "file": os.fsdecode(checkpoint)}
    return runner


def merge_overrides(config: dict[str, Any], overrides: Mapping | None) -> dict[str, Any]:
    r"""
    `config` with `overrides` merged in (nested mappings key by key).

    Examples:
        >>> merge_overrides({"log": True, "optim": {"lr": 0.1, "type": "sgd"}}, {"log": False, "optim": {"lr": 1}})
        {'log': False, 'optim': {'lr': 1, 'type': 'sgd'}}
    """
    if not overrides:
        return config
    merged = dict(config)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overrides(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
