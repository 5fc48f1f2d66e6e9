"""
`activation_checkpointing`: blocks recompute their activations in the backward pass, with the same gradients, far
fewer bytes saved for backward, and the same state dict keys; in one process, compiled, under DDP and FSDP2.

The 2-rank runs are in `workers/recompute_worker.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import Config
from danling.runner.distributed.recompute import ActivationCheckpointing, CheckpointedForward

WORKERS = Path(__file__).parents[1] / "workers"
WIDTH = 32


class Block(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, 4 * WIDTH)
        self.down = nn.Linear(4 * WIDTH, WIDTH)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down(torch.relu(self.up(x))))


class MLP(nn.Module):
    """Eight residual blocks in a `ModuleList` (what `fsdp.shard_modules` finds by default) and a head."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dropout) for _ in range(8)])
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class MLPRunner(dl.TorchRunner):
    """Regression with the 8-block MLP; records the gradients of every optimizer step."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(torch.randn(32, WIDTH, generator=generator), torch.randn(32, 1))
        torch.manual_seed(0)
        self.model = MLP(self.config.get("dropout", 0.0))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.gradients: list[list[torch.Tensor]] = []

    def optimizer_step(self) -> None:
        self.gradients.append([p.grad.clone() for p in self.unwrap(self.model).parameters()])
        super().optimizer_step()


def make(tmp_path: Path, name: str, **config: Any) -> MLPRunner:
    settings = {"dir": str(tmp_path / name), "log": False, "epoch_end": 1, "device": "cpu", "seed": 0}
    settings.update(dataloader={"batch_size": 8}, **config)
    return MLPRunner(settings)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    # Bytes of every tensor autograd keeps for the backward pass of one forward (parameters included).
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum().backward()
    return total[0]


def assert_same_gradients(actual: MLPRunner, expected: MLPRunner) -> None:
    assert len(actual.gradients) == len(expected.gradients) == 4
    for step, (mine, theirs) in enumerate(zip(actual.gradients, expected.gradients)):
        for got, want in zip(mine, theirs):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"step {step}")


@pytest.mark.parametrize("setting", [True, ["Block"]])
def test_gradients_equal_and_saved_bytes_drop(tmp_path, setting):
    plain = make(tmp_path, "plain", dropout=0.1)
    recomputed = make(tmp_path, "recomputed", dropout=0.1, activation_checkpointing=setting)
    blocks = recomputed.unwrap(recomputed.model).blocks
    assert all(isinstance(block.__dict__.get("forward"), CheckpointedForward) for block in blocks)
    x = torch.randn(64, WIDTH)
    with torch.random.fork_rng():
        kept = saved_bytes(plain.model, x)
    with torch.random.fork_rng():
        recomputing = saved_bytes(recomputed.model, x)
    assert kept >= 2 * recomputing, (kept, recomputing)
    for runner in (plain, recomputed):
        runner.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks in both runs; recomputing draws them again alike
        runner.train()
    assert_same_gradients(recomputed, plain)


def test_checkpoints_keep_their_keys_and_load_either_way(tmp_path):
    recomputed = make(tmp_path, "recomputed", activation_checkpointing=True)
    plain = make(tmp_path, "plain")
    assert list(recomputed.model.state_dict()) == list(plain.model.state_dict())
    recomputed.train()
    recomputed.save_checkpoint()
    resumed = make(tmp_path, "resumed")  # without the flag
    resumed.load_checkpoint(Path(recomputed.checkpoint_dir) / "latest.pth")
    for loaded, trained in zip(resumed.model.parameters(), recomputed.model.parameters()):
        assert torch.equal(loaded, trained)
    back = make(tmp_path, "back", activation_checkpointing=True)
    back.load_checkpoint(Path(recomputed.checkpoint_dir) / "latest.pth")
    for loaded, trained in zip(back.model.parameters(), recomputed.model.parameters()):
        assert torch.equal(loaded, trained)


def test_compiled_model_recomputes_with_the_same_gradients(tmp_path):
    options = {"compile": True, "compile_options": {"backend": "aot_eager"}}  # no C++ toolchain needed
    plain = make(tmp_path, "plain", **options)
    recomputed = make(tmp_path, "recomputed", activation_checkpointing=True, **options)
    plain.train()
    recomputed.train()
    assert hasattr(recomputed.model, "_orig_mod")
    assert_same_gradients(recomputed, plain)


def test_evaluation_and_inference_run_the_blocks_once(tmp_path):
    runner = make(tmp_path, "run", activation_checkpointing=True)
    runner.datasets.val = runner.datasets.train
    calls = []
    runner.model.blocks[0].up.register_forward_hook(lambda *args: calls.append(1))
    runner.evaluate(["val"])
    runner.infer("val")
    assert len(calls) == 4 + 4  # one forward per batch: nothing is recomputed without gradients


def test_blocks_found_as_fsdp_finds_them():
    model = MLP()
    assert ActivationCheckpointing(True).targets(model) == list(model.blocks)  # the modules of its ModuleList
    linears = [layer for block in model.blocks for layer in (block.up, block.down)]
    assert ActivationCheckpointing(True, shard_modules=["Linear"]).targets(model) == [*linears, model.head]
    assert ActivationCheckpointing(["Block", "Linear"]).targets(model) == [*model.blocks, model.head]  # outermost
    model._no_split_modules = ["Linear"]
    assert ActivationCheckpointing(True).targets(model) == [*linears, model.head]
    assert ActivationCheckpointing(False).targets(model) == ActivationCheckpointing(None).targets(model) == []


def test_applying_twice_changes_nothing():
    model = MLP()
    policy = ActivationCheckpointing(["Block"])
    policy.apply(model)
    forwards = [block.forward for block in model.blocks]
    policy.apply(model)
    assert [block.forward for block in model.blocks] == forwards


def test_an_mlp_of_sequential_blocks_recomputes_each_block(tmp_path):
    # Eight blocks stacked in an `nn.Sequential`, each a small `nn.Sequential` (no ModuleList, no class to name).
    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, 64), nn.ReLU(), nn.Linear(64, WIDTH)) for _ in range(8)])

    plain, recomputed = mlp(), mlp()
    blocks = ActivationCheckpointing(True).apply(recomputed)
    assert blocks == list(recomputed)
    x = torch.randn(64, WIDTH)
    kept, recomputing = saved_bytes(plain, x), saved_bytes(recomputed, x)
    assert kept >= 2 * recomputing, (kept, recomputing)
    for mine, theirs in zip(recomputed.parameters(), plain.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=0)


def test_a_model_without_blocks_or_with_an_unknown_class_is_refused():
    with pytest.raises(ValueError, match="activation_checkpointing is True, but the model has no blocks"):
        ActivationCheckpointing(True).apply(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ValueError, match=r"activation_checkpointing names \['Attention'\], which match no submodule"):
        ActivationCheckpointing(["Block", "Attention"]).apply(MLP())


@pytest.mark.parametrize("value", [[], "Block;Head", [1], {"Block": True}, 2.5])
def test_other_forms_are_refused(value):
    with pytest.raises(ValueError, match="config key 'activation_checkpointing' is .*; accepted values are"):
        Config({"activation_checkpointing": value})


def test_accepted_forms():
    assert Config({"activation_checkpointing": "yes"}).activation_checkpointing is True
    assert Config({"activation_checkpointing": [Block, "MLP"]}).activation_checkpointing == ["Block", "MLP"]
    parsed = Config().parse(["--activation_checkpointing", "Block,MLP"], default_config=None)
    assert parsed.activation_checkpointing == ["Block", "MLP"]


@pytest.mark.distributed
def test_ddp_and_fsdp_gradients_equal_without_recomputing(tmp_path, torchrun):
    torchrun(WORKERS / "recompute_worker.py", str(tmp_path), timeout=300)
    report = torch.load(tmp_path / "report.pt", weights_only=False)
    for name in ("ddp", "fsdp", "ddp-compiled", "fsdp-compiled"):
        plain, recomputed = report[name], report[f"{name}-recompute"]
        assert recomputed["wrapped_blocks"] == 2, name
        assert plain["keys"] == recomputed["keys"], name
        assert len(plain["gradients"]) == len(recomputed["gradients"]) == 6, name
        for step, (mine, theirs) in enumerate(zip(recomputed["gradients"], plain["gradients"])):
            for got, want in zip(mine, theirs):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"{name} step {step}")
