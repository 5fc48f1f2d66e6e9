"""Results of a runner: recording them, choosing the best, formatting, logging and writing them."""

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
from ..loop.data import loader_length
from ..rundir.startup import write_config_file
from ..utils import RunnerMode, format_result, on_main_process
from . import results as res
from .banner import log_banner
from .telemetry import display_values, format_step_values, hparam_values, step_view, write_hparams, write_scalars


class ReportingMixin:
    r"""
    Results bookkeeping, formatting and logging of [`BaseRunner`][danling.runner.BaseRunner].

    The pure logic lives in [`danling.runner.reporting.results`][danling.runner.reporting.results]; these methods bind
    it to the
    runner's `results`, `config`, `meters`, `metrics`, `logger` and `writer`.
    """

    results: NestedDict
    config: Any
    meters: Any
    metrics: Any = None
    train_metrics: Any = None
    evaluate_metrics: Any = None
    mode: RunnerMode
    _mode: RunnerMode  # the storage behind `mode`, read directly on the per-batch path
    distributed: bool
    logger: logging.Logger | None = None
    writer: Any = None
    _score_split_warned: bool = False
    _callbacks: Any  # the runner's `CallbackList`
    _log_position: tuple[int, int | None] = (0, None)  # where the log step being reported is: batch, last batch

    def append_result(self, result: Mapping, index: int | None = None) -> None:
        r"""
        Add a result (`split -> metric -> value`) at `index` (default: the current epoch), merging if present.
        """
        res.append_result(self.results, result, self.epochs if index is None else index)

    @property
    def current_metrics(self) -> Any:
        r"""
        Metrics of the current mode: `train_metrics` when training, `evaluate_metrics` otherwise, each falling
        back to `metrics`. The loops update these, and the step and epoch results read them.
        """
        specific = self.train_metrics if self._mode == RunnerMode.train else self.evaluate_metrics
        return self.metrics if specific is None else specific

    def get_step_result(self) -> NestedDict:
        r"""
        Values of the meters and the current split's metrics on this rank's latest batch (the metrics'
        `local_value()`: no gather, since ranks need not log in step). A meter not updated since the
        epoch began (e.g. `meters.time.reset()` and nothing more) is left out rather than shown as `nan`. In
        distributed training every rank then reduces the same values, so a meter is left out only when no rank
        updated it (one all-reduce of the counts; training log steps are collective there anyway).
        """
        result = nested_result(self._updated_meter_values())
        metrics = self.current_metrics
        if metrics is not None:
            local_value = getattr(metrics, "local_value", None)  # meters have none: their `value()` is local
            result.merge(_flatten_single(metrics.value() if local_value is None else local_value()))
        return result

    def _updated_meter_values(self) -> Mapping:
        meters = self.meters
        if not (self.distributed and self.mode == RunnerMode.train):
            return meters.value(skip_empty=True)
        # The values are reduced across ranks next: every rank must report the same meters, in the same order,
        # even one that exists on some ranks only; each is the mean of the ranks that updated it.
        names = union_keys([name for name, _ in meters.count.all_items()])
        updated = [meter.count != 0 for meter in map(meters.meter, names)]
        values = [meters.meter(name).val if ok else 0.0 for name, ok in zip(names, updated)]
        totals = dist_utils.all_reduce(torch.tensor([*values, *map(float, updated)], dtype=torch.float64)).tolist()
        count = len(names)
        return {name: totals[i] / totals[count + i] for i, name in enumerate(names) if totals[count + i] != 0}

    def get_epoch_result(self) -> NestedDict:
        r"""
        Averages of the meters and the current split's metrics over the epoch (over all processes). A meter no
        rank updated in the epoch is left out rather than shown as `nan`; one updated with a NaN shows NaN.
        """
        result = NestedDict(self.meters.average(skip_empty=True))
        metrics = self.current_metrics
        if metrics is not None:
            result.merge(_flatten_single(metrics.average()))
        return result

    @property
    def score_mode(self) -> str:
        r"""
        `"min"` or `"max"`: `config.score_mode`, else inferred from `score_name` (lower is better for losses and
        errors such as `loss`, `*_loss`, `mse`, `rmse`, `mae`, `error`, `perplexity`; higher otherwise).

        Raises:
            ValueError: If `config.score_mode` is not `"min"`, `"max"` or `None`.
        """
        return res.resolve_score_mode(self.config.get("score_mode"), self.config.get("score_name", "loss"))

    @property
    def best_fn(self) -> Callable:
        r"""
        `min` or `max`, following [`score_mode`][danling.runner.BaseRunner.score_mode]; a subclass may override it.
        """
        return min if self.score_mode == "min" else max

    def check_score_split(self, splits: list[str]) -> None:
        r"""
        Fail fast when `config.score_split` is neither one of `splits` (those a run is about to produce) nor in
        the results so far.

        Raises:
            ValueError: Naming the value and the available splits.
        """
        split = self.config.get("score_split")
        available = list(dict.fromkeys([*splits, *res.result_splits(self.results)]))
        if split is not None and split not in available:
            raise ValueError(f"score_split is {split!r}, but there is no such split; available splits are {available}")

    @property
    def scores(self) -> NestedDict | None:
        r"""
        Score of each result: `results[index][score_split][score_name]`.

        Raises:
            ValueError: If `config.score_split` names a split that no result has.
        """
        if not self.results:
            return None
        split, fallback = res.check_score_split(self.results, self.config.get("score_split"))
        if fallback is not None and not self._score_split_warned:
            self._score_split_warned = True
            warn(fallback, RuntimeWarning, stacklevel=2)
            self.log(fallback, logging.WARNING)
        score_name = self.config.get("score_name", "loss")
        section = self.results[next(reversed(list(self.results.keys())))].get(split)
        if isinstance(section, Mapping) and score_name not in section:
            raise ValueError(
                f"score_name is {score_name!r}, but the {split!r} result has no such metric; "
                f"available metrics are {list(section.keys())}"
            )
        return res.get_scores(self.results, score_name, split)

    @property
    def best_index(self) -> Any:
        r"""
        Index of the best result (ties go to the latest; NaN/inf scores never count); 0 when there are no results,
        `None` when no result has a finite score.
        """
        if not self.results:
            return 0
        return res.best_index(self.scores or {}, self.best_fn)

    @property
    def latest_result(self) -> NestedDict | None:
        r"""Copy of the latest result with its `index`."""
        return res.latest_result(self.results)

    @property
    def best_result(self) -> NestedDict | None:
        r"""Copy of the best result with its `index`."""
        if not self.results:
            return None
        return res.result_at(self.results, self.best_index)

    @property
    def latest_score(self) -> float | None:
        r"""Score of the latest result."""
        scores = self.scores
        return next(reversed(list(scores.values()))) if scores else None

    @property
    def best_score(self) -> float | None:
        r"""Score of the best result."""
        index = self.best_index
        scores = self.scores
        return scores[index] if scores and index is not None else None

    @property
    def is_best(self) -> bool:
        r"""
        Whether the latest result is the best so far: what `best.json`, `best.pth`, `best_index` and
        `best_result` agree on (`True` when there are no results, `False` for a NaN/inf score).
        """
        if not self.results:
            return True
        return self.best_index == next(reversed(list(self.results.keys())))

    def format_result(self, result: Mapping, format_spec: str = ".4f") -> str:
        r"""
        Format a result for humans (see [`format_result`][danling.runner.utils.format_result]); the learning rate
        reads `3.2e-04` and throughput `samples/s`.
        """
        return format_result(display_values(result, format_spec), format_spec=format_spec)

    def format_step_result(
        self, result: Mapping, split: str | None, steps: int, length: int | None, format_spec: str = ".4f"
    ) -> str:
        r"""
        Format a step log line, e.g. `training on train [12/99]`, then tab-separated `loss: 0.1234`,
        `lr: 3.2e-04`, `samples/s: 812.5` and `time: 0.012 s/step`.

        Dataset-level metrics (AUROC, AUPRC, Pearson, Spearman), meaningless on one batch, are left out: they are
        in the epoch line.
        """
        verb = {"train": "training", "evaluate": "evaluating", "infer": "inferring"}[str(self.mode)]
        prefix = f"{verb} on {split} " if split is not None else ""
        position = f"[{steps}/{length}]" if length is not None else f"[{steps}]"
        return f"{prefix}{position}\t{format_step_values(step_view(result), format_spec)}"

    def format_bar_postfix(self, result: Mapping) -> str:
        r"""
        What the progress bar shows after a log step: the loss and the throughput.

        Examples:
            >>> ReportingMixin().format_bar_postfix({"loss": 0.123456, "acc": 0.5, "samples_per_s": 1000.0})
            'loss=0.1235, samples/s=1000.0'
        """
        shown = display_values({key: result[key] for key in ("loss", "samples_per_s") if key in result})
        return ", ".join(f"{key}={value}" for key, value in shown.items())

    def format_epoch_result(
        self, result: Mapping, epochs: int | None = None, epoch_end: int | None = None, format_spec: str = ".4f"
    ) -> str:
        r"""Format an epoch log: `"epoch [3/9]"` followed by the result."""
        epochs = self.epochs if epochs is None else epochs
        epoch_end = self.epoch_end if epoch_end is None else epoch_end
        prefix = f"epoch [{epochs}/{epoch_end - 1}]\n" if epoch_end is not None else f"epoch [{epochs}]\n"
        return prefix + self.format_result(result, format_spec)

    def step_log(self, split: str, iteration: int, length: int | None = None) -> NestedDict:
        r"""
        Take the step result of `split` and hand it to the callbacks' `on_log`, on every process: the built-in
        ones write its line to the log (`[iteration/length]`), to TensorBoard as `{split}/step/{metric}` at the
        global step when training (dataset-level metrics left out) and onto the progress bar.

        Args:
            split: The split running.
            iteration: The batch the line shows.
            length: The last batch the line shows (default: from the split's dataloader).

        Returns:
            The step result.
        """
        loader = self.dataloaders.get(split) if length is None else None
        if loader is not None:
            batches = loader_length(loader)  # None for an iterable dataset without a length
            length = None if batches is None else batches - 1
        result = self.get_step_result()
        self._log_position = (iteration, length)
        self._callbacks.dispatch("on_log", self, split, result)
        return result

    @property
    def log_position(self) -> tuple[int, int | None]:
        r"""Where the log step being reported is: its batch in the epoch (from 0) and the epoch's last batch."""
        return self._log_position

    def format_log_step(self, result: Mapping, split: str | None, format_spec: str = ".4f") -> str:
        r"""
        The line of the log step being reported (what [`LogCallback`][danling.runner.callbacks.LogCallback]
        writes): [`format_step_result`][danling.runner.BaseRunner.format_step_result] at the position
        [`step_log`][danling.runner.BaseRunner.step_log] was given.
        """
        iteration, length = self._log_position
        return self.format_step_result(result, split, iteration, length, format_spec)

    def log(self, message: str, level: int = logging.INFO) -> None:
        r"""Log `message` through the runner's logger (main process only; no-op when logging is off)."""
        if self.logger is not None:
            self.logger.log(level, message)

    def print_result(self) -> None:
        r"""Log the latest and the best result."""
        self.log(f"latest result: {self.latest_result}")
        self.log(f"best result: {self.best_result}")

    def write_result(self, result: Mapping, split: str, steps: int | None = None) -> None:
        r"""Write every number of `result` to TensorBoard as `{split}/{metric}` at `steps`."""
        if self.writer is None:
            return
        steps = self.steps if steps is None else steps
        for name, score in NestedDict(result).all_items():
            name = name.replace(".", "/")
            if isinstance(score, (list, tuple)):
                for i, value in enumerate(score):
                    self.write_score(f"{name}/{i}", value, split, steps)
            else:
                self.write_score(name, score, split, steps)

    def write_score(self, name: str, score: float, split: str, steps: int) -> None:
        r"""Write one scalar to TensorBoard as `{split}/{name}`."""
        if self.writer is not None:
            self.writer.add_scalar(f"{split}/{name}", score, steps)

    def write_epoch_result(self, result: Mapping) -> None:
        r"""
        Write every split's epoch result to TensorBoard as `{split}/{metric}` (`val/acc`, `train/loss`, `train/lr`,
        `train/samples_per_s`...), at the global step: the same x-axis as the step scalars (`{split}/step/...`).
        """
        for split, split_result in result.items():
            if isinstance(split_result, Mapping):
                write_scalars(self.writer, split_result, split, self.steps)
        if self.writer is not None:
            self.writer.flush()

    def write_hparams(self) -> None:
        r"""
        Write the hyper-parameters and the best score (`hparams/best_{score_name}`) to TensorBoard's hparams view.
        """
        if self.writer is None or self.best_score is None:
            return
        metric = {f"hparams/best_{self.config.get('score_name', 'loss')}": float(self.best_score)}
        write_hparams(self.writer, hparam_values(to_plain(self.config.dict())), metric, self.steps)
        self.writer.flush()

    def announce(self, mode: str) -> None:
        r"""
        At the start of `train`/`evaluate`: log the [start banner][danling.runner.reporting.banner.banner_lines] and
        write
        [`config.yaml`][danling.runner.BaseRunner.write_config] (main process only; an evaluation with `log` and
        `tensorboard` off writes no file).

        Args:
            mode: `train` or `evaluate`.
        """
        if not self.is_main_process:
            return
        log_banner(self, mode)
        if mode == "train" or self.logger is not None or self.writer is not None:
            self.write_config()

    @on_main_process
    def write_config(self) -> str:
        r"""
        Write the config to `dir/config.yaml` (atomically, safe-loadable YAML) without progress counters, so that
        `python train.py --config <dir>/config.yaml` reruns the run with the same hyper-parameters and id.

        Returns:
            The path written.
        """
        return write_config_file(self.config, self.dir, log=self.logger)

    @on_main_process
    def save_result(self) -> None:
        r"""
        Write `results.json` (every result), `latest.json` and, when the latest is the best, `best.json` in `dir`.
        """
        self.result_writer()()

    def result_writer(self) -> Callable[[], None]:
        r"""
        What [`save_result`][danling.runner.BaseRunner.save_result] writes, taken now, as a function writing it
        later (after a background checkpoint save commits).
        """
        header = {"name": self.name, "id": self.id, "timestamp": self.timestamp}
        results = {**header, "results": to_plain(self.results)}
        latest = {**header, **to_plain(self.latest_result or {})}
        directory, is_best = self.dir, self.is_best

        def write() -> None:
            save(results, os.path.join(directory, "results.json"), indent=4)
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


def _flatten_single(result: Mapping) -> dict:
    # Metrics of a single task come back as {"task": {...}}: lift them so results read result["acc"].
    return {key: next(iter(v.values())) if isinstance(v, Mapping) and len(v) == 1 else v for key, v in result.items()}
