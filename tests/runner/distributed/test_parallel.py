"""
`config.strategy`: DDP and FSDP2 train to the same parameters; the policy's options are validated.

The 2-process worker (`workers/parallel_worker.py`) runs once per module and trains the same classifier under
`ddp` and `fsdp`, in fp32 and bf16, with accumulation, clipping, a scheduler and an EMA.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from danling.runner.checkpointing import ShardedFormat
from danling.runner.distributed.parallel import (
    DataParallel,
    FullyShardedDataParallel,
    build_parallelism,
    compile_arguments,
    shard_targets,
)

WORKERS = Path(__file__).parents[1] / "workers"
CLEAN_NAMES = ("module.", "_orig_mod", "_fsdp", "_checkpoint_wrapped")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict[str, Any]:
    out_dir = tmp_path_factory.mktemp("parallel")
    torchrun(WORKERS / "parallel_worker.py", str(out_dir), timeout=300)
    return torch.load(out_dir / "report.pt", weights_only=False)


def assert_states_close(actual: dict, expected: dict, atol: float) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert type(actual[name]) is torch.Tensor, name  # full tensors, not DTensor shards
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


def assert_fsdp_matches_ddp(ddp: dict[str, Any], fsdp: dict[str, Any], precision: str) -> float:
    r"""The checks of one precision's DDP and FSDP2 runs of the 2-rank worker; returns the tolerance used."""
    assert ddp["wrapped"] == "DistributedDataParallel"
    assert fsdp["wrapped"].startswith("FSDP")
    assert fsdp["sharded_blocks"] == 3  # two `Block`s, then the root
    assert ddp["steps"] == fsdp["steps"] == 6  # 7 micro-steps per epoch in windows of 3, 3 and 1
    atol = 1e-5 if precision == "fp32" else 1e-3
    assert_states_close(fsdp["model"], ddp["model"], atol)
    assert_states_close(fsdp["ema"], ddp["ema"], atol)
    for name in ddp["optimizer"]["state"]:
        assert_states_close(fsdp["optimizer"]["state"][name], ddp["optimizer"]["state"][name], atol)
    assert fsdp["optimizer"]["param_groups"] == ddp["optimizer"]["param_groups"]  # scheduler stepped alike
    return atol


@pytest.mark.distributed
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_and_ddp_reach_the_same_parameters(report, precision):
    ddp, fsdp = report[f"ddp-{precision}"], report[f"fsdp-{precision}"]
    atol = assert_fsdp_matches_ddp(ddp, fsdp, precision)
    assert fsdp["results"][1]["train"]["loss"] == pytest.approx(ddp["results"][1]["train"]["loss"], abs=atol)


@pytest.mark.distributed
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_evaluates_and_infers_uneven_shards_like_ddp(report, precision):
    ddp, fsdp = report[f"ddp-{precision}"], report[f"fsdp-{precision}"]
    for key in ("loss", "acc", "f1"):
        assert fsdp["evaluate"]["val"][key] == pytest.approx(ddp["evaluate"]["val"][key], abs=1e-4)
    assert fsdp["infer"].shape == ddp["infer"].shape == (33, 3)
    torch.testing.assert_close(fsdp["infer"], ddp["infer"], atol=1e-4, rtol=0)


@pytest.mark.distributed
def test_fsdp_reduces_gradients_once_per_optimizer_step(report):
    fsdp = report["fsdp-fp32"]
    # 14 micro-steps, 6 optimizer steps, 3 sharded groups: reduced only on the last micro-step of each window.
    assert fsdp["micro_steps"] == 14
    assert fsdp["gradient_reductions"] == 6 * 3


@pytest.mark.distributed
def test_fsdp_with_compile_matches_ddp(report):
    ddp, compiled = report["ddp-fp32"], report["fsdp-compiled"]
    assert compiled["wrapped"] == "OptimizedModule"
    assert compiled["sharded_blocks"] == 3
    assert_states_close(compiled["model"], ddp["model"], 1e-5)
    torch.testing.assert_close(compiled["infer"], ddp["infer"], atol=1e-4, rtol=0)


@pytest.mark.distributed
@pytest.mark.parametrize("run", ["ddp-fp32", "fsdp-fp32", "ddp-bf16", "fsdp-bf16", "fsdp-compiled"])
def test_training_steps_make_no_host_sync_under_either_strategy(report, run):
    assert report[run]["syncs"] == []


