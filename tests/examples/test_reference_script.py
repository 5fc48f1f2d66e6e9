"""A script written for the reference DanLing (its MNIST demo's shape, synthetic data) runs unchanged."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).with_name("reference_mnist_script.py")
METRIC_KEYS = {"loss", "auroc", "auprc", "acc", "mcc", "f1"}

pytestmark = pytest.mark.slow


def test_reference_mnist_script_runs_unchanged(tmp_path: Path, subprocess_run) -> None:
    result = subprocess_run([sys.executable, str(SCRIPT), "--epoch_end", "2"], cwd=tmp_path, timeout=240)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert not (tmp_path / "data").exists()  # nothing was downloaded

    test_result = json.loads((tmp_path / "test_result.json").read_text())
    assert set(test_result) == {"test"}
    assert set(test_result["test"]) >= METRIC_KEYS
    for key in METRIC_KEYS:
        assert math.isfinite(test_result["test"][key]), (key, test_result)

    # `post()` named the experiment; train() ran both epochs on train and val and recorded them
    (run_dir,) = (tmp_path / "experiments").glob("convnet_adamw@0.001-*/*")
    results = json.loads((run_dir / "results.json").read_text())["results"]
    assert sorted(results) == ["0", "1"]
    for epoch in results.values():
        assert {"train", "val"} <= set(epoch)
        assert set(epoch["val"]) >= METRIC_KEYS
    assert (run_dir / "best.json").is_file()
    # The config held a Compose (YAML cannot represent it): config.yaml was written with its repr, and loads.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["dataset"]["transform"].startswith("Compose([Normalize(mean=0.1307")
