"""`profile_steps`: a `torch.profiler` trace of chosen optimizer steps in `profiles/`, and the top operators logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from danling.runner import Config
from danling.runner.callbacks import ProfilerCallback

from .conftest import ClassifierRunner


def train(tmp_path: Path, **config: Any) -> ClassifierRunner:
    settings = {"dir": str(tmp_path / "run"), "log": True, "epoch_end": 2, "device": "cpu", "log_interval": 100}
    settings.update(dataloader={"batch_size": 8}, **config)  # 5 optimizer steps an epoch
    runner = ClassifierRunner(settings)
    runner.train()
    runner.close()
    return runner


def profiler_of(runner: ClassifierRunner) -> ProfilerCallback:
    return next(callback for callback in runner.callbacks if isinstance(callback, ProfilerCallback))


def test_trace_of_the_chosen_steps_and_the_top_operators_in_the_log(tmp_path):
    runner = train(tmp_path, profile_steps=[3, 7])  # across the epoch boundary (after step 5)
    traces = sorted((Path(runner.dir) / "profiles").glob("rank0.*.pt.trace.json"))
    assert [str(path) for path in traces] == profiler_of(runner).trace_files
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    names = [event.get("name", "") for event in trace["traceEvents"]]
    # One span per recorded optimizer step, 3 to 6, after step 2 warmed the profiler up.
    spans = sorted(name for name in names if name.startswith("ProfilerStep#"))
    assert spans == [f"ProfilerStep#{n}" for n in range(1, 5)]
    assert any(name == "aten::addmm" for name in names)
    assert any(event.get("ph") == "i" and "[memory]" in event.get("name", "") for event in trace["traceEvents"])
    log = Path(runner.log_file).read_text()
    assert "profile of optimizer steps 3 to 6 written to" in log
    table = log.split("top operators:\n", 1)[1].split("Self CPU time total", 1)[0].splitlines()
    for column in ("Name", "Self CPU", "CPU Mem"):
        assert column in table[1]
    rows = [line for line in table[3:] if not line.startswith("-")]
    assert 1 <= len(rows) <= 10  # at most ten operators
    start = table[0].index("  ") + 2  # the columns are separated as the dashes above the header are
    end = table[0].index("  ", start)
    assert table[1][start:end].strip() == "Self CPU %"
    self_times = [float(row[start:end].strip().rstrip("%")) for row in rows]
    assert self_times == sorted(self_times, reverse=True)


def test_from_the_first_step_and_ended_by_the_end_of_training(tmp_path):
    runner = train(tmp_path, profile_steps=[0, 100], epoch_end=1)
    assert len(profiler_of(runner).trace_files) == 1
    assert "profile of optimizer steps 0 to 4 written to" in Path(runner.log_file).read_text()


def test_no_profiler_unless_asked(tmp_path):
    runner = train(tmp_path, epoch_end=1)
    assert not any(isinstance(callback, ProfilerCallback) for callback in runner.callbacks)
    assert not (Path(runner.dir) / "profiles").exists()


@pytest.mark.parametrize("value", [[3], [5, 2], [2, 2], [-1, 2], [1.5, 3], "3,5", [True, 4], {"begin": 1}])
def test_profile_steps_accepts_two_increasing_step_numbers_only(value):
    with pytest.raises(ValueError, match=r"config key 'profile_steps' is .*; accepted values are \[begin, end\]"):
        Config({"profile_steps": value})


def test_profile_steps_from_the_command_line():
    assert Config().parse(["--profile_steps", "2", "5"], default_config=None).profile_steps == [2, 5]
