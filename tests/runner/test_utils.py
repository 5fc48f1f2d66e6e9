from __future__ import annotations

import re
from collections import namedtuple
from datetime import datetime

import pytest
import torch

from danling.runner.utils import (
    RunnerMeta,
    RunnerMode,
    format_result,
    get_git_hash,
    get_time_str,
    on_local_main_process,
    on_main_process,
    to_device,
)


def test_runner_mode_values() -> None:
    assert [mode.value for mode in RunnerMode] == ["train", "evaluate", "infer"]
    assert RunnerMode("train") is RunnerMode.train
    assert RunnerMode.evaluate == "evaluate"
    assert str(RunnerMode.infer) == "infer"


def test_unknown_runner_mode() -> None:
    with pytest.raises(ValueError, match="'train', 'evaluate', 'infer'"):
        RunnerMode("test")


def test_runner_meta_calls_post_init_after_init() -> None:
    order: list[str] = []

    class Thing(metaclass=RunnerMeta):
        def __init__(self) -> None:
            order.append("init")

        def __post_init__(self) -> None:
            order.append("post")

    Thing()
    assert order == ["init", "post"]


def test_get_time_str_doc_example() -> None:
    assert get_time_str(datetime(2024, 1, 2, 3, 4, 5, 678000)) == "002030405678"


def test_get_time_str_now() -> None:
    assert re.fullmatch(r"\d{12}", get_time_str())


def test_get_git_hash_outside_a_repository() -> None:
    assert get_git_hash() is None


class Process:
    def __init__(self, main: bool) -> None:
        self.is_main_process = main
        self.is_local_main_process = main

    @on_main_process
    def main_only(self) -> str:
        return "ran"

    @on_local_main_process
    def local_only(self) -> str:
        return "ran"


@pytest.mark.parametrize("main", [True, False])
def test_on_main_process(main: bool) -> None:
    process = Process(main)
    expected = "ran" if main else None
    assert process.main_only() == expected
    assert process.local_only() == expected


def test_format_result_doc_examples() -> None:
    assert format_result({"loss": 0.12345, "acc": 0.9}) == "loss: 0.1235\tacc: 0.9000"
    nested = {"train": {"loss": 1.0}, "val": {"loss": 2.0, "acc": 0.5}}
    assert format_result(nested) == "train: loss: 1.0000\nval: loss: 2.0000\tacc: 0.5000"


def test_format_result_values() -> None:
    text = format_result({"t": torch.tensor(0.5), "n": float("nan"), "l": [0.1, 0.2], "s": "x", "i": 3}, ".2f")
    assert text == "t: 0.50\tn: nan\tl: [0.10, 0.20]\ts: x\ti: 3.00"


def test_to_device_keeps_containers() -> None:
    Pair = namedtuple("Pair", ["a", "b"])
    batch = {"x": torch.ones(1), "pair": Pair(torch.zeros(1), "label"), "list": [torch.ones(2)], "n": 3}
    moved = to_device(batch, "cpu")
    assert isinstance(moved["pair"], Pair)
    assert moved["pair"].b == "label"
    assert isinstance(moved["list"], list)
    assert moved["n"] == 3
    assert moved["x"].device.type == "cpu"
