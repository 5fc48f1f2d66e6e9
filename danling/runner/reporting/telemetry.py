"""Telemetry of a run: throughput, FLOPs and MFU, data-wait and compute time, peak memory, step lines and TensorBoard
scalars.

Everything here is read at log steps and epoch ends only: the hot loop pays two `time.perf_counter()` calls per
batch (around fetching it) and never a host-device synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from danling.utils import distributed as dist_utils

from .flops import ModelFlops

# Metrics that only mean something over a whole dataset: left out of step lines and step scalars, where they would
# be computed on one batch, and kept for the epoch result.
DATASET_LEVEL_METRICS = frozenset({"auroc", "auprc", "pearson", "spearman"})

# How step-line keys are shown, and with which format.
DISPLAY_NAMES = {"samples_per_s": "samples/s", "tokens_per_s": "tokens/s", "tflops": "TFLOP/s"}
# Units shown after a value in step lines: `time` there is seconds per optimizer step.
STEP_UNITS = {"time": " s/step"}
FORMATS = {
    "lr": ".1e",
    "samples_per_s": ".1f",
    "tokens_per_s": ".1f",
    "tflops": ".3g",
    "mfu": ".1%",
    "time": ".3f",
    "epoch_time": ".2f",
    "data_time": ".2f",
    "compute_time": ".2f",
    "peak_memory_mib": ".0f",
}

# Keys the telemetry adds to epoch results: measurements of the machine, which differ between identical runs.
TELEMETRY_KEYS = frozenset(
    {
        "samples_per_s",
        "tokens_per_s",
        "tflops",
        "mfu",
        "time",
        "epoch_time",
        "data_time",
        "compute_time",
        "peak_memory_mib",
    }
)

# Number of bytes in a mebibyte, for peak memory.
MIB = 2**20


class Telemetry:
    r"""
    Clocks and counters of a runner's epochs: samples and tokens per second, achieved TFLOP/s per device and MFU
    (training, see [`ModelFlops`][danling.runner.reporting.flops.ModelFlops]), seconds per step, time spent waiting
    for data versus computing, and peak CUDA memory.

    [`iterate`][danling.runner.reporting.telemetry.Telemetry.iterate] wraps a loader and times each fetch;
    [`step_stats`][danling.runner.reporting.telemetry.Telemetry.step_stats] (at log steps) and
    [`epoch_stats`][danling.runner.reporting.telemetry.Telemetry.epoch_stats] (at epoch ends) turn the counters into
    numbers.
    Step rates estimate the samples of every process as `world_size` times this process's (no collective at log
    steps); epoch numbers are exact (see [`epoch_stats`][danling.runner.reporting.telemetry.Telemetry.epoch_stats]).
    A mapping batch with a `num_tokens` entry (an integer or a tensor) also gives tokens per second.

    Args:
        device: Device of the run; peak memory is measured on CUDA devices only.
        world_size: Number of processes.
        flops: The model's FLOPs per training sample (default: counted on the first training micro-step).

    Examples:
        >>> telemetry = Telemetry(torch.device("cpu"))
        >>> telemetry.start_epoch("train")
        >>> batches = list(telemetry.iterate([torch.zeros(4, 2), torch.zeros(3, 2)]))
        >>> stats = telemetry.epoch_stats()
        >>> telemetry.samples, sorted(stats)
        (7, ['compute_time', 'data_time', 'epoch_time', 'samples_per_s'])
    """

    def __init__(self, device: torch.device, world_size: int = 1, flops: ModelFlops | None = None) -> None:
        self.device = device
        self.world_size = world_size
        self.flops = ModelFlops(device=device) if flops is None else flops
        self.mode = "train"
        self.batches = 0
        self.samples = 0
        self.tokens: Any = 0
        self.data_time = 0.0
        self.epoch_start = time.perf_counter()
        self.run_batches: dict[str, int] = {}  # saved in checkpoints: log steps keep their places after a resume
        self.replayed = 0  # batches of the epoch a resume fast-forwarded past (never iterated here)
        self._last = (self.epoch_start, 0, 0, 0, 0)

    def start_epoch(self, mode: str, steps: int = 0) -> None:
        r"""
        Reset the epoch's counters and clocks (and the CUDA peak-memory statistics).

        Args:
            mode: `train`, `evaluate` or `infer`: batches are counted over the run per mode, for `log_interval`.
            steps: Optimizer steps taken so far.
        """
        self.mode = str(mode)
        self.batches = self.samples = self.replayed = 0
        self.tokens = 0
        self.data_time = 0.0
        self.epoch_start = time.perf_counter()
        self._last = (self.epoch_start, 0, 0, 0, steps)
        if self.device.type == "cuda" and torch.cuda.is_initialized():  # before CUDA starts there is no peak
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextmanager
    def set_aside(self) -> Iterator[None]:
        r"""
        Keep the epoch's counters and clocks through a nested epoch (an evaluation inside a training epoch,
        `eval_steps`): they are put back when the block ends, its time left out of the epoch's time and of the next
        step rates. The nested epoch's batches still count in the run's (`run_batches`). CUDA's peak-memory
        statistics, reset by the nested epoch, cannot be put back: the epoch's peak counts from its end.
        """
        saved = (self.mode, self.batches, self.samples, self.tokens, self.data_time, self.epoch_start, self._last)
        began = time.perf_counter()
        try:
            yield
        finally:
            paused = time.perf_counter() - began
            self.mode, self.batches, self.samples, self.tokens, self.data_time, start, last = saved
            self.epoch_start = start + paused
            self._last = (last[0] + paused, *last[1:])

    @property
    def batches_before(self) -> int:
        r"""Batches of the current mode in earlier epochs of this run (log steps are counted over the run)."""
        return self.run_batches.get(self.mode, 0)

    def iterate(self, loader: Iterable) -> Iterator:
        r"""
        Yield the batches of `loader`, adding the time spent fetching each one to `data_time` and counting them.

        Args:
            loader: Any iterable of batches.

        Yields:
            The batches, unchanged.
        """
        clock = time.perf_counter
        start = clock()
        for batch in loader:
            self.data_time += clock() - start
            self.batches += 1
            cls = type(batch)
            if cls is tuple or cls is list:  # the common `(input, target)` batch: no tokens to look for
                self.samples += batch_length(batch)
            else:
                self._count_batch(batch)
            yield batch
            start = clock()

    def _count_batch(self, batch: Any) -> None:
        self.samples += batch_length(batch)
        if isinstance(batch, Mapping) and "num_tokens" in batch:
            tokens = batch["num_tokens"]
            self.tokens = self.tokens + (tokens.sum() if isinstance(tokens, torch.Tensor) else tokens)

    def step_stats(self, steps: int | None = None) -> dict[str, float]:
        r"""
        Rates since the previous call (or the start of the epoch): `samples_per_s`, `tokens_per_s` when known,
        `tflops` and `mfu` in training once the FLOPs are known, and `time`, seconds per optimizer step when `steps`
        advanced, else per batch.

        Args:
            steps: Optimizer steps taken so far (`None` outside training).

        Returns:
            The rates.
        """
        now = time.perf_counter()
        last_time, last_batches, last_samples, last_tokens, last_steps = self._last
        tokens = _as_number(self.tokens)
        elapsed = max(now - last_time, 1e-9)
        steps_done = 0 if steps is None else steps - last_steps
        per = steps_done if steps_done > 0 else max(self.batches - last_batches, 1)
        stats = {"samples_per_s": (self.samples - last_samples) * self.world_size / elapsed}
        if tokens:
            stats["tokens_per_s"] = (tokens - last_tokens) * self.world_size / elapsed
        if steps is not None:  # training: this device's samples times the training FLOPs of each
            stats.update(self.flops.rates((self.samples - last_samples) / elapsed))
        stats["time"] = elapsed / per
        self._last = (now, self.batches, self.samples, tokens, last_steps if steps is None else steps)
        return stats

    def epoch_stats(self) -> dict[str, float]:
        r"""
        The epoch's `samples_per_s`, `tokens_per_s` (when known), `tflops` per device and `mfu` (training, when
        known), `epoch_time`, `data_time` (waiting for batches), `compute_time` (the rest) in seconds, and
        `peak_memory_mib` on CUDA. Adds the epoch's batches to the run's.

        When distributed, samples, tokens and FLOPs are summed over the processes, times averaged and peak memory
        is the largest of any process, so every process gets the same numbers (one small collective per epoch).

        Returns:
            The numbers, ready to merge into the epoch result.
        """
        local_time = max(time.perf_counter() - self.epoch_start, 1e-9)
        flops = (self.flops.per_sample or 0.0) * self.samples if self.mode == "train" else 0.0
        numbers = [float(self.samples), _as_number(self.tokens), flops, local_time, self.data_time]
        samples, tokens, flops, epoch_time, data_time = _sum_and_average(numbers, dist_utils.is_distributed())
        stats = {"samples_per_s": samples / epoch_time}
        if tokens:
            stats["tokens_per_s"] = tokens / epoch_time
        if flops:  # the FLOPs of every device over the epoch, per device and second
            stats.update(self.flops.rates_of(flops / self.world_size / epoch_time / 1e12))
        stats["epoch_time"] = epoch_time
        stats["data_time"] = data_time
        stats["compute_time"] = max(epoch_time - data_time, 0.0)
        if self.device.type == "cuda":
            stats["peak_memory_mib"] = _peak_memory(self.device) / MIB
        self.run_batches[self.mode] = self.batches_before + self.replayed + self.batches
        self.batches = 0
        return stats


def average_numbers(result: Any, skip: set[str], reduce: Any) -> None:
    r"""
    Replace the numbers of `result` (a `NestedDict`, but the keys in `skip`) with their `reduce` (the mean over
    ranks, a collective), all in one call.

    Examples:
        >>> from chanfig import NestedDict
        >>> result = NestedDict({"loss": 1.0, "acc": 0.5, "name": "x"})
        >>> average_numbers(result, {"loss"}, lambda tensor: tensor * 2)
        >>> result.dict()
        {'loss': 1.0, 'acc': 1.0, 'name': 'x'}
    """
    keys = [key for key, value in result.all_items() if key not in skip and isinstance(value, (int, float))]
    if not keys:
        return
    averaged = reduce(torch.tensor([float(result[key]) for key in keys], dtype=torch.float64)).tolist()
    for key, value in zip(keys, averaged):
        result[key] = value


def _sum_and_average(numbers: list[float], distributed: bool) -> list[float]:
    # Counts (samples, tokens, FLOPs) summed over processes, times (the rest) averaged.
    if not distributed:
        return numbers
    totals = dist_utils.all_reduce(torch.tensor(numbers, dtype=torch.float64), op="sum").tolist()
    world_size = dist_utils.get_world_size()
    return totals[:3] + [value / world_size for value in totals[3:]]


def _peak_memory(device: torch.device) -> float:
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    if dist_utils.is_distributed():
        from torch import distributed as dist

        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak)


def without_telemetry(results: Mapping) -> dict:
    r"""
    A copy of (nested) results without the telemetry keys: the numbers that identical runs reproduce exactly.

    Examples:
        >>> without_telemetry({0: {"train": {"loss": 0.5, "samples_per_s": 812.0, "epoch_time": 1.2}}})
        {0: {'train': {'loss': 0.5}}}
    """
    return {
        key: without_telemetry(value) if isinstance(value, Mapping) else value
        for key, value in results.items()
        if key not in TELEMETRY_KEYS
    }


def batch_length(batch: Any) -> int:
    r"""
    Samples in a batch: the first dimension of its first tensor (`target`/`input` of a mapping first).

    Examples:
        >>> batch_length((torch.zeros(5, 3), torch.zeros(5)))
        5
        >>> batch_length({"input": torch.zeros(2, 7), "num_tokens": 14})
        2
        >>> batch_length("text")
        1
    """
    cls = type(batch)
    if cls is tuple or cls is list:  # the common case first, with exact type checks (no ABC machinery)
        if not batch:
            return 1
        first = batch[0]
        if type(first) is torch.Tensor:
            return first.shape[0] if first.ndim else 1
        return batch_length(first)
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    if isinstance(batch, Mapping):
        for key in ("input", "target"):
            if key in batch:
                return batch_length(batch[key])
        return batch_length(next(iter(batch.values()))) if batch else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_length(batch[0])
    return 1


def _as_number(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value)  # read at log steps and epoch ends only
    return float(value)


def is_dataset_level(name: str) -> bool:
    r"""
    Whether a metric name (possibly dotted, as in `task.auroc`) names a dataset-level metric.

    Examples:
        >>> is_dataset_level("auroc"), is_dataset_level("task.spearman"), is_dataset_level("acc")
        (True, True, False)
    """
    return str(name).rsplit(".", 1)[-1] in DATASET_LEVEL_METRICS


def step_view(result: Mapping) -> dict[str, Any]:
    r"""
    The numbers of a step result worth showing for one batch: flattened, without dataset-level metrics.

    Examples:
        >>> step_view({"loss": 0.5, "auroc": 0.9, "task": {"acc": 1.0, "pearson": 0.1}})
        {'loss': 0.5, 'task.acc': 1.0}
    """
    return {name: value for name, value in _flatten(result) if not is_dataset_level(name)}


def format_step_values(values: Mapping[str, Any], format_spec: str = ".4f") -> str:
    r"""
    Tab-separated `name: value` pairs of a step line: the learning rate as `3.2e-04`, throughput as `samples/s`.

    Examples:
        >>> format_step_values({"loss": 0.25, "lr": 3.2e-4, "samples_per_s": 1234.56, "time": 0.0123})
        'loss: 0.2500\tlr: 3.2e-04\tsamples/s: 1234.6\ttime: 0.012 s/step'
    """
    return "\t".join(f"{name}: {value}" for name, value in display_values(values, format_spec, step=True).items())


def display_values(result: Mapping, format_spec: str = ".4f", step: bool = False) -> dict[str, Any]:
    r"""
    A copy of a (nested) result for humans: throughput keys renamed (`samples/s`) and every number formatted as a
    string, the learning rate in scientific notation; in step lines (`step=True`) `time` reads `0.012 s/step`.

    Examples:
        >>> display_values({"val": {"loss": 0.5, "samples_per_s": 12.0}, "lr": 1e-3})
        {'val': {'loss': '0.5000', 'samples/s': '12.0'}, 'lr': '1.0e-03'}
    """
    shown: dict[str, Any] = {}
    for name, value in result.items():
        if not isinstance(value, (float, int)) and isinstance(value, Mapping):  # numbers skip the ABC check
            shown[name] = display_values(value, format_spec, step)
        else:
            unit = STEP_UNITS.get(name, "") if step else ""
            shown[DISPLAY_NAMES.get(name, name)] = _format_number(value, FORMATS.get(name, format_spec)) + unit
    return shown


def _format_number(value: Any, spec: str) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_number(item, spec) for item in value) + "]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _flatten(result: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in result.items():
        name = f"{prefix}{key}"
        if not isinstance(value, (float, int)) and isinstance(value, Mapping):  # numbers skip the ABC check
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def scalars(result: Mapping, prefix: str) -> Iterator[tuple[str, float]]:
    r"""
    TensorBoard tags and values of a (nested) result: `{prefix}/{metric}`, lists as `{prefix}/{metric}/{i}`.

    Examples:
        >>> list(scalars({"loss": 0.5, "task": {"acc": 1.0}, "f1": [0.1, 0.2], "name": "x"}, "val"))
        [('val/loss', 0.5), ('val/task/acc', 1.0), ('val/f1/0', 0.1), ('val/f1/1', 0.2)]
    """
    for name, value in _flatten(result):
        tag = f"{prefix}/{name.replace('.', '/')}"
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if _is_number(item):
                    yield f"{tag}/{index}", float(item)
        elif _is_number(value):
            yield tag, float(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_scalars(writer: Any, result: Mapping, prefix: str, step: int) -> None:
    r"""
    Write every number of `result` to a TensorBoard writer under `prefix` at `step` (no-op without a writer).

    Args:
        writer: A `SummaryWriter`, or `None`.
        result: A (nested) result.
        prefix: Tag prefix, e.g. `val` or `train/step`.
        step: Global step (the x-axis).
    """
    if writer is None:
        return
    for tag, value in scalars(result, prefix):
        writer.add_scalar(tag, value, step)


def hparam_values(config: Mapping) -> dict[str, Any]:
    r"""
    The config flattened to the types TensorBoard's hparams view takes (numbers, strings, booleans).

    Examples:
        >>> hparam_values({"optim": {"lr": 0.1}, "seed": None, "splits": ["a", "b"], "log": True})
        {'optim.lr': 0.1, 'seed': 'None', 'splits': "['a', 'b']", 'log': True}
    """
    values = {}
    for name, value in _flatten(config):
        if isinstance(value, (bool, int, float, str)):
            values[name] = value
        else:
            values[name] = str(value)
    return values


def write_hparams(writer: Any, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    r"""
    Write hyper-parameters and final metrics to TensorBoard's hparams view, in the writer's own event file.

    Args:
        writer: A `SummaryWriter`, or `None` (no-op).
        hparams: Flat hyper-parameters, see [`hparam_values`][danling.runner.reporting.telemetry.hparam_values].
        metrics: Tag to final value (e.g. `{"hparams/best_score": 0.97}`); written as scalars too.
        step: Global step of the final values.
    """
    if writer is None:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    experiment, start, end = hparams_summary(dict(hparams), dict(metrics))
    for tag, value in metrics.items():  # (re)opens the writer's event file when it was closed
        writer.add_scalar(tag, value, step)
    for summary in (experiment, start, end):  # in the run's own event file, not a run of its own as `add_hparams`
        writer.file_writer.add_summary(summary)
