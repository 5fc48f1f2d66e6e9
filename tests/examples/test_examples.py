"""
Smoke tests of everything a user runs first: each `examples/*.py` script for one epoch (alone and under
`torchrun`), each notebook in `examples/notebooks/`, and the README's quick start.

The scripts run in subprocesses with their working directory in `tmp_path`, so nothing lands in the repository.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
SCRIPT_TIMEOUT = 240  # seconds; one epoch takes a few, importing torch and scikit-learn most of the rest
NOTEBOOK_TIMEOUT = 300
# One short epoch, written into the given directory, without TensorBoard files or per-batch log lines.
ONE_EPOCH = ("--epoch_end", "1", "--tensorboard", "false", "--log_interval", "1000")

pytestmark = pytest.mark.slow


@pytest.fixture
def run(subprocess_run):
    r"""Run a command in a directory and fail the test with its output when it exits with an error."""

    def run_checked(command: list[str], cwd: Path, timeout: float = SCRIPT_TIMEOUT):
        result = subprocess_run(command, cwd=cwd, timeout=timeout)
        assert result.returncode == 0, (
            f"{command} exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
        return result

    return run_checked


def assert_run_dir(run_dir: Path) -> None:
    r"""The files every finished run leaves in its directory."""
    assert (run_dir / "results.json").is_file(), sorted(p.name for p in run_dir.iterdir())
    assert (run_dir / "checkpoints" / "latest.pth").is_file()


def test_every_example_is_tested() -> None:
    assert {path.name for path in EXAMPLES} >= {"digits.py", "breast_cancer.py"}
    assert {path.name for path in NOTEBOOKS} >= {"quickstart.ipynb", "results_and_checkpoints.ipynb"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs_one_epoch(script: Path, tmp_path: Path, run) -> None:
    run_dir = tmp_path / "run"
    run([sys.executable, str(script), *ONE_EPOCH, "--dir", str(run_dir)], cwd=tmp_path)
    assert_run_dir(run_dir)
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)
    assert checkpoint["runner"]["epochs"] == 0
    assert checkpoint["runner"]["steps"] > 0


def test_digits_reruns_from_its_config_yaml(tmp_path: Path, run) -> None:
    import yaml

    script = ROOT / "examples" / "digits.py"
    first, second = tmp_path / "first", tmp_path / "second"
    run([sys.executable, str(script), *ONE_EPOCH, "--optim.lr", "0.02", "--dir", str(first)], cwd=tmp_path)
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["optim"]["lr"] == 0.02
    run([sys.executable, str(script), "--config", str(first / "config.yaml"), "--dir", str(second)], cwd=tmp_path)
    rerun = yaml.safe_load((second / "config.yaml").read_text())
    assert rerun["run_id"] == config["run_id"]
    assert {k: v for k, v in rerun.items() if k != "dir"} == {k: v for k, v in config.items() if k != "dir"}
    first_results = json.loads((first / "results.json").read_text())["results"]
    second_results = json.loads((second / "results.json").read_text())["results"]
    assert first_results["0"]["val"]["acc"] == second_results["0"]["val"]["acc"]  # same seed, same numbers


@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_digits_runs_under_torchrun(tmp_path: Path, torchrun) -> None:
    run_dir = tmp_path / "run"
    script = ROOT / "examples" / "digits.py"
    torchrun(script, *ONE_EPOCH, "--dir", str(run_dir), cwd=tmp_path, timeout=SCRIPT_TIMEOUT)
    assert_run_dir(run_dir)
    # Only rank 0 writes: one results file, in the given directory and nowhere else.
    assert list(tmp_path.rglob("results.json")) == [run_dir / "results.json"]


def test_readme_quick_start_runs(tmp_path: Path, run) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert block is not None, "README.md has no ```python block"
    script = tmp_path / "train.py"
    script.write_text(block.group(1), encoding="utf-8")
    run_dir = tmp_path / "run"
    run([sys.executable, str(script), "--epoch_end", "1", "--dir", str(run_dir)], cwd=tmp_path)
    assert_run_dir(run_dir)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_clean(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: stored with outputs"
            assert cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=NOTEBOOK_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell's traceback, on any error
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors == []
    # The notebooks write into temporary directories only.
    assert list(tmp_path.iterdir()) == []
