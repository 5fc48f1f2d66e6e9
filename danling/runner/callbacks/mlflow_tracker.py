"""MLflow (`config.trackers: ["mlflow"]`): [`MLflowCallback`][danling.runner.callbacks.MLflowCallback]."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

from ..reporting.telemetry import hparam_values
from ..rundir.continuation import Continuation
from .trackers import TrackerCallback, run_config

__all__ = ["MLflowCallback", "MLFLOW_DB", "metric_key"]

MLFLOW_DB = "mlflow.db"
# The tag that names the tracker run's key on an MLflow run.
RUN_TAG = "danling.run"
# MLflow's limits: entities per `log_batch` request, and the length of a parameter's key and value.
BATCH_METRICS = 1000
BATCH_PARAMS = 100
PARAM_KEY_LENGTH = 250
PARAM_VALUE_LENGTH = 6000
# Characters MLflow accepts in metric and parameter names.
_INVALID = re.compile(r"[^\w\-. /]")


class MLflowCallback(TrackerCallback):
    r"""
    Records a run in MLflow (`pip install "danling[mlflow]"`), from the main process, through an `MlflowClient`
    (no global MLflow state is touched).

    The store is `MLFLOW_TRACKING_URI` when it is set, else an SQLite database in the run directory
    (`sqlite:///<run dir>/mlflow.db`; MLflow 3 deprecates file stores). The experiment is `MLFLOW_EXPERIMENT_NAME`,
    default `config.experiment_name`; the MLflow run is named after the runner and tagged `danling.run` with the
    tracker run's key. The config's values are its parameters, logged once, when the MLflow run is created;
    metrics are logged at the global optimizer step.

    A resumed run continues the MLflow run `trackers.json` names (else the one tagged with its key) and sends, for
    each metric, only the steps after the last one the MLflow run has: one value per step. Continued in a new run
    directory with the default store, the run directory's `mlflow.db` starts as a copy of the checkpoint's, so each
    run directory holds the whole history and the old one is left as it was.
    """

    name = "mlflow"

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.run_id: str | None = None

    def open(self, runner: Any, key: str, earlier: Mapping[str, Any] | None, at: Continuation | None) -> dict:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_store(runner.dir, at)
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or runner.config.get("experiment_name")
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = client.create_experiment(experiment_name) if experiment is None else experiment.experiment_id
        self.run_id = self.find_run(experiment_id, key, earlier if at is not None else None)
        if self.run_id is None:
            self.run_id = client.create_run(experiment_id, run_name=runner.name, tags={RUN_TAG: key}).info.run_id
            self.log_params(run_config(runner.config))
        else:
            client.update_run(self.run_id, status="RUNNING")
            self.sent.update(self.last_steps())
        return {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": uri}

    def find_run(self, experiment_id: str, key: str, earlier: Mapping[str, Any] | None) -> str | None:
        r"""The MLflow run to continue: the one `trackers.json` names, else the one tagged with `key`, else `None`."""
        if earlier is not None and earlier.get("run_id"):
            from mlflow.exceptions import MlflowException

            try:
                return self.client.get_run(earlier["run_id"]).info.run_id
            except MlflowException:  # not in this store (MLFLOW_TRACKING_URI changed): look for its tag
                pass
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def last_steps(self) -> dict[str, int]:
        r"""The last step of every metric the MLflow run has."""
        metrics = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in metrics}

    def log_params(self, config: Mapping) -> None:
        r"""Log the flattened config as the MLflow run's parameters (values cut to MLflow's length limit)."""
        from mlflow.entities import Param

        values = hparam_values(config)
        params = [Param(metric_key(k)[:PARAM_KEY_LENGTH], str(v)[:PARAM_VALUE_LENGTH]) for k, v in values.items()]
        for begin in range(0, len(params), BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=params[begin : begin + BATCH_PARAMS])

    def send(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in values.items()]
        for begin in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[begin : begin + BATCH_METRICS])

    def metric_name(self, name: str) -> str:
        return metric_key(name)

    def training_ended(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")

    def end(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.client = None


def default_store(run_dir: str, at: Continuation | None) -> str:
    r"""
    `sqlite:///<run dir>/mlflow.db`; a run continued in a new run directory first copies the checkpoint's run
    directory's database there.
    """
    path = os.path.abspath(os.path.join(run_dir, MLFLOW_DB))
    source = None if at is None or at.source is None else os.path.join(at.source, MLFLOW_DB)
    if source is not None and os.path.isfile(source) and not os.path.exists(path):
        shutil.copy2(source, path + ".tmp")
        os.replace(path + ".tmp", path)
    return f"sqlite:///{path}"


def metric_key(name: str) -> str:
    r"""
    `name` with the characters MLflow refuses in metric and parameter names replaced by `_`.

    Examples:
        >>> metric_key("val/acc@1"), metric_key("train/step/loss")
        ('val/acc_1', 'train/step/loss')
    """
    return _INVALID.sub("_", name)
