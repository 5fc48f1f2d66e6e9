"""
Preemption and requeue: real signals set a flag, the loop stops at the next optimizer step on every rank, saves
`latest.pth` and exits non-zero; the same command launched again continues exactly. Also a hung rank ended by
`dist_timeout`, and `save_checkpoint` called on rank 0 alone under `torchrun`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from danling.runner.checkpointing import read_manifest, verify_checkpoint
from danling.runner.distributed.preemption import Preempted, PreemptionHandler, parse_signals
from danling.runner.reporting.telemetry import without_telemetry

from ..workers.preemptible import JobRunner

WORKER = Path(__file__).parents[1] / "workers" / "preemptible.py"


def job_config(root: Path, **overrides) -> dict:
    config = {
        "project_root": str(root / "experiments"),
        "auto_resume": True,
        "seed": 5,
        "epoch_end": 3,
        "save_steps": 4,
        "log": True,
        "dataloader": {"batch_size": 4},
    }
    config.update(overrides)
    return config


def parameters(runner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]


def reports(out_dir: Path, launch: str) -> list[dict]:
    return [json.loads((out_dir / f"report-{launch}-rank{rank}.json").read_text()) for rank in range(2)]


# The handler


def test_parse_signals_accepts_names_and_numbers_and_rejects_others():
    assert parse_signals(["SIGTERM", "usr1", int(signal.SIGINT)]) == [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT]
    assert parse_signals(None) == []
    assert parse_signals([]) == []
    with pytest.raises(ValueError, match="'SIGNOPE'"):
        parse_signals(["SIGNOPE"])


def test_handler_only_records_and_puts_the_previous_handler_back():
    previous = signal.getsignal(signal.SIGUSR1)
    handler = PreemptionHandler(["SIGUSR1"])
    with handler:
        assert handler.active
        assert not handler.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.should_stop()
        assert handler.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert not PreemptionHandler([]).install()


def test_the_config_chooses_the_signals_caught(tmp_path):
    runner = JobRunner(job_config(tmp_path, log=False, auto_resume=False, preemption_signals="usr1"))
    assert runner.config.preemption_signals == ["SIGUSR1"]
    runner.actions[3] = lambda: os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(Preempted) as raised:
        runner.train()
    assert raised.value.code == 128 + signal.SIGUSR1
    assert runner.steps == 3
    with pytest.raises(ValueError, match="'preemption_signals' names 'SIGFOO'"):
        JobRunner(job_config(tmp_path, log=False, preemption_signals=["SIGTERM", "SIGFOO"]))


def test_one_process_reads_only_the_signal_flag_per_step_and_stops_at_the_signalled_step(tmp_path, monkeypatch):
    # Without save_steps or async_save, one process has nothing to agree on: the step boundary only reads the flag
    # the signal handler set, and asks `should_stop` once a signal has arrived.
    asked = []
    should_stop = PreemptionHandler.should_stop
    monkeypatch.setattr(PreemptionHandler, "should_stop", lambda self, *a: asked.append(1) or should_stop(self, *a))
    runner = JobRunner(job_config(tmp_path, log=False, auto_resume=False, save_steps=None))
    runner.actions[5] = lambda: os.kill(os.getpid(), signal.SIGUSR1)  # one of the default signals
    with pytest.raises(Preempted) as raised:
        runner.train()
    assert raised.value.code == 128 + signal.SIGUSR1
    assert runner.steps == 5
    assert asked == [1]  # at the signalled step only, not at the four boundaries before it
    latest = Path(runner.checkpoint_dir) / "latest.pth"
    verify_checkpoint(latest)
    assert read_manifest(str(latest))["steps"] == 5
    runner.close()


# One process: a real SIGTERM, then the same job launched again


def test_sigterm_stops_at_the_next_step_and_a_requeued_job_continues_exactly(tmp_path):
    straight = JobRunner(job_config(tmp_path / "straight", log=False))
    straight.train()

    first = JobRunner(job_config(tmp_path / "job"))
    first.actions[7] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Preempted) as raised:
        first.train()
    assert raised.value.code == 128 + signal.SIGTERM
    assert first.steps == 7  # the step the signal arrived in, no further
    latest = Path(first.checkpoint_dir) / "latest.pth"
    verify_checkpoint(latest)
    assert read_manifest(str(latest))["steps"] == 7
    log = Path(first.log_file).read_text()
    assert "preempted by SIGTERM" in log
    assert "exiting with status 143" in log
    first.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone once train() returns

    requeued = JobRunner(job_config(tmp_path / "job"))  # the same command
    assert requeued.config.checkpoint == str(latest)
    assert requeued.dir == first.dir  # continues in the same launch directory
    assert requeued.steps == 7
    requeued.train()
    assert requeued.steps == straight.steps
    for ours, reference in zip(parameters(requeued), parameters(straight)):
        assert torch.equal(ours, reference)
    assert without_telemetry(requeued.results) == without_telemetry(straight.results)
    requeued.close()


def test_auto_resume_skips_a_corrupt_checkpoint_and_keeps_it_aside(tmp_path):
    first = JobRunner(job_config(tmp_path, log=False, epoch_end=1))
    first.train()
    checkpoint_dir = Path(first.checkpoint_dir)
    latest = checkpoint_dir / "latest.pth"
    with open(latest, "r+b") as fp:  # a flipped bit deep inside the file
        fp.seek(os.path.getsize(latest) // 2)
        byte = fp.read(1)
        fp.seek(-1, os.SEEK_CUR)
        fp.write(bytes([byte[0] ^ 0x10]))
    with pytest.warns(RuntimeWarning, match="auto_resume skips checkpoint"):
        again = JobRunner(job_config(tmp_path, log=False, epoch_end=1))
    assert (checkpoint_dir / "latest.pth.corrupt").exists()
    # A save's names share its bytes (hard links): the flip corrupts step-12 and best too, so the newest valid
    # checkpoint is the save before, step 8 (a `save_steps` save in the middle of epoch 0).
    assert first.steps == 12
    assert again.config.checkpoint == str(checkpoint_dir / "step-8.pth")
    assert again.steps == 8
    assert again.epoch_begin == 0


def test_auto_resume_starts_fresh_when_there_is_nothing(tmp_path):
    runner = JobRunner(job_config(tmp_path, log=False))
    assert runner.config.get("checkpoint") is None
    assert runner.steps == 0


# Two processes under torchrun


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_requeue_finishes(tmp_path, torchrun):
    # The ranks agree at every step here (preemption_check_steps: 1), so both stop at the signalled step.
    signal_at = ("--signal-at", "6", "--signal-rank", "1", "--check-steps", "1")
    stopped = torchrun(WORKER, str(tmp_path), *signal_at, "--launch", "a", check=False)
    assert stopped.returncode != 0
    first = reports(tmp_path, "a")
    assert [report["outcome"] for report in first] == ["exit 143", "exit 143"], first
    assert [report["steps"] for report in first] == [6, 6]
    assert [report["rank0_only_save"] for report in first] == ["done", "done"]  # no collective inside it
    run_dir = Path(first[0]["dir"])
    assert verify_checkpoint(run_dir / "checkpoints" / "rank0-only.pth")
    latest = run_dir / "checkpoints" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    assert state["runner"]["steps"] == 6
    assert len(state["rng"]) == 2  # the loop gathered every rank's state before it saved
    assert state["position"]["split"] == "train"
    assert state["position"]["batches"] == 6
    assert "preempted by SIGTERM" in (run_dir / "run.log").read_text()
    mid_epoch = tmp_path / "mid-epoch.pth"
    shutil.copyfile(latest, mid_epoch)

    finished = torchrun(WORKER, str(tmp_path), "--launch", "b")
    assert finished.returncode == 0
    second = reports(tmp_path, "b")
    assert [report["outcome"] for report in second] == ["finished", "finished"]
    assert [report["start_steps"] for report in second] == [6, 6]
    assert second[0]["dir"] == str(run_dir)
    assert second[0]["steps"] == 3 * 6  # 48 samples, 2 ranks, batches of 4: 6 steps per epoch
    assert second[0]["parameters"] == second[1]["parameters"]

    # An epoch-boundary checkpoint of two ranks resumes on one, with a warning naming both sizes when training
    # starts (loading it to evaluate is not resuming, and says nothing).
    single = JobRunner(
        {"dir": str(tmp_path / "single"), "log": False, "checkpoint": str(run_dir / "checkpoints" / "epoch-1.pth")}
    )
    assert single.steps == 12
    assert single.epoch_begin == 2
    with pytest.warns(RuntimeWarning, match="world_size 2 on world_size 1"):
        single.train()
    # A mid-epoch one continues its epoch on one process after the 48 samples its 6 steps consumed (here the
    # whole epoch), then trains the next two in steps of 4 samples.
    resumed = JobRunner({"dir": str(tmp_path / "single2"), "log": False, "checkpoint": str(mid_epoch)})
    assert resumed.steps == 6
    with pytest.warns(RuntimeWarning, match="world_size 2 on world_size 1"):
        resumed.train()
    assert resumed.steps == 6 + 2 * 12


@pytest.mark.parametrize(
    ("args", "stop", "split"),
    [
        # A check every 4 steps, over a gloo group of their own (as under nccl): the signal at step 1 stops both
        # ranks at step 4, in the middle of the epoch.
        pytest.param(("--check-steps", "4", "--own-channel"), 4, "train", id="next-check"),
        # The default (16): the epoch's end (step 6) comes first, and its agreement stops both there.
        pytest.param((), 6, None, id="epoch-end"),
    ],
)
def test_a_signal_stops_every_rank_at_the_next_check(tmp_path, torchrun, args, stop, split):
    result = torchrun(WORKER, str(tmp_path), "--signal-at", "1", "--signal-rank", "1", *args, check=False)
    assert result.returncode != 0
    ranks = reports(tmp_path, "0")
    assert [report["outcome"] for report in ranks] == ["exit 143", "exit 143"], ranks
    assert [report["steps"] for report in ranks] == [stop, stop]
    state = torch.load(Path(ranks[0]["dir"]) / "checkpoints" / "latest.pth", weights_only=True)
    assert state["runner"]["steps"] == stop
    assert state["position"]["split"] == split
    assert f"stopped at step {stop}" in (Path(ranks[0]["dir"]) / "run.log").read_text()


def test_preemption_check_steps_must_be_a_positive_integer(tmp_path):
    runner = JobRunner(job_config(tmp_path, log=False, auto_resume=False, preemption_check_steps=0))
    with pytest.raises(ValueError, match="preemption_check_steps must be an integer >= 1.*got 0"):
        runner.train()


def test_a_hung_rank_ends_the_job_within_dist_timeout(tmp_path, torchrun):
    began = time.monotonic()
    result = torchrun(WORKER, str(tmp_path), "--hang-at", "3", "--dist-timeout", "5", "--launch", "h", check=False)
    elapsed = time.monotonic() - began
    assert result.returncode != 0
    report = json.loads((tmp_path / "report-h-rank0.json").read_text())
    assert "Timed out" in report["outcome"] or "timed out" in report["outcome"]
    assert report["steps"] == 3
    assert report["ended"] - report["started"] < 5 + 15  # the bound, with slack for a loaded machine
    assert elapsed < 120  # the launcher then stops the hung rank (SIGTERM twice ends it: no 30-minute wait)
    log = (Path(report["dir"]) / "run.log").read_text()
    assert "dist_timeout" in log


ESCALATION = """
import os, signal, sys, time
from danling.runner.distributed.preemption import PreemptionHandler
handler = PreemptionHandler(["SIGUSR1"], grace=0.5)
handler.install()
os.kill(os.getpid(), signal.SIGUSR1)
print("flagged", handler.received is not None, flush=True)
time.sleep(60)  # stuck: never reaches a step boundary
print("still alive", flush=True)
"""


def test_a_stuck_process_is_ended_once_the_grace_period_passes(subprocess_run):
    began = time.monotonic()
    result = subprocess_run([sys.executable, "-c", ESCALATION], timeout=60)
    assert result.returncode == -signal.SIGUSR1, result.stderr
    assert "flagged True" in result.stdout
    assert "still alive" not in result.stdout
    assert time.monotonic() - began < 40
