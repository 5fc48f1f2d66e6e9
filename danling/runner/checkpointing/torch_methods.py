"""The checkpoint methods of [`TorchRunner`][danling.runner.TorchRunner]: each delegates to its checkpoint subsystem.

`TorchRunner` inherits them from `TorchCheckpointingMixin`, so that its own module is left with the set-up and the
loops; the API is the runner's (`runner.load_checkpoint`...).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from . import files as ckpt
from .manager import CheckpointManager
from .verification import ResumeCheck, verify_resume


class TorchCheckpointingMixin:
    r"""
    Checkpoints of a [`TorchRunner`][danling.runner.TorchRunner]: state dicts, saves in the middle of an epoch,
    loading, exporting the model and checking that a script resumes exactly.
    """

    _checkpoints: Any
    _recovery: Any
    is_main_process: bool
    epochs: int
    _checkpoint_saved: Any

    def state_dict(self, cls: Any = dict) -> Mapping:
        r"""
        Config (plain types), results, unwrapped model, optimizer, scheduler, grad scaler, EMA, the RNG states and
        the position in the epoch (`position`: world size, epoch, split and batch of a mid-epoch checkpoint, the
        training plan).

        No collective: the RNG states of every rank are there when the training loop gathered them just before
        (it does for every checkpoint it saves); otherwise only this rank's.

        Raises:
            FloatingPointError: If the training loss went NaN/inf: such weights are never checkpointed.
        """
        return cls(self._checkpoints.state_dict())

    @cached_property
    def checkpoint_manager(self) -> CheckpointManager:
        r"""
        The checkpoint manager: of `torch.distributed.checkpoint` directories (`latest.dcp/`, each rank writing
        its shards, see [`ShardedCheckpointManager`][danling.runner.checkpointing.ShardedCheckpointManager])
        when the model is sharded (`strategy="fsdp"` on several ranks), else of single files (`latest.pth`).
        """
        return self._checkpoints.build_manager()

    def checkpoint_state(self) -> Mapping:
        r"""
        What a checkpoint save writes: [`state_dict`][danling.runner.TorchRunner.state_dict], or with sharded
        checkpoints the model, optimizer and EMA as sharded state dicts (no gathering) and the other parts on rank 0
        only (where the random states of every rank are gathered).
        """
        return self._checkpoints.checkpoint_state()

    def save_position(self, split: str, batches: int, best: bool = False) -> None:
        r"""
        Save `latest.pth` in the middle of a training epoch, after `batches` micro-batches of `split` (an
        optimizer-step boundary): resuming from it continues with the next batch. Collective when distributed
        (every rank's random state, meters and metrics are gathered).

        Args:
            split: The train split running.
            batches: Micro-batches of it consumed so far.
            best: Also keep it as `best.pth` (a step evaluation, `eval_steps`, that is the best so far).
        """
        state = self._recovery.mid_epoch_state(split, batches)
        if self.is_main_process or self.checkpoint_manager.collective:
            self._checkpoints.commit(state, "latest", self.epochs, best=best, epoch_copy=False)
            self._checkpoint_saved("latest")

    def export_model(self, path: str | None = None) -> str | None:
        r"""
        Write the model's full state dict (clean names) as one `torch.save` file with a manifest, on rank 0, for
        inference without `torch.distributed`; under FSDP2 the shards are gathered to rank 0 (a collective: call
        it on every rank).

        Args:
            path: The file (default: `checkpoint_dir/model.pth`).

        Returns:
            The path written on rank 0, `None` on other ranks.
        """
        return self._checkpoints.export_model(path)

    def load_state_dict(self, state: Mapping) -> None:
        r"""
        Restore everything [`state_dict`][danling.runner.TorchRunner.state_dict] saved, including this rank's
        RNG state.
        """
        self._checkpoints.load_state_dict(state)

    def load_checkpoint(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""
        Restore a checkpoint (see [`BaseRunner.load_checkpoint`][danling.runner.BaseRunner.load_checkpoint]); a
        mid-epoch checkpoint makes [`train`][danling.runner.TorchRunner.train] continue its epoch at the next
        batch. Warns when the training plan (`epoch_end`, `step_end`, dataset lengths) differs from the saved one.
        """
        self._checkpoints.load_checkpoint(checkpoint, *args, **kwargs)

    def load_pretrained(self, checkpoint: ckpt.CheckpointLike, *args: Any, **kwargs: Any) -> None:
        r"""[`BaseRunner.load_pretrained`][danling.runner.BaseRunner.load_pretrained], sharding under `fsdp`."""
        self._checkpoints.load_pretrained(checkpoint, *args, **kwargs)

    def verify_resume(self, steps: int = 2, split: str | None = None) -> ResumeCheck:
        r"""
        Check that this training script resumes bit for bit: see
        [`verify_resume`][danling.runner.checkpointing.verification.verify_resume]. Trains this runner; call it on a
        fresh one.

        Returns:
            A [`ResumeCheck`][danling.runner.checkpointing.verification.ResumeCheck]: `check.ok`, `check.mismatches`.
        """
        return verify_resume(self, steps, split)
