"""
The custom loop of `docs/guides/custom-loops.md`: a `train_epoch` written with public methods only keeps the log
lines, the `save_steps` checkpoints and preemption, and a SIGTERM'd job resumes inside its epoch and ends exactly
where an uninterrupted one does.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from danling.runner.reporting.telemetry import without_telemetry

from ..workers.custom_loop_worker import NoisyInputRunner, job_config

ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).parents[1] / "workers" / "custom_loop_worker.py"
GUIDE = ROOT / "docs" / "guides" / "custom-loops.md"


def parameters(runner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in runner.unwrap(runner.model).parameters()]


def launch(project_root: Path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), str(project_root), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_guide_shows_the_loop_the_test_runs():
    source = inspect.getsource(NoisyInputRunner.train_epoch)  # indented as in the class of the guide
    assert source in GUIDE.read_text(encoding="utf-8")


def test_a_custom_loop_preempted_mid_epoch_resumes_exactly(tmp_path):
    straight = NoisyInputRunner(job_config(str(tmp_path / "straight")))
    straight.train()
    assert straight.steps == 36  # 48 samples in batches of 4, 3 epochs

    # Step 17 is the fifth batch of epoch 1; save_steps=5 saved step 15 before it.
    stopped = launch(tmp_path / "job", "--signal-at", "17")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    (run_dir,) = [path.parent for path in (tmp_path / "job").rglob("run.log")]
    state = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)
    assert state["runner"]["steps"] == 17
    assert (state["position"]["epoch"], state["position"]["split"], state["position"]["batches"]) == (1, "train", 5)
    assert (run_dir / "checkpoints" / "step-15.pth").exists()  # a save_steps checkpoint of the custom loop

    requeued = NoisyInputRunner(job_config(str(tmp_path / "job")))  # the same job, launched again
    assert requeued.dir == str(run_dir)
    assert requeued.steps == 17
    requeued.train()
    assert requeued.steps == straight.steps
    for ours, reference in zip(parameters(requeued), parameters(straight)):
        assert torch.equal(ours, reference)
    assert without_telemetry(requeued.results) == without_telemetry(straight.results)
    requeued.close()
    straight.close()

    log = (run_dir / "run.log").read_text()
    assert "preempted by SIGTERM: stopped at step 17 of epoch 1" in log
    assert "resuming epoch 1 of train at batch 5" in log
    for epoch in range(3):
        assert f"epoch {epoch}: trained train with input noise 0.1" in log  # the loop's own line
    # The step log lines fall every `log_interval` (2) batches of the run, where an uninterrupted run has them: 8
    # before the signal, 4 in the rest of epoch 1 (batches 5, 7, 9, 11) and 6 in epoch 2 after the resume.
    before, after = log.split("resuming epoch 1 of train at batch 5")
    assert (before.count("training on train ["), after.count("training on train [")) == (8, 10)
