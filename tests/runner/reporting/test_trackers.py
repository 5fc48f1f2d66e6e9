"""
Experiment trackers with the real libraries, offline: W&B (`WANDB_MODE=offline`, read back from its `.wandb` files)
and MLflow (an SQLite store, read back through `MlflowClient`), across a real kill and resume. Skipped only where
the extra is not installed; naming a tracker that is missing or unknown stops the run at its start.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

import danling as dl
from danling.runner.callbacks.jsonl import record_values
from danling.runner.callbacks.trackers import TRACKERS_FILE, check_trackers
from danling.runner.reporting.telemetry import TELEMETRY_KEYS, scalars, step_view

from ..workers.recorded_job import RecordedRunner, job_config

WORKER = Path(__file__).parents[1] / "workers" / "recorded_job.py"
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


def launch(subprocess_run, out_dir: Path, *args: str, status: int = 0, env: dict | None = None) -> str:
    result = subprocess_run([sys.executable, str(WORKER), str(out_dir), *args], timeout=400, env=env)
    assert result.returncode == status, result.stderr[-3000:]
    return next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("run directory: "))


def tracked(run_dir: str) -> dict[str, dict[int, float]]:
    r"""
    What `metrics.jsonl` says each tracker should hold: `name -> step -> value` (the first value of a step), but
    the throughput numbers, which differ between a killed launch and the one that records the same step again.
    """
    found: dict[str, dict[int, float]] = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fp:
        for record in map(json.loads, fp):
            if record["event"] == "log" and record["mode"] != "train":
                continue
            values = step_view(record_values(record)) if record["event"] == "log" else record_values(record)
            prefix = f"{record['split']}/step" if record["event"] == "log" else record["split"]
            for name, value in scalars(values, prefix):
                if name.rsplit("/", 1)[-1] not in TELEMETRY_KEYS:
                    found.setdefault(name, {}).setdefault(record["step"], value)
    return found


def without_throughput(held: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    return {name: values for name, values in held.items() if name.rsplit("/", 1)[-1] not in TELEMETRY_KEYS}


# Names


def test_an_unknown_tracker_is_an_error_naming_the_accepted_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tracker 'tensorboardx'; accepted names are 'mlflow', 'wandb'"):
        dl.TorchRunner({"dir": str(tmp_path / "run"), "trackers": ["tensorboardx"]})
    assert not (tmp_path / "run").exists()  # stopped before anything was created
    with pytest.raises(ValueError, match="list of tracker names"):
        check_trackers([1])


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_stops_the_run_with_the_install_command(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if the package were not installed
    with pytest.raises(ImportError, match=f'pip install "danling\\[{name}\\]"'):
        dl.TorchRunner({"dir": str(tmp_path / "run"), "trackers": [name]})
    assert not (tmp_path / "run").exists()


def test_trackers_do_not_change_the_run_id():
    assert dl.Config({"lr": 0.1}).run_id == dl.Config({"lr": 0.1, "trackers": ["mlflow"]}).run_id


# W&B


def wandb_records(path: Path):
    r"""
    The records of a W&B `.wandb` file: a LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks with a
    7-byte header: checksum, length, type) of `wandb_internal_pb2.Record` messages.
    """
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # the block's tail: padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(folder: Path) -> dict:
    r"""What one launch's offline W&B run holds: its id, its config keys, and `(step, {name: value})` rows."""
    (path,) = folder.glob("run-*.wandb")
    run: dict = {"id": None, "config": set(), "rows": []}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
            run["config"] |= {item.key for item in record.run.config.update if item.key != "_wandb"}
        elif kind == "config":
            run["config"] |= {item.key for item in record.config.update if item.key != "_wandb"}
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            run["rows"].append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return run


@pytest.mark.slow
def test_wandb_offline_continues_the_same_run_across_a_preemption(tmp_path, subprocess_run):
    pytest.importorskip("wandb")
    out = tmp_path / "job"
    first = launch(
        subprocess_run, out, "--trackers", "wandb", "--kill-at", "8", "--signal", "TERM", status=143, env=OFFLINE
    )
    second = launch(subprocess_run, out, "--trackers", "wandb", env=OFFLINE)
    assert second == first  # auto_resume: the same run directory, a W&B folder per launch
    folders = sorted(Path(first, "wandb").glob("offline-run-*"), key=lambda folder: folder.stat().st_mtime)
    launches = [wandb_run(folder) for folder in folders]
    assert len(launches) == 2
    key = json.loads(Path(first, TRACKERS_FILE).read_text())["key"]
    assert [run["id"] for run in launches] == [key, key]  # one W&B run, continued
    assert Path(first).parent.name.endswith(f"-{key}")  # the run directory `{name}-{id}/...`: the runner's id
    assert "epoch_end" in launches[0]["config"]
    assert not launches[1]["config"]
    steps = [step for run in launches for step, _ in run["rows"]]
    assert steps == sorted(set(steps))  # strictly increasing across the resume
    assert launches[0]["rows"][-1][0] == 8
    assert launches[1]["rows"][0][0] > 8
    held: dict[str, dict[int, float]] = {}
    for run in launches:
        for step, values in run["rows"]:
            for name, value in values.items():
                held.setdefault(name, {})[step] = value
    assert without_throughput(held) == tracked(
        second
    )  # every value of the run, at its step (the whole history is in `second`)
    assert sorted(held["train/step/loss"]) == [2, 4, 6, 8, 10, 12, 14]
    assert sorted(held["val/loss"]) == [5, 10, 15]


# MLflow


@pytest.mark.slow
def test_mlflow_continues_the_same_run_after_a_sigkill_with_one_value_per_step(tmp_path, subprocess_run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "job"
    common = ("--trackers", "mlflow", "--no-auto-resume")
    env = {"MLFLOW_TRACKING_URI": ""}  # the default store: `mlflow.db` in the run directory
    # Killed after the log line of step 8: the MLflow run holds steps past the checkpoint of step 6.
    first = launch(subprocess_run, out, *common, "--kill-at", "8", status=-9, env=env)
    killed = (Path(first) / "mlflow.db").read_bytes()
    second = launch(subprocess_run, out, *common, "--checkpoint", first, env=env)
    assert second != first  # continued in a new run directory, from a copy of the store
    assert (Path(first) / "mlflow.db").read_bytes() == killed  # the checkpoint's run directory is left as it was
    client = MlflowClient(tracking_uri=f"sqlite:///{os.path.join(second, 'mlflow.db')}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == json.loads(Path(first, TRACKERS_FILE).read_text())["mlflow"]["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["epoch_end"] == "3"
    assert run.data.params["save_steps"] == "3"
    history = {name: client.get_metric_history(run.info.run_id, name) for name in run.data.metrics}
    held = {name: {m.step: m.value for m in values} for name, values in history.items()}
    for name, values in history.items():
        assert len(values) == len({m.step for m in values}), name  # one value per step
    assert without_throughput(held) == tracked(second)
    assert sorted(held["train/step/loss"]) == [2, 4, 6, 8, 10, 12, 14]
    assert sorted(held["train/loss"]) == [5, 10, 15]


def test_mlflow_uses_the_tracking_uri_of_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "shared")
    runner = RecordedRunner(job_config(str(tmp_path), auto_resume=False, epoch_end=1, trackers=["mlflow"]))
    runner.train()
    runner.close()
    assert store.exists()
    assert not os.path.exists(os.path.join(runner.dir, "mlflow.db"))
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert run.data.params["seed"] == "3"
    losses = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses == [(5, runner.results[0]["train"]["loss"])]
