"""When a training run evaluates (`eval_steps`, `eval_at_epoch_end`), and how each evaluation becomes one record.

Without `eval_steps` a run evaluates at every epoch end and `runner.results` is keyed by epoch, as it always was.
With `eval_steps`, it also evaluates every `eval_steps` optimizer steps, and `runner.results` holds one record per
evaluation, keyed by the global step, each with its `epoch` and `step`: `{step: {"epoch": e, "step": s, split:
{metric: value}}}`. An epoch's training result joins the record of the step the epoch ended at (a record of its
own when that step was not evaluated).

The rules, decided on the host step counter only (no device read):

- A step evaluation runs after each optimizer step that is a multiple of `eval_steps` and was not evaluated yet.
- The last optimizer step of an epoch is evaluated at the epoch end, once, never twice: the epoch-end
  evaluation (`eval_at_epoch_end`) and a multiple of `eval_steps` that falls there are one evaluation. Training
  ending there (`epoch_end`, `step_end`) also evaluates it when it was not evaluated, so the last step of a run
  always has its evaluation.
- A run resumed from any checkpoint continues from the records in it: a step evaluated before the checkpoint was
  saved is never evaluated again, and each later step is evaluated when reached.

[`EvaluationSchedule`][danling.runner.loop.evaluation_schedule.EvaluationSchedule] holds these rules and the steps
already evaluated; [`training_set_aside`][danling.runner.loop.evaluation_schedule.training_set_aside] keeps a
training epoch's meters, metrics, clocks and module modes through an evaluation inside it. Neither holds a runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from chanfig import NestedDict

from ..checkpointing.restore import load_metrics_state, metrics_state

# Bookkeeping keys of a record made with `eval_steps`.
EPOCH, STEP = "epoch", "step"

BoundaryHook = Callable[[Any, str, int, "int | None"], None]


class EvaluationSchedule:
    r"""
    When a training run evaluates, and where each result goes in `runner.results`.

    Args:
        eval_steps: Evaluate every this many optimizer steps (`None`: at epoch ends only, results keyed by epoch).
        at_epoch_end: Also evaluate at the end of every epoch (`eval_at_epoch_end`).

    Attributes:
        splits: The splits evaluated (set by
            [`start`][danling.runner.loop.evaluation_schedule.EvaluationSchedule.start]).
        last_train_split: The last split an epoch trains: its last batch ends the epoch.
        evaluated: Steps whose record holds an evaluation.
        keys: The key of the record of each step (as read back from a checkpoint).
        stop_requested: Whether `patience` ran out at a step evaluation: the epoch stops at that step.

    Raises:
        ValueError: If `eval_steps` is not a positive integer or `None`, `at_epoch_end` is not a bool, or the run
            would never evaluate (`at_epoch_end=False` without `eval_steps`).

    Examples:
        >>> schedule = EvaluationSchedule(eval_steps=4)
        >>> schedule.start({}, ["train"], ["val"])
        >>> [step for step in range(1, 13) if schedule.due_at_step(step, "train", batches=step, length=20)]
        [4, 8, 12]
        >>> schedule.due_at_step(4, "train", batches=4, length=4)  # the epoch's last step: left to its end
        False
        >>> schedule.due_at_epoch_end(4, final=False), schedule.due_at_epoch_end(5, final=False)
        (True, True)
        >>> EvaluationSchedule(eval_steps=4, at_epoch_end=False).due_at_epoch_end(5, final=False)
        False
    """

    __slots__ = ("at_epoch_end", "eval_steps", "evaluated", "keys", "last_train_split", "splits", "stop_requested")

    def __init__(self, eval_steps: int | None = None, at_epoch_end: bool = True) -> None:
        if eval_steps is not None and (isinstance(eval_steps, bool) or not isinstance(eval_steps, int)):
            raise ValueError(f"eval_steps must be a positive integer or None, but got {eval_steps!r}")
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"eval_steps must be a positive integer or None, but got {eval_steps!r}")
        if not isinstance(at_epoch_end, bool):
            raise ValueError(f"eval_at_epoch_end must be True or False, but got {at_epoch_end!r}")
        if eval_steps is None and not at_epoch_end:
            raise ValueError(
                "eval_at_epoch_end is False but eval_steps is None: the run would never evaluate; set eval_steps "
                "(evaluate every that many optimizer steps) or leave eval_at_epoch_end True"
            )
        self.eval_steps = eval_steps
        self.at_epoch_end = at_epoch_end
        self.splits: list[str] = []
        self.last_train_split: str | None = None
        self.evaluated: set[int] = set()
        self.keys: dict[int, Any] = {}
        self.stop_requested = False

    @classmethod
    def from_config(cls, config: Mapping) -> EvaluationSchedule:
        r"""The schedule of `config.eval_steps` and `config.eval_at_epoch_end` (checked)."""
        at_epoch_end = config.get("eval_at_epoch_end")
        return cls(config.get("eval_steps"), True if at_epoch_end is None else at_epoch_end)

    @property
    def enabled(self) -> bool:
        r"""Whether evaluations happen every `eval_steps` (results are then records keyed by step)."""
        return self.eval_steps is not None

    @property
    def unit(self) -> str:
        r"""What `patience` counts: `"epochs"`, or `"evaluations"` with `eval_steps`."""
        return "evaluations" if self.enabled else "epochs"

    def start(self, results: Mapping, train_splits: list[str], evaluate_splits: list[str]) -> None:
        r"""
        At the start of `train()`: the splits, and the steps the results (restored from a checkpoint) evaluated.

        Raises:
            ValueError: If the results were recorded the other way (keyed by epoch while `eval_steps` is set now,
                or by step while it is not): the two cannot be mixed in one run.
        """
        self.splits = list(evaluate_splits)
        self.last_train_split = train_splits[-1] if train_splits else None
        self.stop_requested = False
        self.evaluated, self.keys = set(), {}
        for key, record in results.items():
            stamped = isinstance(record, Mapping) and STEP in record and EPOCH in record
            if stamped != self.enabled:
                raise ValueError(_mixed_records_message(self.enabled, key))
            if stamped:
                self._note(key, record, int(record[STEP]))

    def _note(self, key: Any, record: Mapping, step: int) -> None:
        self.keys[step] = key
        if any(split in record for split in self.splits):
            self.evaluated.add(step)

    def due_at_step(
        self, steps: int, split: str, batches: int, length: int | None, step_end: int | None = None
    ) -> bool:
        r"""
        Whether to evaluate after the optimizer step that made `steps`, taken after `batches` batches of `split`'s
        epoch (of `length`). The last step of an epoch (the last batch of its last train split, or `step_end`) is
        left to the epoch end, which comes at the same step.

        Examples:
            >>> schedule = EvaluationSchedule(eval_steps=2)
            >>> schedule.start({}, ["train"], ["val"])
            >>> schedule.due_at_step(2, "train", 2, 10), schedule.due_at_step(3, "train", 3, 10)
            (True, False)
            >>> schedule.due_at_step(4, "train", 4, 10, step_end=4)  # training ends here: the epoch end evaluates
            False
        """
        if self.eval_steps is None or steps % self.eval_steps != 0 or steps in self.evaluated or not self.splits:
            return False
        if step_end is not None and steps >= step_end:
            return False
        return not (length is not None and batches >= length and split == self.last_train_split)

    def due_at_epoch_end(self, steps: int, final: bool) -> bool:
        r"""
        Whether the epoch that ended at `steps` evaluates: always without `eval_steps`; with it, when `steps` was
        not evaluated and the epoch end evaluates (`eval_at_epoch_end`), `steps` is a multiple of `eval_steps`,
        or training ends here (`final`).
        """
        if self.eval_steps is None:
            return True
        if steps in self.evaluated or not self.splits:
            return False
        return self.at_epoch_end or final or steps % self.eval_steps == 0

    def place(self, result: Mapping, epoch: int, steps: int) -> tuple[Mapping, Any]:
        r"""
        Where a result goes in `runner.results`: the result (with its `epoch` and `step` under `eval_steps`) and
        its key (the epoch, else the step's record, new or existing). Notes an evaluation of `steps`.

        Examples:
            >>> EvaluationSchedule().place({"val": {"loss": 1.0}}, epoch=2, steps=30)
            ({'val': {'loss': 1.0}}, 2)
            >>> schedule = EvaluationSchedule(eval_steps=10)
            >>> schedule.start({}, ["train"], ["val"])
            >>> result, key = schedule.place({"val": {"loss": 1.0}}, epoch=2, steps=30)
            >>> result.dict(), key, schedule.evaluated
            ({'epoch': 2, 'step': 30, 'val': {'loss': 1.0}}, 30, {30})
        """
        if self.eval_steps is None:
            return result, epoch
        record = NestedDict({EPOCH: epoch, STEP: steps})
        record.merge(NestedDict(result))
        key = self.keys.get(steps, steps)
        self._note(key, record, steps)
        return record, key

    def around(
        self, hook: BoundaryHook | None, evaluate: BoundaryHook, steps_now: Callable[[], int], step_end: int | None
    ) -> BoundaryHook | None:
        r"""
        The step-boundary hook of a training epoch with step evaluations: `evaluate(runner, split, batches, length)`
        when one is due at the boundary, then `hook` (saves, preemption). The evaluation comes first, so a checkpoint
        saved at the same boundary holds its record. `hook` itself when nothing is evaluated by step.

        Args:
            hook: What the boundary does otherwise (`None`: nothing).
            evaluate: Evaluates and records at the boundary (a function of the runner: none is kept here).
            steps_now: Reads the optimizer steps taken so far (the host counter).
            step_end: The step training stops at (its evaluation is the epoch end's).
        """
        if self.eval_steps is None or not self.splits:
            return hook
        due = self.due_at_step

        def at_boundary(runner: Any, split: str, batches: int, length: int | None) -> None:
            if due(steps_now(), split, batches, length, step_end):
                evaluate(runner, split, batches, length)
            if hook is not None:
                hook(runner, split, batches, length)

        return at_boundary

    def describe(self, epoch: int, steps: int) -> str:
        r"""
        The heading of a step evaluation's log lines.

        Examples:
            >>> EvaluationSchedule(eval_steps=5).describe(1, 15)
            'evaluation at step 15 (epoch 1)'
        """
        return f"evaluation at step {steps} (epoch {epoch})"


def _mixed_records_message(enabled: bool, key: Any) -> str:
    if enabled:
        return (
            f"eval_steps is set, but the run's results are keyed by epoch (result {key!r} has no 'epoch' and 'step'): "
            "a run recorded without eval_steps cannot continue with it; start a new run or unset eval_steps"
        )
    return (
        f"eval_steps is not set, but the run's results are records of step evaluations (result {key!r}): "
        "a run recorded with eval_steps must continue with it; set eval_steps"
    )


@contextmanager
def training_set_aside(
    meters: Any, train_metrics: Any, evaluate_metrics: Any, telemetry: Any, model: Any
) -> Iterator[None]:
    r"""
    Keep a training epoch's state through an evaluation run inside it, and put it back when the block ends: the
    meters, the training metrics when evaluation uses the same object, the telemetry's counters and clocks (the
    evaluation's time left out of the epoch's), and the train/eval mode of every module of `model`.

    Reads the meters and metrics once (a device sync, as the evaluation makes anyway).

    Args:
        meters: The runner's `AverageMeters`.
        train_metrics: The metrics training updates (`None`: none).
        evaluate_metrics: The metrics evaluation updates.
        telemetry: The runner's [`Telemetry`][danling.runner.reporting.telemetry.Telemetry].
        model: The model, or `None`.

    Examples:
        >>> import torch
        >>> from danling.metrics import AverageMeters
        >>> from danling.runner.reporting.telemetry import Telemetry
        >>> meters, model = AverageMeters(), torch.nn.Linear(1, 1)
        >>> meters.loss.update(2.0)
        >>> with training_set_aside(meters, None, None, Telemetry(torch.device("cpu")), model):
        ...     meters.reset()
        ...     meters.loss.update(9.0)
        ...     meters.acc.update(1.0)  # a meter only the evaluation updated
        ...     _ = model.eval()
        >>> meters.loss.avg, meters.acc.count, model.training
        (2.0, 0, True)
    """
    meter_state = meters.state_dict()
    shared = train_metrics is not None and train_metrics is evaluate_metrics
    metric_state = metrics_state(train_metrics) if shared else None
    modes = [(module, module.training) for module in model.modules()] if hasattr(model, "modules") else []
    with telemetry.set_aside():
        try:
            yield
        finally:
            meters.reset()  # a meter only the evaluation updated stays empty: left out of the epoch's result
            meters.load_state_dict(meter_state)
            if shared:
                train_metrics.reset()
                load_metrics_state(train_metrics, metric_state)
            for module, training in modes:
                module.training = training
