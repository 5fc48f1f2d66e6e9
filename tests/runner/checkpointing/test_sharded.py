"""
Sharded checkpoints (`torch.distributed.checkpoint`): saved by 2 FSDP2 ranks, resumed in one process and under DDP
(and back), verified per file, committed atomically, pruned like single files, and exported as `model.pth`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from danling.runner.checkpointing import (
    CheckpointError,
    ShardedCheckpointManager,
    checkpoint_problem,
    find_resumable,
    load_sharded,
    read_manifest,
    read_verified,
    sharded_state,
)

WORKER = Path(__file__).parents[1] / "workers" / "sharded_worker.py"
TOLERANCE = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is")


def worker_module():
    spec = importlib.util.spec_from_file_location("sharded_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved(tmp_path_factory, torchrun) -> Path:
    out = tmp_path_factory.mktemp("sharded")
    torchrun(WORKER, "save", str(out))
    return out


def test_two_rank_checkpoint_layout_and_manifests(saved):
    checkpoints = saved / "ckpt"
    visible = sorted(name for name in os.listdir(checkpoints) if not name.startswith("."))
    assert visible == [
        f"{name}.dcp{suffix}" for name in ("latest", "step-3", "step-5") for suffix in ("", ".manifest.json")
    ]
    for name in ("latest", "step-3", "step-5"):
        path = checkpoints / f"{name}.dcp"
        assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank its shard
        assert checkpoint_problem(str(path), ShardedCheckpointManager(str(checkpoints)).format) is None
    assert read_manifest(str(checkpoints / "latest.dcp"))["steps"] == 5


def test_resume_in_one_process_matches_uninterrupted_run(saved):
    worker = worker_module()
    reference = torch.load(saved / "reference.pt", weights_only=True)
    model, optimizer = worker.build()
    extra = load_sharded(str(saved / "ckpt" / "step-3.dcp"), model, optimizer)
    assert extra == {"runner": {"steps": 3}}
    worker.train(model, optimizer, range(3, 5), rank=0, world=1)
    assert worker.max_difference(worker.full_state(model, optimizer), reference) < TOLERANCE
    # The exported model.pth is the full model, loadable without torch.distributed.
    exported = read_verified(str(saved / "model.pth"), weights_only=True)
    assert exported.keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(exported[key], value), key


def test_one_process_checkpoint_loads_on_two_ranks_and_ddp_resumes(saved, torchrun):
    worker = worker_module()
    model, optimizer = worker.build()
    load_sharded(str(saved / "ckpt" / "latest.dcp"), model, optimizer)
    ShardedCheckpointManager(str(saved / "single")).save(sharded_state(model, optimizer, runner={"steps": 5}), steps=5)
    torchrun(WORKER, "load", str(saved))
    report = json.loads((saved / "report-load.json").read_text())
    assert report["fsdp"] < TOLERANCE, report
    assert report["ddp"] < TOLERANCE, report
    assert report["extra"] == {"runner": {"steps": 5}}
    assert report["ddp_extra"] == {"runner": {"steps": 3}}


def test_flipped_shard_is_refused_naming_directory(saved, tmp_path):
    worker = worker_module()
    broken = tmp_path / "step-5.dcp"
    ShardedCheckpointManager(str(tmp_path)).format.copy(str(saved / "ckpt" / "step-5.dcp"), str(broken))
    Path(str(broken) + ".manifest.json").write_text((saved / "ckpt" / "step-5.dcp.manifest.json").read_text())
    shard = broken / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    model, optimizer = worker.build()
    with pytest.raises(CheckpointError, match=r"step-5\.dcp"):
        load_sharded(str(broken), model, optimizer)


def test_single_process_commit_hygiene_and_retention(tmp_path):
    manager = ShardedCheckpointManager(str(tmp_path))
    leftover = tmp_path / ".latest.dcp.9.tmp"
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"partial")  # a killed save
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for steps in range(1, 5):
            manager.save({"model": {"w": torch.full((3,), float(steps))}}, steps=steps, keep=2, best=steps == 2)
    names = sorted(name for name in os.listdir(tmp_path) if name.endswith(".dcp"))
    assert names == ["best.dcp", "latest.dcp", "step-3.dcp", "step-4.dcp"]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))
    assert manager.candidates()[0] == str(tmp_path / "latest.dcp")
    assert torch.equal(manager.load(manager.path("best"))["model"]["w"], torch.full((3,), 2.0))
    assert torch.equal(manager.load(manager.path("latest"))["model"]["w"], torch.full((3,), 4.0))
    # auto_resume's search finds sharded checkpoints too, skipping (and moving aside) a corrupt one.
    assert find_resumable([str(tmp_path)]) == str(tmp_path / "latest.dcp")
    # Written in place, so step-4.dcp, whose files are the same files, is corrupt too; step-3.dcp is its own.
    (tmp_path / "latest.dcp" / "__0_0.distcp").write_bytes(b"flipped")
    notes = []
    assert find_resumable([str(tmp_path)], warn=notes.append) == str(tmp_path / "step-3.dcp")
    assert (tmp_path / "latest.dcp.corrupt").is_dir()
    assert (tmp_path / "step-4.dcp.corrupt").is_dir()
    assert "latest.dcp" in notes[0]
    assert "step-4.dcp" in notes[1]


# The runner under strategy="fsdp"

RESUME_WORKER = Path(__file__).parents[1] / "workers" / "fsdp_resume_worker.py"


def assert_close_states(got: dict, expected: dict) -> None:
    assert len(expected["model"]) == 4
    assert len(expected["optimizer"]["state"]) == 4
    for key, value in expected["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for name, state in expected["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["optimizer"]["state"][name][key], state[key], rtol=1e-5, atol=1e-7)


def test_fsdp_runner_resumes_under_ddp_and_in_one_process(tmp_path, torchrun):
    torchrun(RESUME_WORKER, str(tmp_path))
    report = torch.load(tmp_path / "report.pt", weights_only=True)
    assert "latest.dcp" in report["layout"]
    assert "step-6.dcp" in report["layout"]
    assert report["resumed_steps"] == 6
    exported = read_verified(report["exported"], weights_only=True)  # runner.export_model(): full, one file
    assert exported.keys() == report["uninterrupted"]["model"].keys()
    for key, value in report["uninterrupted"]["model"].items():
        assert torch.equal(exported[key], value), key
    uninterrupted = report["uninterrupted"]
    assert uninterrupted["steps"] == 12
    assert report["ddp"]["steps"] == 12
    assert_close_states(report["ddp"], uninterrupted)  # 2 FSDP2 ranks -> 2 DDP ranks
    spec = importlib.util.spec_from_file_location("fsdp_resume_worker", RESUME_WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = worker.ResumeRunner({**worker.config_for(str(tmp_path / "single"), "ddp", 8), "device": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the world size changed (2 -> 1) at an epoch boundary: allowed
        single.load_checkpoint(str(tmp_path / "fsdp" / "checkpoints" / "step-6.dcp"))
    assert single.steps == 6
    single.train()
    assert single.steps == 12
    assert_close_states(worker.final_state(single), uninterrupted)  # 2 FSDP2 ranks -> 1 process
    single.close()


SAVE_FOREVER = """
import itertools, sys, torch
from danling.runner.checkpointing import ShardedCheckpointManager
manager = ShardedCheckpointManager(sys.argv[1])
weight = torch.zeros(256, 1024)
for counter in itertools.count(1):
    weight.fill_(counter)
    manager.save({"model": {"w": weight}, "runner": {"steps": counter}}, steps=counter, keep=1)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_sigkill_during_sharded_saves_leaves_a_verifiable_latest(tmp_path, delay):
    directory = tmp_path / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, str(directory)], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + 60
        while read_manifest(str(directory / "latest.dcp")) is None:
            assert process.poll() is None, "the saver died"
            assert time.monotonic() < deadline, "the saver never committed latest.dcp"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    manager = ShardedCheckpointManager(str(directory))
    latest = manager.path("latest")
    assert checkpoint_problem(latest, manager.format) is None
    state = manager.load(latest)
    assert torch.all(state["model"]["w"] == state["runner"]["steps"])  # one save, whole
    assert all(name.endswith(".tmp") for name in os.listdir(directory) if name.startswith("."))


def test_whole_read_rebuilds_the_saved_nesting_with_public_dcp_api(tmp_path):
    from danling.runner.checkpointing.sharded import ShardedFormat, read_whole

    saved = {
        "model": {"w": torch.randn(3, 2), "b": torch.arange(4)},
        "optimizer": {"state": {"0": {"m": torch.ones(2, dtype=torch.bfloat16)}}, "param_groups": [{"lr": 0.1}]},
        "runner": {"steps": 7, "config": {"milestones": [2, 5]}, "parts": [torch.zeros(1), {"x": "y"}]},
    }
    path = str(tmp_path / "state.dcp")
    ShardedFormat().write(saved, path)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
        return a == b

    assert same(saved, ShardedFormat().read(path))
    assert same({"runner": saved["runner"]}, read_whole(path, keys="runner"))
    assert same({"model": saved["model"], "runner": saved["runner"]}, read_whole(path, keys={"model", "runner"}))
    assert not same(saved, read_whole(path, keys="runner"))  # the comparison can fail
