"""Checkpoint policy of a runner: formats, verified commits, retention, discovery for `auto_resume`."""

from .async_writer import AsyncCheckpointWriter, AsyncSaveError, snapshot
from .discovery import checkpoint_dir_of, find_resumable, find_run_checkpoint, run_checkpoint_dirs
from .formats import CheckpointFormat, TorchFileFormat, sha256_file, zip_problem
from .manager import CheckpointManager, read_verified
from .manifest import CheckpointError, checkpoint_problem, manifest_path, read_manifest, verify_checkpoint
from .sharded import (
    ShardedCheckpointManager,
    ShardedFormat,
    export_model,
    is_sharded_checkpoint,
    load_sharded,
    read_sharded_model,
    sharded_state,
)

__all__ = [
    "CheckpointManager",
    "AsyncCheckpointWriter",
    "ShardedCheckpointManager",
    "ShardedFormat",
    "sharded_state",
    "load_sharded",
    "is_sharded_checkpoint",
    "read_sharded_model",
    "export_model",
    "AsyncSaveError",
    "snapshot",
    "CheckpointFormat",
    "TorchFileFormat",
    "CheckpointError",
    "verify_checkpoint",
    "checkpoint_problem",
    "read_verified",
    "read_manifest",
    "manifest_path",
    "sha256_file",
    "zip_problem",
    "find_resumable",
    "find_run_checkpoint",
    "checkpoint_dir_of",
    "run_checkpoint_dirs",
]
