"""`metrics.jsonl`: every log step and every epoch result of a run, one JSON object a line, across resumes.

[`MetricsFileCallback`][danling.runner.callbacks.jsonl.MetricsFileCallback] writes it in the run directory (the
runner adds it with `log`, on the main process). A line:

```json
{"step": 12, "epoch": 1, "split": "train", "mode": "train", "event": "log", "batch": 3, "time": 1733480000.123,
 "loss": 0.4210, "lr": 0.01, "samples_per_s": 5120.4, "step_time": 0.006}
```

The values sit beside the record's fields (`pandas.read_json(path, lines=True)` gives a column each); a value named
like a field is renamed: the seconds per step of the log line, `time` there, is `step_time`
([`record_values`][danling.runner.callbacks.jsonl.record_values] gives a record's values back).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from danling.utils.io import encode_non_finite, flatten, to_plain, write_atomic

from ..reporting.telemetry import step_view
from ..rundir.continuation import Continuation, continuation_of
from .base import Callback

__all__ = ["METRICS_FILE", "MetricsFileCallback", "read_records", "keeps_record", "record_values"]

METRICS_FILE = "metrics.jsonl"
# The fields of a record; a value of the same name is written under another (`time` of a step line: `step_time`).
FIELDS = ("step", "epoch", "split", "mode", "event", "batch", "time")
RENAMED = {"time": "step_time"}


class MetricsFileCallback(Callback):
    r"""
    Appends a line to `metrics.jsonl` in the run directory for every log step (`event: "log"`, the step result
    the log line shows, with the `batch` of the epoch it shows) and every epoch result of a train or evaluate
    split (`event: "result"`), with the global optimizer `step`, the `epoch`, the `split`, the `mode`, the wall
    clock `time` (seconds since the epoch) and, beside them, the values (flattened as `task.acc`; NaN and
    infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` so that each line is strict JSON; a value named
    like a field renamed, `time` to `step_time`).

    A run that loaded a checkpoint (`auto_resume`, `checkpoint`, `from_checkpoint`) starts its file with the lines
    its run recorded up to that checkpoint and drops those recorded after it, which it records again: killed and
    resumed any number of times, the file holds each record once, as an uninterrupted run writes it (but for
    `time` and the throughput values). When it continues in a new run directory (`--checkpoint` without
    `auto_resume`), those lines are copied from the checkpoint's run directory, which is left as it was.

    Each line is written and flushed on its own, at log steps and epoch ends only (nothing per batch), so a killed
    run loses at most the line being written; a torn last line is dropped when the run resumes.
    """

    def __init__(self) -> None:
        self.path: str | None = None

    def on_train_begin(self, runner: Any) -> None:
        self.prepare(runner)

    def on_log(self, runner: Any, split: str, result: Mapping) -> None:
        batch = runner.log_position[0]
        self.write(
            runner, {"split": split, "mode": str(runner.mode), "event": "log", "batch": batch}, step_view(result)
        )

    def on_epoch_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.write(runner, {"split": split, "mode": str(runner.mode), "event": "result"}, flatten(result))

    def on_evaluate_end(self, runner: Any, split: str, result: Mapping) -> None:
        self.write(runner, {"split": split, "mode": str(runner.mode), "event": "result"}, flatten(result))

    def prepare(self, runner: Any) -> str:
        r"""
        The file to append to, set up on first use: for a run that loaded a checkpoint, rewritten (atomically) to
        the lines its run recorded up to that checkpoint; otherwise appended to as it is.

        Returns:
            Its path.
        """
        if self.path is not None:
            return self.path
        path = os.path.join(runner.dir, METRICS_FILE)
        at = continuation_of(runner.resume_record, runner.config.get("checkpoint"))
        if at is not None:
            source = history_file(at, path)
            if source is None and at.steps > 0:
                runner.log(
                    f"{METRICS_FILE}: no {METRICS_FILE} of the run that saved the checkpoint was found in "
                    f"{at.source!r}; the file starts at step {at.steps}",
                    logging.WARNING,
                )
            kept = [line for line, record in read_records(source) if keeps_record(record, at)] if source else []
            write_atomic(path, lambda temporary: _write_lines(temporary, kept))
        self.path = path
        return path

    def write(self, runner: Any, header: dict[str, Any], values: Mapping) -> None:
        r"""Append the record of `header` and `values` at the runner's step and epoch."""
        path = self.prepare(runner)
        record = {"step": runner.steps, "epoch": runner.epochs, **header, "time": round(time.time(), 3)}
        for name, value in encode_non_finite(to_plain(dict(values))).items():
            record[RENAMED.get(name, f"{name}_value") if name in FIELDS else name] = value
        line = json.dumps(record, default=str, allow_nan=False)
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(line + "\n")


def record_values(record: Mapping) -> dict[str, Any]:
    r"""
    The values of a `metrics.jsonl` record, under their names in the run (`step_time` back to `time`).

    Examples:
        >>> record_values({"step": 3, "epoch": 0, "split": "train", "time": 1.5, "loss": 0.25, "step_time": 0.01})
        {'loss': 0.25, 'time': 0.01}
    """
    names = {renamed: name for name, renamed in RENAMED.items()}
    return {names.get(key, key): value for key, value in record.items() if key not in FIELDS}


def history_file(at: Continuation, path: str) -> str | None:
    r"""
    The `metrics.jsonl` holding the records of the run up to the checkpoint `at`: the checkpoint's run directory's,
    else the one at `path` (a checkpoint kept outside its run directory, `checkpoint_dir`), else `None`.
    """
    if at.source is not None and os.path.isfile(os.path.join(at.source, METRICS_FILE)):
        return os.path.join(at.source, METRICS_FILE)
    return path if os.path.isfile(path) else None


def read_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    r"""
    Each complete line of a `metrics.jsonl` with its record; a line that is not a JSON object (torn by a kill) is
    skipped.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
        >>> with open(path, "w") as fp:
        ...     _ = fp.write('{"step": 1}\n{"step": 2}\n{"ste')
        >>> [record for _, record in read_records(path)]
        [{'step': 1}, {'step': 2}]
    """
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            if not line.endswith("\n"):
                return
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield line, record


def keeps_record(record: Mapping, at: Continuation) -> bool:
    r"""
    Whether `record` was written before the checkpoint `at` was saved, so that the run resumed from it does not
    write it again.

    Records of earlier epochs are kept. At an epoch boundary, the records of the checkpoint's epoch are too (the
    epoch was complete: its train and evaluation results are in). In a mid-epoch checkpoint, of its epoch only the
    records of the train splits finished before it and the log steps of its split before its batch are kept:
    the resumed run writes the rest of the epoch again. Nothing after the checkpoint's step is ever kept.

    Examples:
        >>> at = Continuation(steps=6, epoch=1, split="train", batches=2)
        >>> log = {"step": 6, "epoch": 1, "split": "train", "mode": "train", "event": "log", "batch": 1}
        >>> keeps_record(log, at), keeps_record({**log, "batch": 2}, at)
        (True, False)
        >>> epoch_end = Continuation(steps=5, epoch=0)
        >>> result = {"step": 5, "epoch": 0, "split": "val", "mode": "evaluate", "event": "result"}
        >>> keeps_record(result, epoch_end), keeps_record({**result, "epoch": 1}, epoch_end)
        (True, False)
    """
    step, epoch = record.get("step"), record.get("epoch")
    if not isinstance(step, int) or not isinstance(epoch, int) or step > at.steps or epoch > at.epoch:
        return False
    if epoch < at.epoch or not at.mid_epoch:
        return True
    if record.get("mode") != "train":
        return False
    if record.get("split") in at.finished:
        return True
    batch = record.get("batch")
    return (
        record.get("split") == at.split
        and record.get("event") == "log"
        and isinstance(batch, int)
        and (batch < at.batches)
    )


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        fp.writelines(lines)
