"""Dataset-level metrics that need every prediction (AUROC, Spearman, ...), with one shared state.

[`Metrics`][danling.metrics.Metrics] keeps the (detached) predictions and targets of every batch. `update` only
reshapes and stores them, so it never waits for the device nor communicates; the metric functions run when a value
is read. Under `torch.distributed`, `value()` and `average()` score the data of every rank (collectives), while
`local_value()` scores this rank's latest batch alone, for per-step logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import nan
from typing import Any, Callable

import torch
from chanfig import FlatDict, NestedDict
from torch import Tensor

from ._sync import gather_rows
from .metric_meter import MetricMeter, MetricMeters
from .preprocesses import ArrayLike, NonFiniteInputError, bind_options, flatten_batch, warn_non_finite
from .preprocesses import preprocess as default_preprocess

MetricFunc = Callable[..., Any]


def _to_python(score: Any) -> Any:
    """A float for a scalar tensor, a list for a vector one, anything else unchanged."""
    if isinstance(score, Tensor):
        return score.item() if score.numel() == 1 else score.tolist()
    return score


class Metrics:
    r"""
    Several metric functions computed on the same stored predictions and targets.

    `val`/`value()` (and their aliases `bat`/`batch()`) score the latest batch of every process, concatenated in
    rank order; `avg`/`average()` every batch since the last `reset()` on every process (shards of any size). Both
    are collectives when distributed, as in the reference library. `local_value()` scores the latest batch of this
    process alone and never communicates: use it where ranks do not call in step, such as per-step logs. A metric
    function that returns a mapping has its entries merged into the result.

    `input`/`target` are the latest batch and `inputs`/`targets` every batch, as the reference library has them:
    a single-output `(N, 1)` prediction is stored flat, nothing stored reads as `torch.empty(0)`, and under
    `torch.distributed` each is every rank's data concatenated in rank order. `update` itself never communicates;
    the gather happens when one of these attributes (or `value()`/`average()`) is read, so read them on every rank.

    Args:
        *args: Mappings from name to metric function, metric functions (named by their `__name__`), or a
            [`MetricMeters`][danling.metrics.MetricMeters] whose functions (and, unless `preprocess` is given,
            preprocessing) to use.
        preprocess: Called once as `preprocess(input, target)` before the metric functions; `None` skips it.
            The default drops `ignore_index=-100` and NaN targets.
        merge_dict: Whether the entries of a mapping returned by a metric are merged at the top level (`True`) or
            stored as `"{name}.{key}"`.
        ignore_index: Passed to `preprocess` as `ignore_index=` when given (the reference library's option).
        ignore_nan: Passed to `preprocess` as `ignore_nan=` when given.
        **metrics: Metric functions by name, called as `metric(input, target)`.

    Examples:
        >>> from danling.metrics.functional import auprc, auroc
        >>> metrics = Metrics(auroc=auroc, auprc=auprc)
        >>> metrics.update([0.2, 0.3, 0.5, 0.7], [0, 1, 0, 1])
        >>> metrics.update([0.1, 0.4, 0.6, 0.8], [0, 0, 1, 0])
        >>> {k: round(v, 4) for k, v in metrics.value().items()}
        {'auroc': 0.6667, 'auprc': 0.5}
        >>> {k: round(v, 4) for k, v in metrics.average().items()}
        {'auroc': 0.6667, 'auprc': 0.5556}
        >>> f"{metrics:.4f}"
        'auroc: 0.6667 (0.6667)\tauprc: 0.5000 (0.5556)'
    """

    def __init__(
        self,
        *args: Mapping[str, MetricFunc] | MetricFunc,
        preprocess: Callable[..., tuple[Tensor, Tensor]] | None = default_preprocess,
        merge_dict: bool = True,
        ignore_index: int | None = None,
        ignore_nan: bool | None = None,
        **metrics: MetricFunc,
    ) -> None:
        self.metrics: FlatDict = FlatDict()
        for arg in args:
            if isinstance(arg, MetricMeters):  # stream-to-store: the same functions and preprocessing
                self.metrics.update({name: meter.metric for name, meter in arg.items()})
                if preprocess is default_preprocess:
                    preprocess = arg.getattr("preprocess", None)
            elif isinstance(arg, Mapping):
                self.metrics.update(arg)
            else:
                self.metrics.update({_metric_name(arg): arg})
        self.metrics.update(metrics)
        for name, metric in self.metrics.items():
            if not callable(metric):
                raise ValueError(f"Metric {name!r} must be callable, but got {type(metric).__name__}")
        self.preprocess = bind_options(preprocess, ignore_index, ignore_nan)
        self.merge_dict = merge_dict
        self._input: Tensor | None = None
        self._target: Tensor | None = None
        self._inputs: list[Tensor] = []
        self._targets: list[Tensor] = []

    @torch.no_grad()
    def update(self, input: ArrayLike, target: ArrayLike) -> None:
        r"""
        Store one batch (detached; no device synchronisation).

        Args:
            input: Predictions (probabilities or logits), shaped like `target` or with one extra class dimension.
            target: Targets.

        Raises:
            ValueError: On an empty batch, mismatched shapes, or a class dimension that differs from earlier batches.
        """
        input, target = flatten_batch(input, target)
        if self._inputs and input.shape[1:] != self._inputs[0].shape[1:]:
            raise ValueError(
                f"Batch input of shape {tuple(input.shape)} does not match earlier batches of shape "
                f"(N, {', '.join(map(str, self._inputs[0].shape[1:]))})"
            )
        self._input, self._target = input, target
        self._inputs.append(input)
        self._targets.append(target)

    def reset(self) -> None:
        r"""Forget every stored batch."""
        self._input = self._target = None
        self._inputs, self._targets = [], []

    def state_dict(self) -> dict[str, Tensor | None]:
        r"""
        This process's stored batches, concatenated: `{"inputs": ..., "targets": ...}` (`None` without a batch).
        What a mid-epoch checkpoint keeps of an epoch's metrics; restore it with `load_state_dict`.

        Examples:
            >>> from danling.metrics.functional import accuracy
            >>> metrics = Metrics(acc=accuracy)
            >>> metrics.update([0.9, 0.2], [1, 1])
            >>> restored = Metrics(acc=accuracy)
            >>> restored.load_state_dict(metrics.state_dict())
            >>> restored.update([0.7], [1])
            >>> round(restored.average()["acc"], 4)  # 2 of the 3 batches' samples
            0.6667
        """
        inputs, targets = self._local_all()
        return {"inputs": inputs, "targets": targets}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        r"""
        Replace the stored batches with those of [`state_dict`][danling.metrics.Metrics.state_dict]; the latest batch
        is unset until the next `update`.
        """
        self.reset()
        if state_dict.get("inputs") is not None:
            inputs, targets = flatten_batch(state_dict["inputs"], state_dict["targets"])
            self._inputs, self._targets = [inputs], [targets]

    @torch.no_grad()
    def calculate(self, input: Tensor | None, target: Tensor | None) -> FlatDict:
        r"""
        Run every metric function on `input` and `target` (preprocessed once); `nan` for each when no data is left.

        Examples:
            >>> from danling.metrics.functional import accuracy
            >>> Metrics(acc=accuracy).calculate(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))
            FlatDict(
              ('acc'): 0.5
            )
        """
        if input is not None and target is not None and self.preprocess is not None and target.numel() > 0:
            try:
                input, target = self.preprocess(input, target)
            except NonFiniteInputError as error:  # NaN/inf predictions: NaN metrics and a warning, no crash
                warn_non_finite(self, error)
                return FlatDict(dict.fromkeys(self.metrics, nan))
        if input is None or target is None or target.numel() == 0:
            return FlatDict(dict.fromkeys(self.metrics, nan))
        result = FlatDict()
        for name, metric in self.metrics.items():
            score = metric(input, target)
            if isinstance(score, Mapping):
                for key, value in score.items():
                    result[key if self.merge_dict else f"{name}.{key}"] = _to_python(value)
            else:
                result[name] = _to_python(score)
        return result

    def _local_all(self) -> tuple[Tensor | None, Tensor | None]:
        """Concatenate the stored batches once, so later calls reuse one tensor."""
        if not self._inputs:
            return None, None
        if len(self._inputs) > 1:
            self._inputs = [torch.cat(self._inputs)]
            self._targets = [torch.cat(self._targets)]
        return self._inputs[0], self._targets[0]

    @property
    def input(self) -> Tensor:
        r"""
        Predictions of the latest batch; under `torch.distributed` every rank's, in rank order (collective).

        Examples:
            >>> metrics = Metrics()
            >>> metrics.input
            tensor([])
            >>> metrics.update(torch.tensor([[0.2], [0.9]]), torch.tensor([0, 1]))  # (N, 1) is stored flat
            >>> metrics.input
            tensor([0.2000, 0.9000])
        """
        return _or_empty(gather_rows(self._input))

    @property
    def target(self) -> Tensor:
        r"""Targets of the latest batch; under `torch.distributed` every rank's, in rank order (collective)."""
        return _or_empty(gather_rows(self._target))

    @property
    def inputs(self) -> Tensor:
        r"""Predictions of every batch on every process, in rank order; collective when distributed."""
        return _or_empty(gather_rows(self._local_all()[0]))

    @property
    def targets(self) -> Tensor:
        r"""Targets of every batch on every process, in rank order; collective when distributed."""
        return _or_empty(gather_rows(self._local_all()[1]))

    def value(self) -> FlatDict:
        r"""
        Metrics of the latest batch of every process, concatenated in rank order.

        Collective when distributed: call on all ranks. Batches may have different sizes across ranks, and a rank
        that has no batch yet contributes nothing; one that skipped an `update` contributes its previous batch. Every
        call gathers afresh (a cache would leave a rank that did not update out of the next gather). In a single
        process this is [`local_value`][danling.metrics.Metrics.local_value].

        Examples:
            >>> from danling.metrics.functional import accuracy
            >>> metrics = Metrics(acc=accuracy)
            >>> metrics.update([0.9, 0.2], [1, 1])
            >>> metrics.value()["acc"], metrics.local_value()["acc"]
            (0.5, 0.5)
        """
        return self.calculate(gather_rows(self._input), gather_rows(self._target))

    def local_value(self) -> FlatDict:
        r"""
        Metrics of the latest batch of this process only; never communicates.

        The per-rank counterpart of [`value`][danling.metrics.Metrics.value], safe to call on some ranks only
        (the runner's per-step results use it).
        """
        return self.calculate(self._input, self._target)

    def batch(self) -> FlatDict:
        r"""Same as [`value`][danling.metrics.Metrics.value]; collective when distributed."""
        return self.value()

    def average(self) -> FlatDict:
        r"""
        Metrics of every batch since the last `reset()` on every process.

        Collective when distributed: call on all ranks. Shards may have different sizes.
        """
        input, target = self._local_all()
        return self.calculate(gather_rows(input), gather_rows(target))

    def compute(self) -> FlatDict:
        r"""Same as [`average`][danling.metrics.Metrics.average] (the reference library's name)."""
        return self.average()

    @property
    def val(self) -> FlatDict:
        r"""Same as [`value`][danling.metrics.Metrics.value]; collective when distributed."""
        return self.value()

    @property
    def bat(self) -> FlatDict:
        r"""Same as [`value`][danling.metrics.Metrics.value]; collective when distributed."""
        return self.value()

    @property
    def avg(self) -> FlatDict:
        r"""Same as [`average`][danling.metrics.Metrics.average]; collective when distributed."""
        return self.average()

    def __format__(self, format_spec: str) -> str:
        values, averages = self.value(), self.average()
        return "\t".join(
            f"{name}: {_format(values[name], format_spec)} ({_format(averages[name], format_spec)})" for name in values
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}{tuple(self.metrics.keys())}"


