"""
Token-weighted losses and skipped non-finite steps on 2 ranks, for `tests/runner/loop/test_tokens.py` and
`tests/runner/loop/test_nonfinite_steps.py` (which import the runners and data defined here).

    python -m torch.distributed.run --nproc_per_node=2 ... loss_steps_worker.py OUT_DIR {tokens,skip}

Each run has each rank write `OUT_DIR/{run}-rank{R}.pt`:

- `tokens`: padded sequences of lengths 1 to 32, `loss_normalization: tokens`, batch 2 x `accum_steps` 4 on each
  rank (a global batch of 16), 2 epochs: the parameters after the steps and the epoch losses; under DDP
  (`tokens-rank{R}.pt`), then FSDP2 (`tokens-fsdp-rank{R}.pt`).
- `skip`: `skip_nonfinite_steps: true`, batch 2, and a NaN in the input of the second batch of rank 1 only: the
  parameters, EMA, momentum, learning rate, steps and the epoch's `skipped_steps`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import ExponentialMovingAverage

VOCAB = 7
LENGTH = 32
SEQUENCES = 32  # lengths 1 to 32, one each, in a fixed shuffled order
NAN_INDEX = 5  # the regression sample that rank 1 reads in its second batch (no shuffling, batch 2, 2 ranks)


def sequence_data() -> TensorDataset:
    r"""`SEQUENCES` token sequences of lengths 1 to 32 padded to 32: inputs padded with 0, targets with -100."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randperm(LENGTH, generator=generator)[:SEQUENCES] + 1
    inputs = torch.randint(1, VOCAB, (SEQUENCES, LENGTH), generator=generator)
    targets = torch.randint(0, VOCAB, (SEQUENCES, LENGTH), generator=generator)
    padding = torch.arange(LENGTH)[None] >= lengths[:, None]
    inputs[padding], targets[padding] = 0, -100
    return TensorDataset(inputs, targets)


class TokenModel(nn.Module):
    r"""Embedding, tanh and a linear head: `(batch, vocab, length)` logits, as `CrossEntropyLoss` takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embedding(input))).transpose(1, 2)


def token_model() -> TokenModel:
    torch.manual_seed(0)
    return TokenModel()


class TokenRunner(dl.TorchRunner):
    r"""Next-token style classification of padded sequences, the criterion summing over unpadded tokens."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = sequence_data()
        self.model = token_model()
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5, momentum=0.9)


def regression_data(size: int = 16, nan_indices: tuple[int, ...] = ()) -> TensorDataset:
    r"""`size` regression samples; the inputs of `nan_indices` are NaN."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(size, 4, generator=generator)
    targets = torch.randn(size, 1, generator=generator)
    for index in nan_indices:
        inputs[index, 0] = float("nan")
    return TensorDataset(inputs, targets)


def regression_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class SkipRunner(dl.TorchRunner):
    r"""Regression with momentum SGD, a `StepLR` scheduler and an EMA; `config.nan_indices` poisons samples."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = regression_data(self.config.get("size", 16), tuple(self.config.get("nan_indices", ())))
        self.model = regression_model()
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.ema = ExponentialMovingAverage(self.model, decay=0.5)


def full(tensor: torch.Tensor) -> torch.Tensor:
    r"""A plain copy of `tensor`, gathered whole when it is a shard (`DTensor`, under FSDP2; collective)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.clone()


def snapshot(runner: dl.TorchRunner, results: Any) -> dict[str, Any]:
    r"""What a run ends with: parameters, EMA, momentum, learning rate, steps and the epoch results."""
    model = runner.unwrap(runner.model)
    state: dict[str, Any] = {
        "parameters": [full(parameter) for parameter in model.parameters()],
        "steps": runner.steps,
        "lr": runner.optimizer.param_groups[0]["lr"],
        "results": {int(epoch): dict(result["train"]) for epoch, result in results.items()},
        "momentum": [full(runner.optimizer.state[p]["momentum_buffer"]) for p in model.parameters()],
    }
    if runner.ema is not None:
        state["ema"] = [full(parameter) for parameter in runner.ema.module.parameters()]
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("run", choices=("tokens", "skip"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config: dict[str, Any] = {"log": False, "dir": os.path.join(args.out_dir, args.run), "score_split": "train"}
    config["dataloader"] = {"batch_size": 2, "shuffle": False}
    if args.run == "skip":
        runner = SkipRunner({**config, "epoch_end": 1, "skip_nonfinite_steps": True, "nan_indices": [NAN_INDEX]})
        torch.save(snapshot(runner, runner.train()), os.path.join(args.out_dir, f"skip-rank{runner.rank}.pt"))
        return
    config.update(epoch_end=2, loss_normalization="tokens", accum_steps=4)
    for strategy, name in (("ddp", "tokens"), ("fsdp", "tokens-fsdp")):
        runner = TokenRunner({**config, "strategy": strategy, "dir": os.path.join(args.out_dir, name)})
        torch.save(snapshot(runner, runner.train()), os.path.join(args.out_dir, f"{name}-rank{runner.rank}.pt"))


if __name__ == "__main__":
    main()
