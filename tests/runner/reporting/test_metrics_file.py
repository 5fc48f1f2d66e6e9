"""
`metrics.jsonl`: one line per log step and per epoch result; a run killed for real (SIGKILL, SIGTERM) and resumed
(`auto_resume`, or `--checkpoint` into a new run directory) leaves the file an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from danling.runner.callbacks.jsonl import FIELDS, METRICS_FILE, keeps_record, read_records, record_values
from danling.runner.reporting.telemetry import TELEMETRY_KEYS
from danling.runner.rundir.continuation import Continuation

from ..workers.recorded_job import RecordedRunner, job_config

WORKER = Path(__file__).parents[1] / "workers" / "recorded_job.py"


def launch(subprocess_run, out_dir: Path, *args: str, status: int = 0) -> str:
    r"""Run the job once; the run directory it wrote to."""
    result = subprocess_run([sys.executable, str(WORKER), str(out_dir), *args], timeout=300)
    assert result.returncode == status, result.stderr[-3000:]
    return next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("run directory: "))


def uninterrupted(out_dir: Path, **changes) -> list[dict]:
    runner = RecordedRunner(job_config(str(out_dir), auto_resume=False, **changes))
    runner.train()
    runner.close()
    return records(runner.dir)


def records(run_dir: str) -> list[dict]:
    r"""The records of `metrics.jsonl`, without what differs between identical runs: wall clock and throughput."""
    found = []
    with open(os.path.join(run_dir, METRICS_FILE), encoding="utf-8") as fp:
        for line in fp:
            record = json.loads(line)
            assert isinstance(record.pop("time"), float)
            values = record_values(record)
            record = {key: value for key, value in record.items() if key in FIELDS}
            record["values"] = {key: value for key, value in values.items() if key not in TELEMETRY_KEYS}
            found.append(record)
    return found


def expected_positions(batches: int, val_batches: int, epochs: int, interval: int, accum: int) -> list[tuple]:
    r"""
    `(step, epoch, split, event, batch)` of every record, from a hand-written schedule: log lines every `interval`
    batches counted over the run (per mode), an optimizer step every `accum` batches and at an epoch's end.
    """
    positions, steps, train_seen, val_seen = [], 0, 0, 0
    for epoch in range(epochs):
        for batch in range(batches):
            train_seen += 1
            if (batch + 1) % accum == 0 or batch == batches - 1:
                steps += 1
            if train_seen % interval == 0:
                positions.append((steps, epoch, "train", "log", batch))
        positions.append((steps, epoch, "train", "result", None))
        for batch in range(val_batches):
            val_seen += 1
            if val_seen % interval == 0:
                positions.append((steps, epoch, "val", "log", batch))
        positions.append((steps, epoch, "val", "result", None))
    return positions


def positions(found: list[dict]) -> list[tuple]:
    return [(r["step"], r["epoch"], r["split"], r["event"], r.get("batch")) for r in found]


def test_a_record_holds_its_fields_and_its_values_side_by_side(tmp_path):
    runner = RecordedRunner(job_config(str(tmp_path / "run"), auto_resume=False))
    runner.train()
    runner.close()
    with open(os.path.join(runner.dir, METRICS_FILE), encoding="utf-8") as fp:
        lines = [json.loads(line) for line in fp]
    log = next(record for record in lines if record["event"] == "log" and record["split"] == "train")
    assert {"step", "epoch", "split", "time", "loss", "lr", "step_time"} <= set(log)
    assert isinstance(log["time"], float)
    assert log["time"] > 1e9  # the wall clock: seconds since 1970
    assert 0 < log["step_time"] < 60  # the log line's seconds per step, renamed beside the record's `time`
    assert record_values(log)["time"] == log["step_time"]
    final = [record for record in lines if record["event"] == "result" and record["split"] == "train"][-1]
    assert (final["step"], final["epoch"]) == (runner.steps, runner.epochs)
    assert final["loss"] == pytest.approx(runner.results[runner.epochs]["train"]["loss"])


@pytest.mark.slow
def test_sigkilled_twice_and_auto_resumed_the_file_is_the_uninterrupted_one(tmp_path, subprocess_run):
    expected = uninterrupted(tmp_path / "whole")
    assert positions(expected) == expected_positions(batches=5, val_batches=3, epochs=3, interval=2, accum=1)
    out = tmp_path / "killed"
    # Killed after the log line of step 8, past the mid-epoch checkpoint of step 6 (epoch 1, batch 1)...
    first = launch(subprocess_run, out, "--kill-at", "8", status=-9)
    assert positions(records(first))[-1] == (8, 1, "train", "log", 2)  # a line past the checkpoint
    # ...then after the log line of step 12, past the epoch-end checkpoint of step 10 (the save of step 12 is after).
    second = launch(subprocess_run, out, "--kill-at", "12", status=-9)
    assert second == first  # auto_resume continues in the run directory of its checkpoint
    assert positions(records(second))[-1] == (12, 2, "train", "log", 1)
    third = launch(subprocess_run, out)
    assert third == first
    assert records(third) == expected  # none missing, none repeated, the same values


@pytest.mark.slow
def test_preempted_and_continued_in_a_new_directory_with_accumulation(tmp_path, subprocess_run):
    expected = uninterrupted(tmp_path / "whole", accum_steps=2, log_interval=1)
    assert positions(expected) == expected_positions(batches=5, val_batches=3, epochs=3, interval=1, accum=2)
    out = tmp_path / "preempted"
    common = ("--accum-steps", "2", "--log-interval", "1", "--no-auto-resume")
    # SIGTERM at the log line of batch 2 of epoch 1 (mid-window, step 4): it saves after batch 3 (step 5), exits 143.
    first = launch(subprocess_run, out, *common, "--kill-at", "4", "--kill-batch", "2", "--signal", "TERM", status=143)
    assert positions(records(first))[-1] == (5, 1, "train", "log", 3)
    before = (Path(first) / METRICS_FILE).read_text()
    second = launch(subprocess_run, out, *common, "--checkpoint", first)
    assert second != first  # a new run directory...
    assert records(second) == expected  # ...holding the whole history
    assert (Path(first) / METRICS_FILE).read_text() == before  # the checkpoint's run directory is left as it was


def test_no_file_without_log(tmp_path):
    runner = RecordedRunner(job_config(str(tmp_path), auto_resume=False, log=False, epoch_end=1))
    runner.train()
    assert not os.path.exists(os.path.join(runner.dir, METRICS_FILE))


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "epoch": 0}\nnot json\n{"step": 2, "epoch": 0}\n{"step": 3, "ep')
    assert [record["step"] for _, record in read_records(str(path))] == [1, 2]


def test_a_mid_epoch_checkpoint_keeps_the_splits_finished_before_it():
    # Epoch 2 trains `a` (finished), then `b` (4 batches in at step 20), then evaluates `val`.
    at = Continuation(steps=20, epoch=2, split="b", batches=4, finished=("a",))

    def line(split, event, step, batch=None, mode="train", epoch=2):
        return {"step": step, "epoch": epoch, "split": split, "mode": mode, "event": event, "batch": batch}

    kept = [
        line("val", "result", 10, epoch=1, mode="evaluate"),
        line("a", "log", 15, batch=3),
        line("a", "result", 16),
        line("b", "log", 19, batch=2),
        line("b", "log", 20, batch=3),
    ]
    dropped = [
        line("b", "log", 20, batch=4),  # the same step, after the checkpoint (accumulation)
        line("b", "log", 21, batch=5),
        line("b", "result", 22),
        line("val", "log", 22, batch=0, mode="evaluate"),
        line("a", "log", 23, batch=0, epoch=3),
    ]
    assert [keeps_record(record, at) for record in kept] == [True] * len(kept)
    assert [keeps_record(record, at) for record in dropped] == [False] * len(dropped)
