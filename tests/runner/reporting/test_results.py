from __future__ import annotations

import json
import os
from typing import Callable

import pytest
from chanfig import NestedDict

from danling.runner import BaseRunner
from danling.runner.reporting import results as res

MakeRunner = Callable[..., BaseRunner]


def test_no_results(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.is_best is True  # reference: True when no results exist
    assert runner.scores is None
    assert runner.latest_result is None
    assert runner.best_result is None
    assert runner.latest_score is None
    assert runner.best_score is None
    assert runner.best_index == 0


def test_append_result_defaults_to_the_current_epoch(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.epochs = 4
    runner.append_result({"val": {"loss": 1.0}})
    assert list(runner.results.keys()) == [4]


def test_append_result_merges_into_an_existing_index(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"train": {"loss": 1.0}}, index=0)
    runner.append_result({"val": {"loss": 2.0}}, index=0)
    runner.append_result({"val": {"acc": 0.5}}, index=0)
    assert runner.results[0].dict() == {"train": {"loss": 1.0}, "val": {"loss": 2.0, "acc": 0.5}}
    assert len(runner.results) == 1


@pytest.mark.parametrize(
    ("result", "split"),
    [
        ({"train": {"loss": 1.0}, "val": {"loss": 2.0}, "validate": {"loss": 3.0}, "test": {"loss": 4.0}}, "val"),
        ({"train": {"loss": 1.0}, "validate": {"loss": 3.0}, "test": {"loss": 4.0}}, "validate"),
        ({"train": {"loss": 1.0}, "test": {"loss": 4.0}, "extra": {"loss": 5.0}}, "test"),
        ({"train": {"loss": 1.0}}, "train"),
    ],
)
def test_score_split_inference(new_runner: MakeRunner, result: dict, split: str) -> None:
    runner = new_runner()
    runner.append_result(result, index=0)
    assert runner.latest_score == result[split]["loss"]
    assert res.infer_score_split(result) == split


def test_explicit_score_split_and_name(new_runner: MakeRunner) -> None:
    runner = new_runner(score_split="test", score_name="acc")
    runner.append_result({"val": {"acc": 0.1}, "test": {"acc": 0.7}}, index=0)
    assert runner.latest_score == 0.7


def test_infer_score_split_needs_a_split() -> None:
    with pytest.raises(ValueError, match="split"):
        res.infer_score_split({"index": 1})


@pytest.mark.parametrize(("score_name", "best_fn"), [("loss", min), ("acc", max), ("auroc", max)])
def test_best_fn(new_runner: MakeRunner, score_name: str, best_fn: Callable) -> None:
    assert new_runner(score_name=score_name).best_fn is best_fn


def test_loss_is_minimised(new_runner: MakeRunner) -> None:
    runner = new_runner()
    for index, loss in enumerate([0.5, 0.3, 0.4]):
        runner.append_result({"val": {"loss": loss}}, index=index)
    assert runner.scores.dict() == {0: 0.5, 1: 0.3, 2: 0.4}
    assert runner.best_index == 1
    assert runner.best_score == 0.3
    assert runner.latest_score == 0.4
    assert runner.is_best is False
    assert runner.best_result["index"] == 1
    assert runner.best_result["val"]["loss"] == 0.3
    assert runner.latest_result["index"] == 2


def test_accuracy_is_maximised(new_runner: MakeRunner) -> None:
    runner = new_runner(score_name="acc")
    for index, acc in enumerate([0.5, 0.3, 0.9]):
        runner.append_result({"val": {"acc": acc}}, index=index)
    assert runner.best_index == 2
    assert runner.best_score == 0.9
    assert runner.is_best is True


def test_is_best_follows_each_new_result(new_runner: MakeRunner) -> None:
    runner = new_runner()
    flags = []
    for index, loss in enumerate([1.0, 0.5, 0.7, 0.4]):
        runner.append_result({"val": {"loss": loss}}, index=index)
        flags.append(runner.is_best)
    assert flags == [True, True, False, True]


@pytest.mark.parametrize(("score_name", "values"), [("loss", [0.5, 0.4, 0.4]), ("acc", [0.5, 0.9, 0.9])])
def test_ties_count_as_best_and_go_to_the_latest(new_runner: MakeRunner, score_name: str, values: list) -> None:
    runner = new_runner(score_name=score_name)
    for index, value in enumerate(values):
        runner.append_result({"val": {score_name: value}}, index=index)
    assert runner.is_best is True
    assert runner.best_score == values[-1]
    assert runner.best_index == 2


def test_is_best_tolerates_rounding(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"val": {"loss": 0.3}}, index=0)
    runner.append_result({"val": {"loss": 0.1 + 0.2}}, index=1)  # 0.30000000000000004
    assert runner.is_best is True