def _or_empty(tensor: Tensor | None) -> Tensor:
    return torch.empty(0) if tensor is None else tensor


def _metric_name(metric: MetricFunc) -> str:
    name = getattr(metric, "__name__", None)
    if name is None:
        raise ValueError(f"A metric given without a name must have a __name__, but {metric!r} has none")
    return name


def _format(value: Any, format_spec: str) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(v, format_spec) for v in value) + "]"
    return value.__format__(format_spec)


class ScoreMetrics(Metrics):
    r"""
    [`Metrics`][danling.metrics.Metrics] with one metric singled out as the score used to compare models.

    Args:
        *args: Mappings from name to metric function.
        score_name: Name of the scoring metric; defaults to the first metric.
        best_fn: Picks the best of several scores (`max` by default; `min` for losses).
        **metrics: Metric functions by name (and `Metrics` keyword options).

    Examples:
        >>> from danling.metrics.functional import accuracy, auroc
        >>> metrics = ScoreMetrics(auroc=auroc, acc=accuracy, score_name="acc")
        >>> metrics.update([0.9, 0.2, 0.7], [1, 0, 0])
        >>> round(metrics.average_score, 4), metrics.best_fn([0.5, 0.9])
        (0.6667, 0.9)
    """

    def __init__(
        self,
        *args: Mapping[str, MetricFunc],
        score_name: str | None = None,
        best_fn: Callable[[Sequence[float]], float] = max,
        **metrics: Any,
    ) -> None:
        super().__init__(*args, **metrics)
        if score_name is None:
            score_name = next(iter(self.metrics.keys()))
        self.score_name = score_name
        self.best_fn = best_fn

    @property
    def score_name(self) -> str:
        r"""
        Name of the scoring metric; assigning a name that is not one of the metrics raises `ValueError`.

        Examples:
            >>> from danling.metrics.functional import accuracy, auroc
            >>> metrics = ScoreMetrics(auroc=auroc, acc=accuracy)
            >>> metrics.score_name = "acc"
            >>> metrics.score_name = "f1"
            Traceback (most recent call last):
            ValueError: score_name must be one of ['auroc', 'acc'], but got 'f1'
        """
        return self._score_name

    @score_name.setter
    def score_name(self, name: str) -> None:
        if name not in self.metrics:
            raise ValueError(f"score_name must be one of {list(self.metrics.keys())}, but got {name!r}")
        self._score_name = name

    @property
    def batch_score(self) -> Any:
        r"""Score of the latest batch of every process, in rank order; collective when distributed."""
        return self.value()[self.score_name]

    @property
    def average_score(self) -> Any:
        r"""Score of every batch on every process; collective when distributed."""
        return self.average()[self.score_name]

    def get_score(self, scope: str) -> Any:
        r"""
        Score of `scope`: `"batch"` or `"average"`; anything else raises `ValueError`.

        Examples:
            >>> from danling.metrics.functional import auroc
            >>> metrics = ScoreMetrics(auroc=auroc)
            >>> metrics.get_score("total")
            Traceback (most recent call last):
            ValueError: scope must be 'batch' or 'average', but got 'total'
        """
        if scope == "batch":
            return self.batch_score
        if scope == "average":
            return self.average_score
        raise ValueError(f"scope must be 'batch' or 'average', but got {scope!r}")


