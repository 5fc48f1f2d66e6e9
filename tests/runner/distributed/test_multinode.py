"""
Multi-node `torchrun`: two "nodes" on loopback (two launchers, `--nnodes=2 --node_rank=0/1`, one process each)
run the same script as a single-node launch; global-rank-0 I/O, per-node preparation on each node's local rank 0.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

WORKERS = Path(__file__).parents[1] / "workers"
ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


def load_conftest() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, subprocess_run) -> dict[str, Any]:
    conftest = load_conftest()
    out_dir = tmp_path_factory.mktemp("multinode")
    port = conftest.free_port()
    commands = [
        conftest.torchrun_command(
            WORKERS / "multinode_worker.py",
            str(out_dir),
            nproc=1,
            launcher_args=("--nnodes=2", f"--node_rank={node}", f"--master_port={port}"),
        )
        for node in (0, 1)
    ]
    with ThreadPoolExecutor(2) as pool:
        launches = list(pool.map(lambda command: subprocess_run(command, timeout=240), commands))
    for launch in launches:
        assert launch.returncode == 0, f"launcher failed:\n{launch.stdout[-3000:]}\n{launch.stderr[-3000:]}"
    reports = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {"reports": reports, "out_dir": out_dir, "commands": commands}


def test_each_node_runs_one_process_of_one_world(nodes):
    assert all("--nnodes=2" in command for command in nodes["commands"])
    node0, node1 = nodes["reports"]
    assert (node0["node_rank"], node1["node_rank"]) == (0, 1)
    assert (node0["rank"], node1["rank"]) == (0, 1)
    assert node0["local_rank"] == node1["local_rank"] == 0
    assert node0["world_size"] == node1["world_size"] == 2
    assert node0["wrapped"] == node1["wrapped"] == "DistributedDataParallel"


def test_main_process_is_global_and_local_main_is_per_node(nodes):
    node0, node1 = nodes["reports"]
    assert (node0["is_main_process"], node1["is_main_process"]) == (True, False)
    assert node0["is_local_main_process"] is node1["is_local_main_process"] is True
    assert (node0["logger_is_none"], node1["logger_is_none"]) == (False, True)


def test_per_node_preparation_ran_once_on_each_node(nodes):
    for node in (0, 1):
        prepared = (nodes["out_dir"] / f"node{node}" / "prepared_by.txt").read_text().split()
        assert prepared == [str(node)]  # global rank of the node's local main process


def test_only_global_rank_zero_writes_the_run(nodes):
    run_dir = nodes["out_dir"] / "run"
    node0, node1 = nodes["reports"]
    assert node0["run_dir"] == node1["run_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / "latest.pth").is_file()
    log = (run_dir / "run.log").read_text()
    assert log.count("epoch [1/1]") == 1


def test_replicas_agree_after_training(nodes):
    node0, node1 = nodes["reports"]
    assert node0["parameters"] == node1["parameters"]
    assert node0["results"] == node1["results"]
    assert node0["results"]["1"]["train"]["loss"] < node0["results"]["0"]["train"]["loss"]


def test_same_script_runs_in_one_process(subprocess_run, tmp_path):
    result = subprocess_run([sys.executable, str(WORKERS / "multinode_worker.py"), str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["world_size"] == 1
    assert report["wrapped"] == "Linear"
    assert report["is_main_process"] is report["is_local_main_process"] is True
    assert (tmp_path / "node0" / "prepared_by.txt").read_text().split() == ["0"]