def test_results_without_the_score_are_skipped(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"train": {"loss": 9.0}, "val": {"loss": 1.0}}, index=0)
    runner.append_result({"train": {"loss": 8.0}}, index=1)
    runner.append_result({"train": {"loss": 7.0}, "val": {"loss": 2.0}}, index=2)
    assert runner.scores.dict() == {0: 1.0, 2: 2.0}


def test_results_are_copies(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    latest = runner.latest_result
    latest["val"]["loss"] = 5.0
    assert runner.results[0]["val"]["loss"] == 1.0
    assert "index" not in runner.results[0]


def test_tensor_scores_become_floats(new_runner: MakeRunner) -> None:
    import torch

    runner = new_runner()
    runner.append_result({"val": {"loss": torch.tensor(0.25)}}, index=0)
    assert runner.latest_score == 0.25
    assert isinstance(runner.latest_score, float)


def test_save_result_writes_results_latest_and_best(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    runner.save_result()
    assert sorted(os.listdir(runner.dir)) == ["best.json", "latest.json", "results.json", "run.lock"]
    with open(os.path.join(runner.dir, "results.json")) as fp:
        saved = json.load(fp)
    assert saved["id"] == runner.id
    assert saved["name"] == runner.name
    assert saved["timestamp"] == runner.timestamp
    assert saved["results"] == {"0": {"val": {"loss": 1.0}}}


def test_best_json_only_when_best(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    runner.save_result()
    runner.append_result({"val": {"loss": 2.0}}, index=1)
    runner.save_result()
    with open(os.path.join(runner.dir, "latest.json")) as fp:
        assert json.load(fp)["index"] == 1
    with open(os.path.join(runner.dir, "best.json")) as fp:
        best = json.load(fp)
    assert best["index"] == 0
    assert best["val"] == {"loss": 1.0}


def test_save_result_without_best(new_runner: MakeRunner) -> None:
    runner = new_runner()
    runner.append_result({"val": {"loss": 1.0}}, index=0)
    runner.append_result({"val": {"loss": 2.0}}, index=1)
    runner.save_result()
    assert "best.json" not in os.listdir(runner.dir)


def test_format_epoch_result(new_runner: MakeRunner) -> None:
    runner = new_runner(epoch_end=10)
    runner.epochs = 3
    text = runner.format_epoch_result({"val": {"loss": 0.5}})
    assert text == "epoch [3/9]\nval: loss: 0.5000"


def test_format_step_result(new_runner: MakeRunner) -> None:
    runner = new_runner()
    assert runner.format_step_result({"loss": 0.12345}, "train", 12, 100) == "training on train [12/100]\tloss: 0.1235"


# Pure functions


def test_append_result_function() -> None:
    results = NestedDict()
    res.append_result(results, {"train": {"loss": 1.0}}, 0)
    stored = res.append_result(results, {"val": {"loss": 2.0}}, 0)
    assert stored.dict() == {"train": {"loss": 1.0}, "val": {"loss": 2.0}}


def test_best_index_and_epochs_without_improvement() -> None:
    scores = {0: 0.5, 1: 0.4, 2: 0.45, 3: 0.6}
    assert res.best_index(scores, min) == 1
    assert res.best_index({}, min) is None
    assert res.epochs_without_improvement(scores, min) == 2
    assert res.epochs_without_improvement({}, min) == 0
    assert res.is_best({}) is True


def test_with_two_train_splits_the_inferred_score_split_is_the_evaluated_one(new_runner):
    runner = new_runner(train_splits=["pretrain", "finetune"])
    results = {
        0: {"pretrain": {"loss": 1.7}, "finetune": {"loss": 1.0}, "dev": {"loss": 0.5}},
        1: {"pretrain": {"loss": 3.0}, "finetune": {"loss": 2.0}, "dev": {"loss": 1.1}},
        2: {"pretrain": {"loss": 3.7}, "finetune": {"loss": 6.2}, "dev": {"loss": 0.4}},
    }
    for index, result in results.items():
        runner.append_result(result, index=index)
    with pytest.warns(RuntimeWarning, match="chosen on 'dev'"):
        assert dict(runner.scores) == {0: 0.5, 1: 1.1, 2: 0.4}
    assert runner.best_index == 2