@pytest.mark.distributed
def test_fsdp_checkpoint_holds_full_clean_state_and_reloads(report):
    assert sorted(os.listdir(report["checkpoint"])) == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # per rank
    checkpoint = ShardedFormat().read(report["checkpoint"])  # read in full, in this process
    assert not any(marker in name for name in checkpoint["model"] for marker in CLEAN_NAMES)
    assert_states_close(checkpoint["model"], report["fsdp-fp32"]["model"], 0)
    for part in ("model", "ema"):  # into a fresh FSDP runner on 2 ranks
        assert_states_close(report["reloaded"][part], report["fsdp-fp32"][part], 0)
    assert_states_close(report["pretrained"], report["fsdp-fp32"]["model"], 0)  # `pretrained`: weights only
    # ... and into one process under DDP.
    spec = importlib.util.spec_from_file_location("parallel_worker", WORKERS / "parallel_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    runner = worker.ParallelRunner(worker.config_for(str(Path.cwd()), "single", "ddp", None, device="cpu"))
    runner.load_checkpoint(report["checkpoint"])
    state = runner.state_dict()
    for part in ("model", "ema"):
        assert_states_close(state[part], report["fsdp-fp32"][part], 0)
    for name, value in report["fsdp-fp32"]["optimizer"]["state"].items():
        assert_states_close(state["optimizer"]["state"][name], value, 0)
    assert runner.steps == 6


def test_strategy_defaults_to_ddp_and_rejects_unknown_values():
    assert type(build_parallelism({})) is DataParallel
    assert type(build_parallelism({"strategy": "ddp"})) is DataParallel
    assert type(build_parallelism({"strategy": "fsdp"})) is FullyShardedDataParallel
    with pytest.raises(ValueError, match=r"unknown strategy 'deepspeed'; accepted values are 'ddp', 'fsdp'"):
        build_parallelism({"strategy": "deepspeed"})


def test_fsdp_with_fp16_is_a_clear_error(make_runner):
    with pytest.raises(ValueError, match="fsdp.*fp16.*bf16"):
        make_runner(strategy="fsdp", precision="fp16")


def test_compile_settings_of_another_type_are_clear_errors():
    with pytest.raises(ValueError, match="compile is set to 'yes'"):
        compile_arguments("yes")
    with pytest.raises(ValueError, match="compile_options is set to 'eager'"):
        compile_arguments(True, "eager")


def test_compile_options_reach_the_policy_through_a_typed_config(make_runner):
    # `compile` is declared a bool: the options have their own key and must survive the config's conversion.
    runner = make_runner(compile=True, compile_options={"backend": "aot_eager", "dynamic": False})
    assert runner._parallel.compile_options == {"backend": "aot_eager", "dynamic": False}
    assert make_runner(compile_options={"backend": "aot_eager"})._parallel.compile_options is None


def test_fsdp_in_one_process_trains_exactly_like_ddp(make_runner):
    ddp = make_runner(seed=1, accum_steps=2, max_grad_norm=0.5)
    fsdp = make_runner(seed=1, strategy="fsdp", accum_steps=2, max_grad_norm=0.5)
    ddp.train()
    fsdp.train()
    for a, b in zip(ddp.unwrap(ddp.model).parameters(), fsdp.unwrap(fsdp.model).parameters()):
        assert torch.equal(a, b)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)


def test_shard_modules_match_class_names_and_unknown_names_fail():
    model = nn.Sequential(Block(), nn.ReLU(), Block(), nn.ModuleList([nn.Linear(2, 2)]))
    assert shard_targets(model, ["Block"]) == [model[0], model[2]]
    assert shard_targets(model, None) == [model[3][0]]  # default: the members of ModuleLists
    model._no_split_modules = ["Block"]
    assert shard_targets(model, None) == [model[0], model[2]]
    with pytest.raises(ValueError, match=r"\['Layer'\], which match no submodule; the model has \[.*'Block'"):
        shard_targets(model, ["Block", "Layer"])


class UnsizedLoader:
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        return iter(self.loader)


@pytest.mark.parametrize(("strategy", "sized", "expected"), [("fsdp", False, 0), ("fsdp", True, 2), ("ddp", False, 3)])
def test_fsdp_skips_gradient_sync_only_in_windows_of_known_end(make_runner, strategy, sized, expected):
    # 5 batches in windows of 2. Under FSDP2 the sharded gradients of a window an unsized loader cuts short could
    # not be reduced afterwards, so every micro-step synchronises; DDP skips and averages at the flush instead.
    runner = make_runner(strategy=strategy, accum_steps=2, epoch_end=1)
    skipped: list[int] = []
    runner._parallel.no_sync = lambda model: skipped.append(1) or nullcontext()
    if not sized:
        runner.dataloaders.train = UnsizedLoader(runner.dataloaders.train)
    runner.train(evaluate_splits=[])
    assert len(skipped) == expected
    assert runner.steps == 3