class MultiTaskMetrics(NestedDict):
    r"""
    One [`Metrics`][danling.metrics.Metrics] per task, nested by dotted names.

    `update` takes, per task, a mapping `{"input": ..., "target": ...}` or a pair `(input, target)`.

    Examples:
        >>> from danling.metrics.functional import auroc, pearson
        >>> metrics = MultiTaskMetrics()
        >>> metrics["cls"] = Metrics(auroc=auroc)
        >>> metrics["reg"] = Metrics(pearson=pearson)
        >>> metrics.update({"cls": {"input": [0.2, 0.8, 0.6], "target": [0, 1, 0]}, "reg": ([1.0, 2.0], [1.0, 3.0])})
        >>> metrics.average().dict()
        {'cls': {'auroc': 1.0}, 'reg': {'pearson': 1.0}}
    """

    task_types = (Metrics,)  # no annotation: chanfig would turn an annotated attribute into an item

    def set(self, name: Any, value: Any, convert_mapping: bool | None = None) -> None:  # type: ignore[override]
        value = self._convert(value)
        if not isinstance(value, (*self.task_types, type(self))):
            expected = " or ".join(t.__name__ for t in self.task_types)
            raise ValueError(f"Expected {name!r} to be a {expected}, but got {type(value).__name__}")
        super().set(name, value, convert_mapping)

    def _convert(self, value: Any) -> Any:
        return value

    def tasks(self) -> dict[str, Any]:
        r"""Every task's metrics, keyed by dotted name."""
        return {name: metric for name, metric in self.all_items() if isinstance(metric, self.task_types)}

    def update(self, values: Mapping[str, Any]) -> None:  # type: ignore[override]
        r"""
        Update each named task.

        Raises:
            ValueError: For an unknown task or a value that is neither a mapping nor an `(input, target)` pair.
        """
        tasks = self.tasks()
        for name, value in _flatten_tasks(values, tasks).items():
            if name not in tasks:
                raise ValueError(f"Metric {name!r} not found; known tasks are {list(tasks)}")
            if isinstance(value, Mapping):
                tasks[name].update(**value)
            elif isinstance(value, Sequence) and len(value) == 2:
                tasks[name].update(*value)
            else:
                raise ValueError(f"Expected {{'input', 'target'}} or a pair for {name!r}, but got {type(value)}")

    def reset(self) -> None:
        r"""Reset every task."""
        for metric in self.tasks().values():
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        r"""Every task's `state_dict()`, keyed by dotted name: what a mid-epoch checkpoint keeps of them."""
        return {name: metric.state_dict() for name, metric in self.tasks().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        r"""
        Restore every task from [`state_dict`][danling.metrics.MultiTaskMetrics.state_dict].

        Raises:
            ValueError: If the tasks named in `state_dict` are not this object's tasks, naming both.
        """
        tasks = self.tasks()
        if set(state_dict) != set(tasks):
            raise ValueError(f"the state holds tasks {sorted(state_dict)}, but these metrics have {sorted(tasks)}")
        for name, metric in tasks.items():
            metric.load_state_dict(state_dict[name])

    def value(self) -> NestedDict:
        r"""
        Latest-batch metrics of every task: each task's `value()`.

        For a [`Metrics`][danling.metrics.Metrics] task that is the latest batch of every process, so this is a
        collective when distributed: call it on all ranks.
        """
        return NestedDict({name: _plain(metric.value()) for name, metric in self.tasks().items()})

    def local_value(self) -> NestedDict:
        r"""
        Latest-batch metrics of every task on this process only; never communicates.

        Examples:
            >>> from danling.metrics.functional import accuracy
            >>> metrics = MultiTaskMetrics(task=Metrics(acc=accuracy))
            >>> metrics.update({"task": ([0.9, 0.2], [1, 1])})
            >>> metrics.local_value().dict()
            {'task': {'acc': 0.5}}
        """
        return NestedDict({name: _plain(_local_value(metric)) for name, metric in self.tasks().items()})

    def average(self) -> NestedDict:
        r"""Metrics of every task over all batches and processes; collective when distributed."""
        return NestedDict({name: _plain(metric.average()) for name, metric in self.tasks().items()})

    @property
    def val(self) -> NestedDict:
        r"""Same as [`value`][danling.metrics.MultiTaskMetrics.value]; collective when distributed."""
        return self.value()

    @property
    def avg(self) -> NestedDict:
        r"""Same as [`average`][danling.metrics.MultiTaskMetrics.average]."""
        return self.average()

    def __format__(self, format_spec: str) -> str:
        return "\n".join(f"{name}: {metric.__format__(format_spec)}" for name, metric in self.tasks().items())


class MultiTaskMetricMeters(MultiTaskMetrics):
    r"""
    One [`MetricMeters`][danling.metrics.MetricMeters] (or `MetricMeter`) per task, nested by dotted names.

    The streaming counterpart of [`MultiTaskMetrics`][danling.metrics.MultiTaskMetrics], with the same `update`.
    Assigning a `Metrics` streams its functions; assigning a function makes a `MetricMeter`. As for the meters
    themselves, `value()` (like `local_value()`) is each meter's latest value on this process and never communicates.

    Examples:
        >>> from danling.metrics.functional import accuracy
        >>> meters = MultiTaskMetricMeters()
        >>> meters["dataset1.cls"] = MetricMeters(acc=accuracy)
        >>> meters["dataset2"] = accuracy
        >>> meters.update({"dataset1.cls": {"input": [0.2, 0.4, 0.5, 0.7], "target": [0, 1, 0, 1]},
        ...                "dataset2": ([0.1, 0.4, 0.6, 0.8], [1, 0, 0, 0])})
        >>> meters.update({"dataset1": {"cls": ([0.1, 0.4, 0.6, 0.8], [0, 0, 1, 0])},
        ...                "dataset2": ([0.2, 0.3, 0.5, 0.7], [0, 0, 0, 1])})
        >>> meters.average().dict()
        {'dataset1': {'cls': {'acc': 0.625}}, 'dataset2': 0.5}
    """

    task_types = (MetricMeters, MetricMeter)

    def _convert(self, value: Any) -> Any:
        if isinstance(value, Metrics):
            return MetricMeters(value)
        if callable(value) and not isinstance(value, (Mapping, MetricMeter, MultiTaskMetrics)):
            return MetricMeter(value)
        return value


def _local_value(metric: Any) -> Any:
    """A task's latest-batch value on this process: `local_value()` of a `Metrics`, `value()` of a meter."""
    return metric.local_value() if isinstance(metric, Metrics) else metric.value()


def _plain(result: Any) -> Any:
    return result.dict() if hasattr(result, "dict") else result


def _flatten_tasks(values: Mapping[str, Any], tasks: Mapping[str, Metrics], prefix: str = "") -> dict[str, Any]:
    """Map dotted task names to their update values, descending into nested mappings of task groups."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name not in tasks and isinstance(value, Mapping) and any(t.startswith(f"{name}.") for t in tasks):
            flat.update(_flatten_tasks(value, tasks, f"{name}."))
        else:
            flat[name] = value
    return flat
