"""Results of a runner: step and epoch results, score checks, log lines, TensorBoard and the results files.

Functions of what they are given: the runner's `get_step_result`, `scores`, `format_step_result`, `write_result`,
`save_result`... call them with its meters, metrics, results, config and writer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Callable
from warnings import warn

import torch
from chanfig import NestedDict

from danling.metrics._sync import union_keys
from danling.utils import distributed as dist_utils
from danling.utils.io import save, to_plain

from ..checkpointing import files as ckpt
from . import results as res
from .telemetry import display_values, format_step_values, hparam_values, step_view, write_hparams, write_scalars

VERBS = {"train": "training", "evaluate": "evaluating", "infer": "inferring"}


def step_result(meter_values: Mapping, metrics: Any) -> NestedDict:
    r"""
    A step result: `meter_values` and the metrics' values on this rank's latest batch (their `local_value()`: no
    gather, since ranks need not log in step), each single-task section lifted to the top.

    Examples:
        >>> step_result({"loss": 0.5}, None).dict()
        {'loss': 0.5}
    """
    result = nested_result(meter_values)
    if metrics is not None:
        local_value = getattr(metrics, "local_value", None)  # meters have none: their `value()` is local
        result.merge(metrics.value() if local_value is None else local_value())
    return result


def reduced_meter_values(meters: Any) -> dict[str, float]:
    r"""
    The latest values of `meters` averaged over the ranks that updated each (one all-reduce, collective): every rank
    reports the same meters in the same order, even one that exists on some ranks only; one no rank updated is out.
    """
    names = union_keys([name for name, _ in meters.count.all_items()])
    updated = [meter.count != 0 for meter in map(meters.meter, names)]
    values = [meters.meter(name).val if ok else 0.0 for name, ok in zip(names, updated)]
    totals = dist_utils.all_reduce(torch.tensor([*values, *map(float, updated)], dtype=torch.float64)).tolist()
    count = len(names)
    return {name: totals[i] / totals[count + i] for i, name in enumerate(names) if totals[count + i] != 0}


def epoch_result(meters: Any, metrics: Any) -> NestedDict:
    r"""
    Averages of `meters` and `metrics` over the epoch (over all processes); a meter no rank updated is left out.

    Examples:
        >>> from danling.metrics import AverageMeters
        >>> meters = AverageMeters()
        >>> meters.loss.update(0.5)
        >>> epoch_result(meters, None).dict()
        {'loss': 0.5}
    """
    result = NestedDict(meters.average(skip_empty=True))
    if metrics is not None:
        result.merge(metrics.average())
    return result


def checked_scores(
    results: Mapping, config: Mapping, warned: bool, unscored: list[str] | None = None
) -> tuple[NestedDict, str | None]:
    r"""
    Score of each result, `results[index][score_split][score_name]`, and the warning to give (once: `warned` says
    whether it was given) when `score_split` was not set and had to be chosen. A result holding only `unscored`
    splits (the train splits: an epoch end between two step evaluations) names no score split when it is inferred.

    Raises:
        ValueError: If `score_split` names a split no result has, or the latest result lacks `score_name`.
    """
    split, fallback = res.check_score_split(results, config.get("score_split"), unscored)
    score_name = config.get("score_name", "loss")
    section = results[next(reversed(list(results.keys())))].get(split)
    if isinstance(section, Mapping) and score_name not in section:
        raise ValueError(
            f"score_name is {score_name!r}, but the {split!r} result has no such metric; "
            f"available metrics are {list(section.keys())}"
        )
    return res.get_scores(results, score_name, split, unscored), None if warned else fallback


def check_score_split(config: Mapping, results: Mapping, splits: list[str]) -> None:
    r"""
    Fail fast when `config.score_split` is neither one of `splits` (those a run is about to produce) nor in results.

    Raises:
        ValueError: Naming the value and the available splits.
    """
    split = config.get("score_split")
    available = list(dict.fromkeys([*splits, *res.result_splits(results)]))
    if split is not None and split not in available:
        raise ValueError(f"score_split is {split!r}, but there is no such split; available splits are {available}")


def warn_score_split(message: str, logger: logging.Logger | None) -> None:
    r"""Give the warning of a chosen `score_split`, as a `RuntimeWarning` and in the log."""
    warn(message, RuntimeWarning, stacklevel=3)
    if logger is not None:
        logger.warning(message)


def format_step_line(
    mode: str, result: Mapping, split: str | None, steps: int, length: int | None, format_spec: str = ".4f"
) -> str:
    r"""
    A step log line, e.g. `training on train [12/99]`, then tab-separated `loss: 0.1234`, `lr: 3.2e-04`...
    (dataset-level metrics left out: they are in the epoch line).

    Examples:
        >>> format_step_line("train", {"loss": 0.5}, "train", 3, 9)
        'training on train [3/9]\tloss: 0.5000'
    """
    prefix = f"{VERBS[str(mode)]} on {split} " if split is not None else ""
    position = f"[{steps}/{length}]" if length is not None else f"[{steps}]"
    return f"{prefix}{position}\t{format_step_values(step_view(result), format_spec)}"


def bar_postfix(result: Mapping) -> str:
    r"""
    What the progress bar shows after a log step: the loss and the throughput.

    Examples:
        >>> bar_postfix({"loss": 0.123456, "acc": 0.5, "samples_per_s": 1000.0})
        'loss=0.1235, samples/s=1000.0'
    """
    shown = display_values({key: result[key] for key in ("loss", "samples_per_s") if key in result})
    return ", ".join(f"{key}={value}" for key, value in shown.items())


def epoch_prefix(epochs: int, epoch_end: int | None) -> str:
    r"""
    The head of an epoch log: `"epoch [3/9]"`.

    Examples:
        >>> epoch_prefix(3, 10), epoch_prefix(3, None)
        ('epoch [3/9]\n', 'epoch [3]\n')
    """
    return f"epoch [{epochs}/{epoch_end - 1}]\n" if epoch_end is not None else f"epoch [{epochs}]\n"


def write_result(writer: Any, result: Mapping, split: str, steps: int) -> None:
    r"""Write every number of `result` to TensorBoard as `{split}/{metric}` at `steps` (lists as `.../{i}`)."""
    if writer is None:
        return
    for name, score in NestedDict(result).all_items():
        name = name.replace(".", "/")
        for key, value in enumerate(score) if isinstance(score, (list, tuple)) else [(None, score)]:
            writer.add_scalar(f"{split}/{name}" if key is None else f"{split}/{name}/{key}", value, steps)


def write_epoch_result(writer: Any, result: Mapping, steps: int) -> None:
    r"""Write every split's epoch result to TensorBoard as `{split}/{metric}` at the global step, then flush."""
    for split, split_result in result.items():
        if isinstance(split_result, Mapping):
            write_scalars(writer, split_result, split, steps)
    if writer is not None:
        writer.flush()


