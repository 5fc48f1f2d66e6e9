"""Results a runner reports: per-split metrics, the direction and split of "best", and files that agree."""

from __future__ import annotations

import json
import math
import os
import stat
import warnings

import pytest
import torch
from chanfig import NestedDict
from sklearn.metrics import accuracy_score, matthews_corrcoef

import danling as dl
from danling.runner import BaseRunner

from ..conftest import ClassifierRunner, LinearRegressionRunner

# Metrics per split


def predictions(runner: dl.TorchRunner, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = runner.datasets[split].tensors
    with torch.no_grad():
        return runner.model(x).argmax(-1), y


class SplitMetricsRunner(ClassifierRunner):
    """Assigns `metrics`, `train_metrics` and `evaluate_metrics` as `config.assign` lists; records step results."""

    def __init__(self, config):
        super().__init__(config)
        for name in self.config.assign:
            setattr(self, name, dl.metrics.multiclass_metrics(num_classes=3))
        self.step_checks: list[tuple[float, float]] = []

    def evaluate_step(self, data):
        pred, loss = super().evaluate_step(data)
        expected = accuracy_score(data[1], pred.argmax(-1))
        self.step_checks.append((self.get_step_result()["acc"], expected))
        return pred, loss

    def train_step(self, data):
        pred, loss = super().train_step(data)
        if "metrics" in self.config.assign or "train_metrics" in self.config.assign:
            expected = accuracy_score(data[1], pred.detach().argmax(-1))
            self.step_checks.append((self.get_step_result()["acc"], expected))
        return pred, loss


@pytest.mark.parametrize(
    "assign",
    [["metrics"], ["train_metrics", "evaluate_metrics"], ["metrics", "evaluate_metrics"], ["evaluate_metrics"]],
)
def test_each_split_reports_the_metrics_of_its_own_data(make_runner, assign):
    runner = make_runner(SplitMetricsRunner, assign=assign, lr=0.0, epoch_end=1)
    result = runner.train()[0]
    for split in ("train", "val"):
        pred, target = predictions(runner, split)
        has_metrics = split == "val" or "metrics" in assign or "train_metrics" in assign
        if not has_metrics:
            assert "acc" not in result[split]
            continue
        assert result[split]["acc"] == pytest.approx(accuracy_score(target, pred))
        assert result[split]["mcc"] == pytest.approx(matthews_corrcoef(target, pred), abs=1e-6)
    if "acc" in result["train"]:
        assert result["train"]["acc"] != pytest.approx(result["val"]["acc"])  # the two splits really differ
    assert runner.step_checks
    for reported, expected in runner.step_checks:
        assert reported == pytest.approx(expected)


# Direction of "best"


@pytest.mark.parametrize(
    ("score_name", "mode"),
    [("loss", "min"), ("val_loss", "min"), ("rmse", "min"), ("mse", "min"), ("mae", "min"), ("error", "min")]
    + [("perplexity", "min"), ("acc", "max"), ("auroc", "max"), ("f1", "max"), ("r2", "max")],
)
def test_score_mode_is_inferred_from_the_score_name(new_runner, score_name, mode):
    runner = new_runner(score_name=score_name)
    assert runner.score_mode == mode
    assert runner.best_fn is (min if mode == "min" else max)


def test_rmse_keeps_the_lowest_epoch_as_best(new_runner):
    runner = new_runner(score_name="rmse")
    for index, rmse in enumerate([0.5, 0.3, 0.4]):
        runner.append_result({"val": {"rmse": rmse}}, index=index)
    assert (runner.best_index, runner.best_score, runner.is_best) == (1, 0.3, False)


def test_score_mode_overrides_the_name(new_runner):
    runner = new_runner(score_name="rmse", score_mode="max")
    for index, rmse in enumerate([0.5, 0.3, 0.4]):
        runner.append_result({"val": {"rmse": rmse}}, index=index)
    assert runner.best_index == 0


def test_unknown_score_mode_names_the_accepted_values(new_runner):
    runner = new_runner(score_mode="lowest")
    with pytest.raises(ValueError, match="min.*max.*'lowest'"):
        runner.best_fn


def test_a_subclass_may_still_override_best_fn(new_runner):
    class Closest(BaseRunner):
        @property
        def best_fn(self):
            return lambda scores, **kwargs: min(scores, key=abs)

    runner = new_runner(cls=Closest, score_name="bias")
    for index, bias in enumerate([0.5, -0.1, 0.3]):
        runner.append_result({"val": {"bias": bias}}, index=index)
    assert runner.best_index == 1


class ScriptedRunner(LinearRegressionRunner):
    """Real training; the val score of each epoch is `config.val_rmse[epoch]`, and each epoch's weights are kept."""

    def __init__(self, config):
        super().__init__(config)
        self.weights: list[torch.Tensor] = []

    def evaluate_epoch(self, split="val"):
        self.weights.append(self.model.weight.detach().clone())
        return NestedDict({"rmse": self.config.val_rmse[self.epochs]})


def test_best_json_best_pth_best_result_and_best_index_agree(make_runner, tmp_path):
    runner = make_runner(ScriptedRunner, score_name="rmse", val_rmse=[0.9, 0.2, 0.5, float("nan")], epoch_end=4)
    runner.train()
    assert runner.best_index == 1
    assert runner.best_result["index"] == 1
    with open(os.path.join(runner.dir, "best.json")) as fp:
        best = json.load(fp)
    assert best["index"] == 1
    assert best["val"]["rmse"] == 0.2
    state = torch.load(os.path.join(runner.checkpoint_dir, "best.pth"), weights_only=True)
    assert state["runner"]["epochs"] == 1
    assert torch.equal(state["model"]["weight"], runner.weights[1])


def test_the_direction_is_logged_once_at_the_start_of_train(make_runner):
    runner = make_runner(LinearRegressionRunner, log=True, score_name="rmse", epoch_end=2)
    runner.metrics = dl.metrics.regression_metrics()
    runner.train()
    runner.close()
    with open(runner.log_file) as fp:
        lines = [line for line in fp if "lower is better" in line]
    assert len(lines) == 1
    assert "rmse" in lines[0]


# Which split scores


def test_a_score_split_that_does_not_exist_names_the_available_splits(make_runner):
    runner = make_runner(score_split="dev")
    with pytest.raises(ValueError, match=r"'dev'.*\['train', 'val'\]"):
        runner.train()
    assert runner.steps == 0  # checked before any training
    runner.append_result({"train": {"loss": 1.0}}, index=0)
    with pytest.raises(ValueError, match=r"'dev'.*\['train'\]"):
        runner.best_result


def test_a_fallback_to_a_test_split_warns_once_about_the_leak(make_runner):
    class TestSplitRunner(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.datasets.test = self.datasets.pop("val")

    runner = make_runner(TestSplitRunner, epoch_end=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.train()
    messages = [str(w.message) for w in caught if "score_split" in str(w.message)]
    assert len(messages) == 1
    assert "'test'" in messages[0]
    assert "leak" in messages[0]


def test_a_missing_score_name_is_an_error_not_a_silent_best(make_runner):
    runner = make_runner(score_name="acc")
    with pytest.raises(ValueError, match="'acc'.*loss"):
        runner.train()


# Non-finite scores


def test_a_nan_score_is_never_best_and_counts_against_patience(make_runner):
    nan = float("nan")
    runner = make_runner(ScriptedRunner, val_rmse=[0.5, nan, nan, 0.1, 0.0], score_name="rmse", epoch_end=5)
    runner.config.patience = 2
    results = runner.train()
    assert list(results) == [0, 1, 2]  # two epochs without a finite improvement stop the run
    assert runner.best_index == 0
    assert runner.best_score == 0.5
    assert math.isnan(runner.latest_score)
    assert runner.is_best is False


def test_all_nan_scores_have_no_best(new_runner):
    runner = new_runner()
    runner.append_result({"val": {"loss": float("nan")}}, index=0)
    runner.save_result()
    assert runner.is_best is False
    assert runner.best_result is None
    assert runner.best_score is None
    assert "best.json" not in os.listdir(runner.dir)


def test_the_files_a_runner_writes_follow_the_umask(make_runner):
    previous = os.umask(0o022)
    try:
        runner = make_runner(epoch_end=2, save_interval=1)
        runner.train()
    finally:
        os.umask(previous)
    files = [os.path.join(root, name) for root, _, names in os.walk(runner.dir) for name in names]
    assert {"results.json", "latest.json", "best.json", "latest.pth", "best.pth", "epoch-1.pth"} <= {
        os.path.basename(path) for path in files
    }
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


# Meters touched but never updated (code ported from the reference library)


class TouchedMeterRunner(LinearRegressionRunner):
    """Resets `meters.time` every step as reference-style code does, never updates it; `meters.spike` gets a NaN."""

    def train_step(self, data):
        self.meters.time.reset()
        if self.steps == 2:
            self.meters.spike.update(float("nan"))
        self.step_results.append(self.get_step_result())
        return super().train_step(data)

    def evaluate_step(self, data):
        self.meters.time.reset()
        return super().evaluate_step(data)


def test_a_meter_never_updated_is_left_out_of_step_and_epoch_results_and_log_lines(make_runner, tmp_path):
    runner = make_runner(TouchedMeterRunner, epoch_end=1, log=True, log_interval=1)
    runner.step_results = []
    result = runner.train()[0]
    runner.close()
    for split in ("train", "val"):
        assert "time" not in result[split], result[split]
        assert math.isfinite(result[split]["loss"])
    assert math.isnan(result["train"]["spike"])  # updated with a real NaN: shown as NaN
    assert "spike" not in result["val"]  # reset at the evaluation's start and never updated there
    for step in runner.step_results:  # `time` there is the telemetry's s/step, never the empty meter's nan
        assert all(math.isfinite(value) for key, value in step.all_items() if key != "spike"), step
    assert math.isnan(runner.step_results[3]["spike"])
    with open(runner.log_file, encoding="utf-8") as fp:
        log = fp.read()
    lines = [line for line in log.splitlines() if "nan" in line.lower()]
    assert lines
    assert all("spike" in line for line in lines), lines  # only the real NaN reads nan
    assert "time: nan" not in log


@pytest.mark.parametrize(
    "values",
    [
        {"loss": 0.5, "lr": 1e-3},
        {"task.loss": 0.5, "task.acc": 1.0, "loss": 0.25},
        {"task": {"loss": 0.5}, "other": {"acc": 1.0}},
        {},
    ],
)
def test_a_step_result_is_built_like_the_nested_dict_constructor_would(values):
    from danling.runner.reporting.reporter import nested_result

    built, reference = nested_result(values), NestedDict(values)
    assert type(built) is NestedDict
    assert built.dict() == reference.dict()
    assert list(built.all_keys()) == list(reference.all_keys())


def test_a_task_with_one_metric_keeps_its_metric_name():
    from sklearn.metrics import roc_auc_score

    from danling.metrics import AverageMeters, Metrics, MultiTaskMetrics
    from danling.metrics.functional import accuracy, auroc
    from danling.runner.reporting.reporter import epoch_result

    metrics = MultiTaskMetrics()
    metrics["cls"] = Metrics(auroc=auroc)
    metrics["other"] = Metrics(auroc=auroc, acc=accuracy)
    scores, labels = torch.tensor([0.2, 0.8, 0.6, 0.3]), torch.tensor([0, 1, 0, 1])
    metrics.update({"cls": (scores, labels), "other": (scores, labels)})
    result = epoch_result(AverageMeters(), metrics)
    assert set(result["cls"]) == {"auroc"}  # not lifted to result["cls"] = value
    assert result["cls"]["auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))
    assert result["cls.auroc"] == result["other"]["auroc"]
