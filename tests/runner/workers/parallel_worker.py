"""
Two-process worker for `tests/runner/distributed/test_parallel.py`: the same training under `strategy: ddp` and `fsdp`.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/runner/workers/parallel_worker.py OUT_DIR

On CPU it runs on gloo; on two GPUs (`tests/runner/test_cuda.py`) on NCCL, where every training step also runs
under `torch.cuda.set_sync_debug_mode("error")`.

For each of fp32 and bf16, a classifier with two residual blocks trains 2 epochs (SGD with momentum, a scheduler,
an EMA, `accum_steps=3` with a short last window, `max_grad_norm`) under DDP and under FSDP2 from the same seed,
then evaluates an unevenly sharded split and infers. Rank 0 writes `OUT_DIR/report.pt`: per run the full model,
EMA and optimizer states (gathered by `state_dict()`, a collective), results, predictions and the host syncs counted
inside training steps; plus an FSDP checkpoint reloaded into a fresh FSDP runner.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner import ExponentialMovingAverage
from danling.utils.io import to_plain


def load_host_sync_counter() -> type:
    spec = importlib.util.spec_from_file_location("host_sync", Path(__file__).with_name("host_sync.py"))
    module = sys.modules.setdefault("host_sync", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module.HostSyncCounter


HostSyncCounter = load_host_sync_counter()


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 1).long())


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))


class ParallelRunner(dl.TorchRunner):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = make_data(52, 0)  # 26 per rank: 7 batches of 4, windows of 3, 3 and 1
        self.datasets.val = make_data(33, 1)  # shards of 17 and 16: 5 and 4 batches
        self.model = Net()  # the seed is biased by the rank: the ranks build different weights
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)
        self.ema = ExponentialMovingAverage(self.model, decay=0.8)
        self.metrics = dl.metrics.multiclass_metrics(num_classes=3)
        self.counter = HostSyncCounter()

    def train_step(self, data: Any) -> Any:
        # On CUDA, torch itself also raises on any synchronising call inside the step.
        strict = self.device.type == "cuda"
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        self.counter.enabled = True
        try:
            return super().train_step(data)
        finally:
            self.counter.enabled = False
            if strict:
                torch.cuda.set_sync_debug_mode("default")


def config_for(out_dir: str, name: str, strategy: str, precision: str | None, **extra: Any) -> dict:
    config = {"dir": os.path.join(out_dir, name), "seed": 7, "epoch_end": 2, "log": False, "strategy": strategy}
    config.update(precision=precision, accum_steps=3, max_grad_norm=0.5, dataloader={"batch_size": 4})
    config["fsdp"] = {"shard_modules": ["Block"]}
    return {**config, **extra}


def count_gradient_reductions() -> list[int]:
    # FSDP2 reduce-scatters the gradients of one sharded group per call (a private function: test-only).
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    counts = [0]
    reduce = _fsdp_param_group.foreach_reduce

    def counting_reduce(*args: Any, **kwargs: Any) -> Any:
        counts[0] += 1
        return reduce(*args, **kwargs)

    _fsdp_param_group.foreach_reduce = counting_reduce
    return counts


def train(config: dict) -> tuple[ParallelRunner, dict]:
    runner = ParallelRunner(config)
    reductions = count_gradient_reductions()
    with runner.counter:
        results = runner.train()
    report = {
        "results": to_plain(results),
        "wrapped": type(runner.model).__name__,
        "sharded_blocks": sum(type(m).__name__.startswith("FSDP") for m in runner.unwrap(runner.model).modules()),
        "syncs": [name for name, _ in runner.counter.calls],
        "device": str(runner.device),
        "backend": dist.get_backend(),
        "steps": runner.steps,
        "micro_steps": 2 * len(runner.dataloaders.train),
        "gradient_reductions": reductions[0],
        "evaluate": to_plain(runner.evaluate(["val"])),
        "infer": runner.infer("val"),
    }
    state = runner.state_dict()
    report.update(model=state["model"], ema=state["ema"], optimizer=state["optimizer"])
    return runner, report


def main() -> None:
    out_dir = sys.argv[1]
    report: dict[str, Any] = {}
    for precision in (None, "bf16"):
        for strategy in ("ddp", "fsdp"):
            name = f"{strategy}-{precision or 'fp32'}"
            runner, report[name] = train(config_for(out_dir, name, strategy, precision))
            if name == "fsdp-fp32":
                runner.save_checkpoint()
                checkpoint = os.path.join(runner.checkpoint_dir, "latest.dcp")  # sharded: a directory
                report["checkpoint"] = checkpoint
                fresh = ParallelRunner(config_for(out_dir, "fsdp-reload", "fsdp", None))
                fresh.load_checkpoint(checkpoint)
                reloaded = fresh.state_dict()
                report["reloaded"] = {key: reloaded[key] for key in ("model", "ema", "optimizer")}
                fresh.close()
                pretrained = ParallelRunner(config_for(out_dir, "fsdp-pretrained", "fsdp", None, pretrained=checkpoint))
                report["pretrained"] = pretrained.state_dict()["model"]
                pretrained.close()
            runner.close()
    # Sharded and compiled (aot_eager: Dynamo and AOTAutograd without a C++ toolchain).
    options = {"compile": True, "compile_options": {"backend": "aot_eager"}}
    compiled = config_for(out_dir, "fsdp-compiled", "fsdp", None, **options)
    runner, report["fsdp-compiled"] = train(compiled)
    runner.close()
    if dist.get_rank() == 0:
        torch.save(report, os.path.join(out_dir, "report.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
