"""`Config`: every piece of state needed to reproduce or resume a run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any, Optional
from uuid import UUID, uuid5

import chanfig

DEFAULT_EXPERIMENT_ID = "xxxxxxxxxxxxxxxx"

# Keys that change while a run progresses or only say where/how to write things: they must not change
# the run's identity, so that resuming a run, or re-running it with another log interval, keeps its id.
VOLATILE_KEYS = frozenset(
    {
        "run_id",
        "experiment_id",
        "steps",
        "epochs",
        "iters",
        "step_begin",
        "epoch_begin",
        "results",
        "checkpoint",
        "pretrained",
        "auto_resume",
        "log",
        "log_interval",
        "save_interval",
        "tensorboard",
        "dir",
        "log_file",
        "checkpoint_dir",
        "checkpoint_dir_name",
        "project_root",
        "progress_bar",
        "debug",
    }
)


def get_git_hash(short: bool = True) -> str | None:
    r"""
    Hash of the git HEAD of the current working directory, or `None` outside a git repository.

    Args:
        short: Return `git rev-parse --short` (at least 7 characters) instead of the full hash.

    Returns:
        The hash, or `None` when git is missing, the directory is not a repository, or it has no commits.

    Examples:
        >>> get_git_hash() is None or len(get_git_hash()) >= 7
        True
    """
    command = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


class Config(chanfig.Config):
    r"""
    Configuration of a run: hyper-parameters, progress and I/O settings, saved inside every checkpoint.

    A `Config` is a [`chanfig.Config`][chanfig.Config]: keys read as attributes, nested sections appear on
    first assignment (`config.optim.lr = 1e-3`), and `config.parse()` applies command-line overrides
    (`--optim.lr 0.01`). Subclass it with annotated class attributes to declare defaults.

    Attributes: General:
        run_name: Name of this run. Defaults to `"Run"`.
        experiment_name: Name of the experiment. Defaults to `"DanLing"`.
        experiment_id: Short git hash of the working directory's HEAD, or `"xxxxxxxxxxxxxxxx"`.
        run_id: Hex of [`run_uuid`][danling.runner.Config.run_uuid], derived from the config's content.

    Attributes: Reproducibility:
        seed: Random seed; `None` leaves the random number generators alone.
        deterministic: Ask PyTorch for deterministic algorithms.

    Attributes: Progress:
        steps: Optimizer steps taken so far.
        epochs: Index of the current (or last finished) epoch.
        step_begin: First step of this run.
        epoch_begin: First epoch of this run.
        step_end: Stop after this many steps (`None` for no limit).
        epoch_end: Stop before this epoch (`None` for no limit).

    Attributes: Results:
        score_split: Split whose score selects the best result (`None` to infer: `val`, then `validate`...).
        score_name: Metric that scores a result. Defaults to `"loss"` (lower is better).
        score_mode: `"min"`, `"max"`, or `None` (default) to infer the direction from `score_name`: lower is
            better for losses and errors (`loss`, `*_loss`, `mse`, `rmse`, `mae`, `error`, `perplexity`...).

    Attributes: I/O:
        checkpoint: Checkpoint to resume from (restores the config's progress, the model and every state).
        pretrained: Checkpoint to take the model weights from (nothing else).
        project_root: Root directory of all experiments. Defaults to `"experiments"`.
        checkpoint_dir_name: Name of the checkpoint directory inside the run directory.
        log: Log to stdout and to `run.log`.
        tensorboard: Write TensorBoard event files.
        log_interval: Log every this many steps (`None` for a default).
        save_interval: Keep an `epoch-N.pth` copy every this many epochs (`None` to keep none).

    Examples:
        >>> config = Config({"optim": {"lr": 1e-3}})
        >>> config.run_name, config.score_name, config.optim.lr
        ('Run', 'loss', 0.001)
        >>> Config({"lr": 1}).run_id == Config({"lr": 1}).run_id != Config({"lr": 2}).run_id
        True
    """

    run_name: str = "Run"
    experiment_name: str = "DanLing"

    seed: Optional[int] = None
    deterministic: bool = False

    steps: int = 0
    epochs: int = 0
    step_begin: int = 0
    epoch_begin: int = 0
    step_end: Optional[int] = None
    epoch_end: Optional[int] = None

    score_split: Optional[str] = None
    score_name: str = "loss"

    checkpoint: Optional[str] = None
    pretrained: Optional[str] = None

    project_root: str = "experiments"
    checkpoint_dir_name: str = "checkpoints"
    log: bool = True
    tensorboard: bool = False
    log_interval: Optional[int] = None
    save_interval: Optional[int] = None

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)
        if self.get("experiment_id") is None:
            self["experiment_id"] = get_git_hash() or DEFAULT_EXPERIMENT_ID
        if self.get("run_id") is None:
            self.refresh_run_id()

    @classmethod
    def from_dict(cls, obj: Any) -> Any:
        r"""
        Build a config from a mapping; nested sections become plain chanfig configs, not run configs.
        """
        if isinstance(obj, Mapping):
            return cls(obj)
        return super().from_dict(obj)

    def post(self) -> None:
        r"""
        Hook that chanfig runs after [`parse`][chanfig.Config.parse]; recomputes an automatic `run_id`.

        Subclasses overriding it should call `super().post()`.
        """
        super().post()
        if self.getattr("auto_run_id", False):
            self.refresh_run_id()

    def refresh_run_id(self) -> str:
        r"""
        Recompute `run_id` from the current content (needed after changing hyper-parameters by hand).

        Returns:
            The new `run_id`.
        """
        self["run_id"] = self.run_uuid.hex
        self.setattr("auto_run_id", True)
        return self["run_id"]

    @property
    def experiment_uuid(self) -> UUID:
        r"""
        UUID of the experiment, made from `experiment_id`.
        """
        return UUID(bytes=str(self.get("experiment_id", DEFAULT_EXPERIMENT_ID)).ljust(16, "x")[:16].encode())

    @property
    def run_uuid(self) -> UUID:
        r"""
        UUID5 of the config's content, leaving out the keys in `VOLATILE_KEYS`.

        The same hyper-parameters always give the same UUID, whatever the order of the keys.
        """
        from danling.utils.io import to_plain

        content = {key: value for key, value in to_plain(self.dict()).items() if key not in VOLATILE_KEYS}
        return uuid5(self.experiment_uuid, json.dumps(content, sort_keys=True, default=repr))

    def __hash__(self) -> int:
        return int(self.run_uuid.hex, 16)
