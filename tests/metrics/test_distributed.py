from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_rank_averages_match_single_process(tmp_path: Path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(out),
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    data = json.loads(out.read_text())
    result, expected = data["result"], data["expected"]
    assert data["world_size"] == 2
    assert result["multiclass"]["auroc"] == pytest.approx(expected["multiclass_auroc"])
    assert result["multiclass"]["acc"] == pytest.approx(expected["multiclass_acc"])
    assert result["binary"]["auprc"] == pytest.approx(expected["binary_auprc"])
    assert result["batch_acc"] == pytest.approx(expected["acc"])  # one batch per rank: the batch is everything
    assert result["only_rank0"]["auroc"] == pytest.approx(expected["only_rank0_auroc"])
    assert result["meter"] == pytest.approx(expected["loss"])
    assert result["meters"]["loss"] == pytest.approx(expected["loss"])
    assert result["meters"]["rank0"] == 1.0
    assert result["meters"]["rank1"] == 2.0
