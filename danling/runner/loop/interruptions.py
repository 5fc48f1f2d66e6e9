"""`Recovery`: what a training loop needs to survive interruptions, held by `TorchRunner` (composition).

It knows where the loop is inside an epoch, gathers every rank's state before a checkpoint, continues a resumed
epoch after the samples it had consumed, turns preemption signals into a save-and-stop at a step boundary, and
checks a loaded checkpoint against the current world size and plan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable
from warnings import warn

from chanfig import NestedDict

from danling.utils.io import to_plain, to_serializable

from ..checkpointing.restore import (
    DATA,
    LOADERS,
    POSITION,
    RANKS,
    EpochPosition,
    ResumePoint,
    gather_to_main,
    load_metrics_state,
    metrics_state,
    plan_changes,
    resume_point,
    saved_loader_states,
    seed_derived_stream,
)
from ..checkpointing.rng import get_rng_state, set_rng_state
from ..distributed.consensus import FailureConsensus, RankFailedError, cpu_channel
from ..distributed.hangs import RankHungError
from ..distributed.preemption import DEFAULT_SIGNALS, Preempted, PreemptionHandler
from ..distributed.processes import process_group_timeout
from .evaluation_schedule import BoundaryHook
from .feed import begin_feed, loader_states, resume_feed, resume_note, resume_refusal
from .progress import infer_batch_size

DEFAULT_CHECK_STEPS = 16  # `preemption_check_steps`: optimizer steps between two agreements of the ranks


class Recovery:
    r"""
    Interruption handling of one [`TorchRunner`][danling.runner.TorchRunner]: position, resume, preemption.

    It keeps no runner: the methods that read the run's config, ranks, meters or loop state take the runner as
    their first argument and use its public API only, as a [`Callback`][danling.runner.Callback] does.

    Args:
        failures: Where rank-local failures are kept until the ranks agree on them (shared with the callbacks).

    Examples:
        >>> recovery = Recovery()
        >>> recovery.position.split is None, recovery.channel is None
        (True, True)
    """

    def __init__(self, failures: FailureConsensus | None = None) -> None:
        self.position = EpochPosition()
        self.collected: list[dict[str, Any]] | None = None
        self.collected_at: tuple | None = None
        self.resume: ResumePoint | None = None
        self.saved_plan: Mapping | None = None
        self.saved_world_size: int | None = None
        self.loader_states: dict[str, Any] = {}  # this rank's saved states of stateful loaders, by split
        self.preemption: PreemptionHandler | None = None
        self.failures = FailureConsensus() if failures is None else failures
        self.channel: Any = None  # the CPU process group the ranks agree over (`None`: one process)
        self.saved_step: int | None = None  # the step of the latest mid-epoch save

    # Around the loop

    def catch_preemption(self, config: Mapping, distributed: bool) -> PreemptionHandler:
        r"""
        A handler of `config.preemption_signals`, installed for the duration of a `with` block; distributed, it also
        opens the CPU channel the ranks agree over (collective: call it on every rank).
        """
        signals = config.get("preemption_signals", DEFAULT_SIGNALS)
        grace = config.get("dist_timeout") if distributed else None
        channel = self.open_channel(config.get("dist_timeout")) if distributed else None
        self.preemption = PreemptionHandler(signals, "cpu", grace, channel)
        return self.preemption

    def open_channel(self, timeout: Any) -> Any:
        r"""
        The CPU process group every agreement runs over (see
        [`cpu_channel`][danling.runner.distributed.consensus.cpu_channel]), made the first time with `timeout`
        (`dist_timeout`, seconds). Collective the first time: call it on every rank of a distributed run.
        """
        if self.channel is None:
            self.channel = cpu_channel(process_group_timeout(timeout))
        return self.channel

    def agree_failures(self, signum: int = 0) -> int:
        r"""
        [`FailureConsensus.agree`][danling.runner.distributed.consensus.FailureConsensus.agree] over the CPU
        channel once [`catch_preemption`][danling.runner.loop.interruptions.Recovery.catch_preemption] opened it
        (distributed), else in this process.
        """
        if self.channel is None:
            return self.failures.agree(signum)
        return self.failures.agree(signum, "cpu", self.channel)

    @contextmanager
    def explain_timeouts(self, runner: Any) -> Iterator[None]:
        r"""Log a collective that timed out (`dist_timeout`) as what it means: another rank hung or died."""
        try:
            yield
        except (RankFailedError, RankHungError) as error:  # they name the rank(s) already
            runner.log(f"rank {runner.rank}: {error} (at step {runner.steps})", logging.ERROR)
            raise
        except RuntimeError as error:
            if runner.distributed and "timed out" in str(error).lower():
                runner.log(
                    f"rank {runner.rank}: a collective timed out after {runner.config.get('dist_timeout')} s "
                    f"(dist_timeout): another rank is hung or dead; stopping at step {runner.steps}",
                    logging.ERROR,
                )
            raise

    def train_splits(
        self, epoch: int, splits: list[str], train_epoch: Callable[[str], NestedDict], done: Callable[[], bool]
    ) -> NestedDict:
        r"""
        Train `splits` for `epoch` (until `done()`); splits a mid-epoch checkpoint had finished keep their results.
        A split cut short by `step_end` marks the result `partial`.
        """
        resume = self.resume if self.resume is not None and self.resume.epoch == epoch else None
        self.resume = resume
        self.position.split, self.position.batches = None, 0  # the cut of an earlier epoch, saved with it
        self.position.finished = dict(resume.finished) if resume is not None else {}
        result = NestedDict()
        for split in splits:
            if split in self.position.finished:
                result[split] = NestedDict(self.position.finished[split])
                continue
            if done():
                break
            result[split] = train_epoch(split)
            if result[split].get("partial"):  # resumed from its cut, not finished
                result["partial"] = True
                continue
            self.position.finished[split] = to_serializable(result[split])[0]
        self.resume = None
        return result

    def end_of_epoch(self, runner: Any) -> None:
        r"""
        Gather every rank's state for the epoch's checkpoint (check every rank's losses first: a checkpoint never
        holds non-finite weights); after a [`cut`][danling.runner.loop.interruptions.Recovery.cut], the states
        gathered there. Collective when distributed.
        """
        if self.position.split is None:
            self.collected = gather_to_main(self.rank_state(runner, mid_epoch=False))
            self.collected_at = self.moment(runner)

    def cut(self, runner: Any, split: str, batches: int) -> None:
        r"""
        The epoch stops after `batches` micro-batches of the train split `split` (`step_end`): gather every rank's
        mid-epoch state now, before the epoch's end and evaluation move its random state, so that the epoch's
        checkpoint resumes at the next batch, as a `save_steps` checkpoint does. Collective when distributed.
        """
        self.position.split, self.position.batches = split, batches
        self.collected = gather_to_main(self.rank_state(runner, mid_epoch=True))
        self.collected_at = self.moment(runner)

    def uncut(self) -> None:
        r"""Forget the [`cut`][danling.runner.loop.interruptions.Recovery.cut]: the epoch had no batch left."""
        self.position.split, self.position.batches = None, 0

    @property
    def cut_pending(self) -> bool:
        r"""Whether the last epoch stopped at a cut its checkpoint resumes from (see `cut`)."""
        return self.position.split is not None

    def contain(self) -> AbstractContextManager:
        r"""
        Around rank-local work whose failure must stop every rank (the epoch's checkpoint and result files, written
        by rank 0): a failure is kept until the next
        [`stop_if_preempted`][danling.runner.loop.interruptions.Recovery.stop_if_preempted] or step boundary, where
        every
        rank agrees on it and raises [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] naming
        the
        failing rank and its error.
        """
        return self.failures.contain()

    def stop_if_preempted(self, runner: Any) -> None:
        r"""
        After the epoch's checkpoint: raise a failure of any rank (on every rank), then stop when any rank was
        signalled. Collective when distributed (one all-reduce).
        """
        if self.agree_to_stop():
            self.exit_preempted(runner)

    def agree_to_stop(self) -> bool:
        r"""
        Whether any rank was signalled; when any rank kept a failure, every rank raises
        [`RankFailedError`][danling.runner.distributed.consensus.RankFailedError] instead. Collective when distributed
        (the
        signal and the failures share one all-reduce of a CPU tensor over a `gloo` group); a single process reads
        two attributes.
        """
        handler = self.preemption
        if handler is None or not handler.active:
            self.agree_failures()
            return False
        return handler.should_stop(self.failures)

    # Inside an epoch

    def enter_epoch(self, runner: Any, split: str, loader: Any) -> tuple[Iterable, int]:
        r"""
        Start `split`'s epoch: note the random state its loader starts from; when resuming into it, continue the
        loader after the samples the checkpoint had consumed (see
        [`resume_feed`][danling.runner.loop.feed.resume_feed]) and restore meters, metrics and random state (the
        caller moves the accumulation window to the batch returned).

        Returns:
            The batches to iterate and the index of the first one.
        """
        resume = self.resume if self.resume is not None and self.resume.split == split else None
        state, world_size = self.loader_states.pop(split, None), runner.world_size
        if resume is None:
            self.position.epoch_rng = get_rng_state()
            batches, self.position.feed = begin_feed(loader, world_size, state)
            return batches, 0
        self.resume = None
        self.position.epoch_rng = resume.epoch_rng
        if resume.epoch_rng is not None:
            set_rng_state(resume.epoch_rng)
        saved_world = self.saved_world_size or world_size
        iterator, start, self.position.feed = resume_feed(
            loader, split, resume.batches, resume.data, state, world_size, saved_world
        )
        if resume.meters is not None:
            runner.meters.load_state_dict(resume.meters)
        load_metrics_state(runner.current_metrics, resume.metrics)
        if resume.rng is not None:
            set_rng_state(resume.rng)
        runner.log(f"resuming epoch {runner.epochs} of {split} at batch {start}")
        return iterator, start

    def boundary_hook(self, runner: Any) -> BoundaryHook | None:
        r"""
        What to do at each optimizer-step boundary (`save_steps`, preemption, the failure of a background save),
        or `None` when nothing is needed: called as `hook(runner, split, batches, length)`. Distributed, the ranks
        agree on signals and failures every `preemption_check_steps` optimizer steps only (and at epoch ends), so a
        signal stops every rank at the next multiple of it: up to that many steps after the signal.

        Raises:
            ValueError: If `save_steps` is not a positive integer or `None`, or `preemption_check_steps` is not a
                positive integer.
        """
        save_steps = runner.config.get("save_steps")
        invalid = isinstance(save_steps, bool) or not isinstance(save_steps, int) or save_steps < 1
        if save_steps is not None and invalid:
            raise ValueError(f"save_steps must be a positive integer (None: no mid-epoch saves), got {save_steps!r}")
        every = check_steps(runner.config.get("preemption_check_steps", DEFAULT_CHECK_STEPS))
        preemption = self.preemption if self.preemption is not None and self.preemption.active else None
        saver = runner.async_saver
        if save_steps is None and preemption is None and saver is None:
            return None
        if save_steps is None and saver is None and not runner.distributed:
            return self._signal_hook(preemption)  # the default of one process: one attribute read per step
        if runner.distributed and (preemption is not None or saver is not None):
            self.open_channel(runner.config.get("dist_timeout"))  # opened by `catch_preemption` inside `train`
        return self._boundary_hook(runner.distributed, save_steps, preemption, saver, every)

    def _signal_hook(self, preemption: PreemptionHandler) -> BoundaryHook:
        # One process that only catches signals: nothing to agree on, so the signal handler's own record is read.
        def at_boundary(runner: Any, split: str, batches: int, length: int | None) -> None:
            if preemption.received is not None and preemption.should_stop():
                self.save_position_agreed(runner, split, batches, wait=True)
                self.exit_preempted(runner)

        return at_boundary

    def _boundary_hook(
        self, distributed: bool, save_steps: int | None, preemption: PreemptionHandler | None, saver: Any, every: int
    ) -> BoundaryHook:
        # Distributed, a background save failing on rank 0 must reach every rank: agree every `every` steps (the
        # preemption all-reduce carries it when signals are caught; else a background save adds that one). The
        # steps are in lockstep, so every rank reaches the same checks. One process asks the handler every step.
        if distributed and (preemption is not None or saver is not None):
            should_stop: Callable[[], bool] | None = self.agree_to_stop
        else:  # one process: a failure is raised where it happens, nothing to agree on
            should_stop, every = None if preemption is None else preemption.should_stop, 1
        failures = self.failures

        def at_boundary(runner: Any, split: str, batches: int, length: int | None) -> None:
            if saver is not None:
                if distributed:
                    with failures.contain():
                        saver.check()
                else:
                    saver.check()  # a background save that failed stops the run here, naming its file
            if preemption is not None and preemption.received is not None:
                preemption.acknowledged = True  # not stuck: the grace period ends; the next check stops the run
            stop = should_stop is not None and runner.steps % every == 0 and should_stop()
            due = save_steps is not None and runner.steps % save_steps == 0 and (length is None or batches < length)
            if (stop or due) and self.saved_step != runner.steps:  # a step evaluation may have saved this step
                self.save_position_agreed(runner, split, batches, wait=stop)
            elif stop and saver is not None:
                saver.wait()
            if stop:
                self.exit_preempted(runner)

        return at_boundary

    def save_position_agreed(
        self, runner: Any, split: str, batches: int, wait: bool = False, best: bool = False
    ) -> None:
        r"""
        Save the mid-epoch checkpoint, then agree on every rank that it was written before any rank goes on
        (`RankFailedError` on every rank when rank 0's write failed). Collective when distributed.

        Args:
            split: The train split running.
            batches: Micro-batches of it consumed so far.
            wait: Also wait for a background save (`async_save`) to commit: before a preemption exit.
            best: Also keep it as `best.pth` (a step evaluation that is the best so far).
        """
        self.saved_step = runner.steps
        with self.failures.contain():
            if best:
                runner.save_position(split, batches, best=True)
            else:  # an override of `save_position` written before `best` existed still works
                runner.save_position(split, batches)
            if wait and runner.async_saver is not None:
                runner.async_saver.wait()
        self.agree_failures()

    def mid_epoch_state(self, runner: Any, split: str, batches: int) -> Mapping:
        r"""
        The checkpoint after `batches` micro-batches of `split` (`runner.checkpoint_state()` with every rank's
        position). Collective when distributed.
        """
        self.position.split, self.position.batches = split, batches
        try:
            self.collected = gather_to_main(self.rank_state(runner, mid_epoch=True))
            self.collected_at = self.moment(runner)
            return runner.checkpoint_state()
        finally:
            self.position.split, self.position.batches = None, 0

    def exit_preempted(self, runner: Any) -> None:
        r"""Log why the run stops, then raise [`Preempted`][danling.runner.distributed.preemption.Preempted]."""
        handler = self.preemption
        signum = handler.received if handler is not None and handler.received is not None else 15
        name = handler.signal_name if handler is not None else "a signal"
        latest = runner.checkpoint_manager.path("latest")  # latest.pth, or latest.dcp when sharded
        runner.log(
            f"preempted by {name}: stopped at step {runner.steps} of epoch {runner.epochs}, saved {latest}; "
            f"exiting with status {128 + signum}"
        )
        if runner.writer is not None:
            runner.writer.flush()
        raise Preempted(signum)

    # Checkpoint contents

    def rank_state(self, runner: Any, mid_epoch: bool) -> dict[str, Any]:
        r"""
        This rank's part of a checkpoint: its random state, the state of the loaders that keep their own, and in
        mid-epoch the random state its loader started from, its meters and metrics.
        """
        state: dict[str, Any] = {"rng": get_rng_state()}
        loaders = loader_states(runner.dataloaders)
        if loaders:
            state[LOADERS] = loaders
        if mid_epoch:
            state["epoch_rng"] = self.position.epoch_rng
            state["meters"] = runner.meters.state_dict()
            state["metrics"] = metrics_state(runner.current_metrics)
        return state

    @staticmethod
    def plan(runner: Any) -> dict[str, Any]:
        r"""
        The training plan of `runner`: `epoch_end`, `step_end`, world size, the length of each train dataset,
        `total_steps` and the global batch (`batch_size x world_size x accum_steps`); `None` for what it cannot tell.
        """
        lengths, train_splits = {}, runner.train_splits if runner.datasets else []
        for split in train_splits:
            dataset = runner.datasets.get(split)
            if dataset is not None and hasattr(dataset, "__len__"):
                lengths[split] = len(dataset)
        plan = {"epoch_end": runner.epoch_end, "step_end": runner.step_end, "world_size": runner.world_size}
        plan["train_lengths"] = lengths
        try:
            plan["total_steps"] = runner.total_steps
        except (ValueError, TypeError, AttributeError):
            plan["total_steps"] = None
        try:  # the train loaders' batch, whichever split runs now (an evaluation's may differ)
            batch_size = infer_batch_size(runner.config, runner.dataloaders, train_splits)
            plan["global_batch"] = batch_size * runner.world_size * runner.accum_steps
        except (ValueError, TypeError, AttributeError):
            plan["global_batch"] = None
        return plan

    def moment(self, runner: Any) -> tuple:
        r"""Where the run is: steps, epoch, and the split and batch of a mid-epoch save."""
        return (runner.steps, runner.epochs, self.position.split, self.position.batches)

    def add_to(self, runner: Any, state: dict[str, Any]) -> None:
        r"""Put the `rng` of every rank gathered (else this rank's) and the `position` into a checkpoint."""
        position = self.position
        # Every rank's state when it was gathered at this very moment (no side effect: two calls agree).
        ranks = self.collected if self.collected_at == self.moment(runner) else None
        if ranks is None:
            ranks = [self.rank_state(runner, mid_epoch=position.split is not None)]
        state["rng"] = [rank["rng"] for rank in ranks]
        saved = {"world_size": runner.world_size, "epoch": runner.epochs, "split": position.split}
        saved.update(batches=position.batches, plan=self.plan(runner))
        if position.split is not None or any(LOADERS in rank for rank in ranks):
            saved[RANKS] = [{key: value for key, value in rank.items() if key != "rng"} for rank in ranks]
        saved["run_batches"] = dict(runner.telemetry.run_batches)  # where the log steps fall
        if position.split is not None:
            saved["finished"] = to_plain(position.finished)
            saved[DATA] = position.feed.record(position.batches) if position.feed is not None else None
        state[POSITION] = saved

    def restore(self, runner: Any, state: Mapping) -> None:
        r"""Take this rank's random state, resume point and loader states from a checkpoint."""
        position = state.get(POSITION) or {}
        rng_states = state.get("rng") or []
        self.saved_world_size = int(position.get("world_size", len(rng_states) or 1))
        self.resume = resume_point(state, runner.rank, runner.world_size)
        # Per-rank loader states mean nothing on other ranks: at an epoch boundary they are left out then.
        same_world = self.saved_world_size == runner.world_size
        self.loader_states = saved_loader_states(state, runner.rank) if same_world or self.resume else {}
        runner.telemetry.run_batches = dict(position.get("run_batches") or {})
        if runner.rank < len(rng_states):
            set_rng_state(rng_states[runner.rank])
        elif rng_states:
            seed_derived_stream(rng_states[0], runner.rank)
        self.saved_plan = position.get("plan")

    def check_world_size(self, runner: Any) -> None:
        r"""
        When training resumes a checkpoint saved on another world size: warn, or stop for a mid-epoch checkpoint whose
        loader cannot continue the epoch on it (see [`resume_refusal`][danling.runner.loop.feed.resume_refusal]).
        Evaluating or inferring from such a checkpoint is not resuming: it says nothing.

        Raises:
            ValueError: If a mid-epoch checkpoint cannot continue its epoch on this world size.
        """
        saved_world, resume = self.saved_world_size, self.resume
        if saved_world is None or saved_world == runner.world_size:
            return
        loader = runner.dataloaders.get(resume.split) if resume is not None else None
        if loader is not None:  # a loader built later is checked when its epoch starts
            state = self.loader_states.get(resume.split)
            problem = resume_refusal(loader, resume.data, state, saved_world, runner.world_size)
            if problem is not None:
                raise ValueError(
                    f"the checkpoint was saved in the middle of epoch {resume.epoch} with world_size {saved_world}, "
                    f"but this run has world_size {runner.world_size}: {problem}; resume on the same world size or "
                    "from an epoch-boundary checkpoint"
                )
        message = f"resuming a checkpoint saved with world_size {saved_world} on world_size {runner.world_size}"
        warn(message, RuntimeWarning, stacklevel=5)
        runner.log(message, logging.WARNING)

    def loaded_position(self, runner: Any) -> dict[str, Any]:
        r"""
        Where the checkpoint just loaded stands, as `runner.resume_record["position"]` holds it for what continues
        the run's records (`metrics.jsonl`, the trackers): `steps`, `epoch`, and for a mid-epoch checkpoint the
        train `split` it stopped in, the `batches` of it consumed and the train splits of the epoch `finished`
        before it (`split` is `None` at an epoch boundary).
        """
        resume = self.resume
        position = {"steps": runner.steps, "epoch": runner.epochs, "split": None, "batches": 0, "finished": []}
        if resume is not None:
            position.update(split=resume.split, batches=resume.batches, finished=list(resume.finished))
        return position

    def after_load(self, runner: Any, replanned: Any = None) -> None:
        r"""
        Continue a mid-epoch checkpoint's epoch (noting where it stands in `runner.resume_record["position"]`, see
        [`loaded_position`][danling.runner.loop.interruptions.Recovery.loaded_position]), and say how the plan
        differs from the saved one: how the schedule was rebuilt for it (`replanned`, a
        [`Replan`][danling.runner.checkpointing.replan.Replan]), else that it was kept.
        """
        resume = self.resume
        if resume is not None:
            runner.epoch_begin = resume.epoch
            note = resume_note(resume.split, resume.epoch, resume.data, self.saved_plan, self.plan(runner))
            if note is not None:  # another world size or global batch: the start banner says so
                runner.resume_record = {**(runner.resume_record or {}), DATA: note}
        runner.resume_record = {**(runner.resume_record or {}), "position": self.loaded_position(runner)}
        changes = plan_changes(self.saved_plan, self.plan(runner))
        if replanned is not None:
            message = replanned.describe() + (f" ({'; '.join(changes)})" if changes else "")
            runner.resume_record = {**(runner.resume_record or {}), "schedule": message}
        elif changes:
            message = f"the training plan changed since the checkpoint ({'; '.join(changes)})"
            if runner.scheduler is not None:
                message += (
                    ". The scheduler keeps the state it was saved with (resume_schedule: keep, or a scheduler "
                    "that does not follow the steps)"
                )
        else:
            return
        warn(message, RuntimeWarning, stacklevel=5)  # past the runner's checkpoint subsystem and delegate
        runner.log(message, logging.WARNING)


def check_steps(value: Any) -> int:
    r"""
    `config.preemption_check_steps`: optimizer steps between two agreements of the ranks on preemption signals and
    failures, checked.

    Raises:
        ValueError: If it is not an integer >= 1.

    Examples:
        >>> check_steps(16)
        16
        >>> check_steps(0)
        Traceback (most recent call last):
        ValueError: preemption_check_steps must be an integer >= 1 (optimizer steps between two checks), got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"preemption_check_steps must be an integer >= 1 (optimizer steps between two checks), got {value!r}"
        )
    return value
