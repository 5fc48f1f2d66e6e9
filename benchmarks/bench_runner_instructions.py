"""Per-step overhead of `danling.TorchRunner` in CPU instructions, counted by valgrind's callgrind.

Wall-clock ratios on a shared 2-core machine swing by +-20% between rounds; instruction counts do not. This script
runs the same workload as `bench_runner.py` (MLP 32 -> 64 -> 10, SGD, batch 32, 8192 samples, 1 thread) under
`valgrind --tool=callgrind`, once with zero epochs and once with `--epochs` epochs, for the hand-written loop and
for `TorchRunner.train_epoch` (logging on at the default interval), and prints the instructions per step of each
and their ratio. Target: <= 1.05. It takes several minutes (callgrind runs Python ~50x slower).

Usage:
    python benchmarks/bench_runner_instructions.py              # 3 epochs (768 steps), fp32
    python benchmarks/bench_runner_instructions.py --epochs 1 --scenario bf16   # also: accum, fp16
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

TARGET = 1.05
STEPS_PER_EPOCH = 8192 // 32

# The data, options and imports of the workload, shared with `bench_runner_breakdown.py`; it reads `scenario`.
SETUP = r"""
import io, os, sys, tempfile
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import danling as dl

torch.set_num_threads(1)
scenarios = {"fp32": {}, "accum": {"accum_steps": 4}, "bf16": {"precision": "bf16"}, "fp16": {"precision": "fp16"}}
options = scenarios[scenario]
accum_steps = options.get("accum_steps", 1)
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
generator = torch.Generator().manual_seed(1234)
dataset = TensorDataset(torch.randn(8192, 32, generator=generator), torch.randint(0, 10, (8192,), generator=generator))
"""

WORKLOAD = (
    """
import sys
mode, epochs, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
"""
    + SETUP
    + r"""


def mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


class Runner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = mlp()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


sys.stdout = io.StringIO()
if mode == "runner":
    config = {"dir": tempfile.mkdtemp(), "epoch_end": epochs, "dataloader": {"batch_size": 32}, **options}
    runner = Runner(config)
    for epoch in range(epochs):
        runner.epochs = epoch
        runner.train_epoch("train")
else:
    model, criterion = mlp(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype is torch.float16)
    for epoch in range(epochs):
        total = torch.zeros((), dtype=torch.float64)
        for index, (x, y) in enumerate(loader):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = criterion(model(x), y)
            scaler.scale(loss / accum_steps if accum_steps > 1 else loss).backward()
            if (index + 1) % accum_steps == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            total.add_(loss.detach(), alpha=len(y))
        total.item()
"""
)


def count_instructions(script: str, mode: str, epochs: int, scenario: str) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script, mode]
        completed = subprocess.run([*command, str(epochs), scenario], capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", completed.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no instruction count:\n{completed.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--scenario",
        default="fp32",
        choices=("fp32", "accum", "bf16", "fp16"),
        help="fp32, accum (accum_steps=4), bf16 autocast or fp16 autocast with the grad scaler (default fp32)",
    )
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fp:
        fp.write(WORKLOAD)
    runs = [(mode, epochs) for mode in ("loop", "runner") for epochs in (0, args.epochs)]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            counted = pool.map(lambda run: count_instructions(fp.name, *run, args.scenario), runs)
            counts = dict(zip(runs, counted))
    finally:
        os.remove(fp.name)
    steps = args.epochs * STEPS_PER_EPOCH
    per_step = {mode: (counts[(mode, args.epochs)] - counts[(mode, 0)]) / steps for mode in ("loop", "runner")}
    ratio = per_step["runner"] / per_step["loop"]
    print(f"[{args.scenario}] instructions per batch over {steps} batches: loop {per_step['loop']:,.0f}, ", end="")
    print(f"runner {per_step['runner']:,.0f}")
    print(f"[{args.scenario}] runner / loop: {ratio:.3f} (target <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