def write_best_hparams(writer: Any, config: Any, best_score: float | None, steps: int) -> None:
    r"""Write the hyper-parameters and `hparams/best_{score_name}` to TensorBoard's hparams view."""
    if writer is None or best_score is None:
        return
    metric = {f"hparams/best_{config.get('score_name', 'loss')}": float(best_score)}
    write_hparams(writer, hparam_values(to_plain(config.dict())), metric, steps)
    writer.flush()


def results_writer(
    header: Mapping, results: Mapping, latest: Mapping | None, directory: str, is_best: bool
) -> Callable:
    r"""
    A function writing `results.json`, `latest.json` and (when `is_best`) `best.json` in `directory`, of the values
    given now: the runner calls it after a background checkpoint save commits.
    """
    everything = {**header, "results": to_plain(results)}
    latest = {**header, **to_plain(latest or {})}

    def write() -> None:
        save(everything, os.path.join(directory, "results.json"), indent=4)
        latest_path = save(latest, os.path.join(directory, "latest.json"), indent=4)
        if is_best:
            ckpt.link_or_copy(latest_path, os.path.join(directory, "best.json"))

    return write


def nested_result(values: Mapping) -> NestedDict:
    r"""
    `values` as a `NestedDict`, built cheaply when its keys are plain names with plain values (a step line's
    `loss`): chanfig's constructor costs about 10 us a key, its `update` a fraction of that. Dotted names and
    nested mappings go through `merge`, which nests them as the constructor would.

    Examples:
        >>> nested_result({"loss": 0.5}).dict(), nested_result({"task.loss": 0.5}).dict()
        ({'loss': 0.5}, {'task': {'loss': 0.5}})
    """
    result = NestedDict()
    if all(type(key) is str and "." not in key and not isinstance(value, Mapping) for key, value in values.items()):
        result.update(values)
    else:
        result.merge(values)
    return result
