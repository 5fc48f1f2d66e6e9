"""Requeues that always resume: a changed run id, checkpoints that all fail, manifest-less files, complete runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danling.runner.checkpointing import CheckpointError, read_manifest

from ..workers.preemptible import JobRunner, job_config

WORKER = Path(__file__).parents[1] / "workers" / "preemptible.py"


def preempted_run(out_dir: Path) -> dict:
    # A real job, killed by SIGTERM at step 6 of 36 (it saves latest.pth and exits 143), as a cluster preempts it.
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out_dir), "--signal-at", "6", "--launch", "a"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 128 + 15, result.stderr[-2000:]
    report = json.loads((out_dir / "report-a-rank0.json").read_text())
    assert report["steps"] == 6
    return report


def requeue_config(out_dir: Path, **changes) -> dict:
    return job_config(str(out_dir), **changes)  # the worker's own config: the same run, launched again


@pytest.mark.parametrize(
    "change",
    [{"new_key": 1}, {"epoch_end": 4}, {"experiment_id": "feedfacecafebeef"}],
    ids=["new-config-key", "longer-epoch-end", "hotfix-commit"],
)
def test_auto_resume_finds_the_run_after_its_id_changed(tmp_path, change):
    report = preempted_run(tmp_path)
    requeued = JobRunner(requeue_config(tmp_path, **change))
    assert requeued.id not in report["dir"]  # another id...
    assert requeued.steps == 6  # ...but the same run, resumed
    assert requeued.dir == report["dir"]  # in its own run directory
    assert requeued.config.checkpoint == os.path.join(report["dir"], "checkpoints", "latest.pth")
    requeued.train()
    assert requeued.steps == 12 * (change.get("epoch_end", 3))
    requeued.close()
    log = Path(requeued.log_file).read_text()
    warning = next(line for line in log.splitlines() if "the run id changed" in line)
    assert "[WARNING]" in warning
    key, value = next(iter(change.items()))
    assert f"{key}" in warning
    assert log.count("starting fresh") == 1  # the first launch only


def test_auto_resume_stops_when_no_checkpoint_of_the_run_verifies(tmp_path):
    report = preempted_run(tmp_path)
    checkpoint_dir = Path(report["dir"]) / "checkpoints"
    damaged = sorted(path for path in checkpoint_dir.iterdir() if path.suffix == ".pth")
    assert damaged
    for path in damaged:  # truncate every checkpoint of the run
        with open(path, "r+b") as fp:
            fp.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="none verifies") as error, pytest.warns(RuntimeWarning):
        JobRunner(requeue_config(tmp_path))
    for path in damaged:
        assert path.name in str(error.value)
    # Launched once more, the files moved aside still stop it: it never starts the run afresh by itself.
    with pytest.raises(CheckpointError, match="moved aside as corrupt"):
        JobRunner(requeue_config(tmp_path))


def test_a_manifest_less_latest_is_reported_at_warning(tmp_path):
    report = preempted_run(tmp_path)
    checkpoint_dir = Path(report["dir"]) / "checkpoints"
    for manifest in checkpoint_dir.glob("*.manifest.json"):
        if not manifest.name.startswith("latest"):
            continue
        manifest.unlink()
    with pytest.warns(RuntimeWarning, match="latest.pth'.*no manifest"):
        requeued = JobRunner(requeue_config(tmp_path))
    assert requeued.config.checkpoint != str(checkpoint_dir / "latest.pth")
    requeued.close()
    log = Path(requeued.log_file).read_text()
    assert any("[WARNING]" in line and "no manifest" in line for line in log.splitlines())


REPLAN_WORKER = Path(__file__).parents[1] / "workers" / "replan_worker.py"


@pytest.mark.distributed
def test_two_ranks_resumed_on_one_process_follow_the_one_process_schedule(tmp_path, torchrun, subprocess_run):
    two = tmp_path / "two-ranks"
    torchrun(REPLAN_WORKER, str(two))  # 64 samples, batches of 8 on 2 ranks: 4 steps per epoch, 16 in all
    assert json.loads((two / "lrs.json").read_text())["steps"] == 16
    single = tmp_path / "single"
    straight = subprocess_run([sys.executable, str(REPLAN_WORKER), str(single)], timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((single / "lrs.json").read_text())  # 8 steps per epoch, 32 in all
    resumed_dir = tmp_path / "resumed"
    epoch_one = two / "checkpoints" / "epoch-1.pth"  # after 2 of 4 epochs on 2 ranks: step 8 of 16
    resumed = subprocess_run([sys.executable, str(REPLAN_WORKER), str(resumed_dir), str(epoch_one)], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((resumed_dir / "lrs.json").read_text())
    assert got["steps"] == 8 + 2 * 8  # its own steps: two more epochs of 8
    for epoch in ("2", "3"):  # from the resumed epoch on, the lr of every epoch is the 1-process run's
        assert got["lrs"][epoch] == pytest.approx(expected["lrs"][epoch], rel=1e-9, abs=1e-15)
    assert got["lrs"]["3"] == pytest.approx(0.0, abs=1e-12)  # the schedule ends where the plan ends
    log = (resumed_dir / "run.log").read_text()
    banner = log.split("differs from the defaults")[0]
    assert "16 -> 32 total steps; continues at step 16 of 32" in banner
    assert "global_batch changed from 16 to 8" in banner


BEST_KILL_WORKER = Path(__file__).parents[1] / "workers" / "best_kill_worker.py"


@pytest.mark.parametrize("instant", ["before-best", "before-json"])
def test_best_checkpoint_and_results_agree_after_a_kill_at_any_instant_of_a_save(tmp_path, instant, subprocess_run):
    from ..workers.best_kill_worker import BestRunner, config

    root = tmp_path / "experiments"
    killed = subprocess_run([sys.executable, str(BEST_KILL_WORKER), str(root), "1", instant], timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = next(root.glob("*/*"))
    checkpoints = run_dir / "checkpoints"
    latest = torch.load(checkpoints / "latest.pth", weights_only=True)
    assert sorted(latest["results"]) == [0, 1]  # epoch 1 was committed, then the kill
    resumed = BestRunner(config(str(root)))  # the requeue
    assert resumed.dir == str(run_dir)
    assert resumed.best_index == 1
    best = torch.load(checkpoints / "best.pth", weights_only=True)
    assert best["runner"]["epochs"] == 1  # best.pth holds the epoch the results name the best
    assert torch.equal(best["model"]["weight"], latest["model"]["weight"])
    assert read_manifest(str(checkpoints / "best.pth"))["epochs"] == 1
    assert json.loads((run_dir / "best.json").read_text())["index"] == 1
    assert sorted(json.loads((run_dir / "results.json").read_text())["results"]) == ["0", "1"]
    resumed.train()
    assert sorted(resumed.results) == [0, 1, 2, 3]
    resumed.close()
    if instant == "before-best":
        assert "repaired best.pth: it held epoch 0" in (run_dir / "run.log").read_text()
