"""Per-step overhead of `danling.TorchRunner` against a hand-written PyTorch training loop.

Both variants train the same tiny MLP (32 -> 64 -> 10, ReLU), with SGD (lr 0.01) and `CrossEntropyLoss`, on 8192
synthetic samples drawn from a fixed generator, in batches of 32 from
`DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)`, for 3 epochs, on the CPU with
`torch.set_num_threads(1)`. The global torch seed is the same in both, so they initialise the model and shuffle the
data identically and must end with the same loss (printed as a check).

(A) `loop`: forward, loss, `zero_grad(set_to_none=True)`, backward, step, and a sample-weighted running sum of the
    loss kept as a tensor (no `.item()` per step; one per epoch for the mean).
(B) `runner`: a `TorchRunner` subclass with the config a user would have: logging on (to `dir/run.log` and to
    stdout, which the benchmark sends to /dev/null), `progress_bar` left at its default (stderr is captured to a
    file, so it is not a TTY and no bar is drawn), `dir` in a temporary directory, `epoch_end=3`,
    `dataloader.batch_size=32`, no evaluation split.

Each variant runs in its own Python process, interleaved A, B, B, A, A, B... for `--rounds` rounds (the order
alternates between rounds). Every process reports
its time per optimizer step over the training epochs, excluding start-up, imports and building the model and data:
A from just before the first batch of epoch 0 to the end of the last epoch; B the whole `runner.train()` call
("full": includes the per-epoch `results.json`/`latest.json`/`best.json` and `latest.pth`/`best.pth` writes, each
fsynced) and, separately, the time spent inside `train_epoch` ("train-only": the same span without the per-epoch
result and checkpoint writes), each in wall-clock and in process CPU time. The summary gives the median over rounds
of the per-round ratio B/A for each; the target is B/A <= 1.05. It also gives the ratio of the fastest B to the
fastest A (the least disturbed runs), which is more robust when other processes share the machine.

Usage:
    python benchmarks/bench_runner.py                 # 7 rounds
    python benchmarks/bench_runner.py --rounds 11
    python benchmarks/bench_runner.py --profile       # runner variant once under cProfile, top 25 cumulative
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
from time import perf_counter, process_time

TARGET = 1.05
SAMPLES = 8192
BATCH_SIZE = 32
EPOCHS = 3
LR = 0.01
DATA_SEED = 1234
MODEL_SEED = 0


def make_data(samples: int):
    import torch

    generator = torch.Generator().manual_seed(DATA_SEED)
    x = torch.randn(samples, 32, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return x, y


def make_model():
    from torch import nn

    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


# Scenario -> runner config; the hand-written loop does the same by hand (see `run_loop`).
SCENARIOS = {
    "fp32": {},
    "accum": {"accum_steps": 4},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
}


def run_loop(epochs: int, samples: int, scenario: str = "fp32") -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data(samples)
    torch.manual_seed(MODEL_SEED)
    model = make_model()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    accum_steps = SCENARIOS[scenario].get("accum_steps", 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype is torch.float16)
    model.train()
    steps = 0
    losses = []
    start, cpu_start = perf_counter(), process_time()
    for _ in range(epochs):
        loss_sum = torch.zeros((), dtype=torch.float64)
        count = 0
        for index, (input, target) in enumerate(loader):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                pred = model(input)
                loss = criterion(pred, target)
            if accum_steps > 1:
                scaler.scale(loss / accum_steps).backward()
            else:
                scaler.scale(loss).backward()
            if (index + 1) % accum_steps == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
            loss_sum.add_(loss.detach(), alpha=target.shape[0])
            count += target.shape[0]
        losses.append(loss_sum.item() / count)
    seconds, cpu = perf_counter() - start, process_time() - cpu_start
    result = {"steps": steps, "batches": epochs * len(loader), "seconds": seconds, "train_seconds": seconds}
    return {**result, "cpu_seconds": cpu, "train_cpu_seconds": cpu, "loss": losses[-1]}


def build_runner(epochs: int, samples: int, directory: str, scenario: str = "fp32"):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import danling as dl

    class BenchRunner(dl.TorchRunner):
        def __init__(self, config, x, y) -> None:
            super().__init__(config)
            self.train_epoch_seconds = 0.0
            self.train_epoch_cpu_seconds = 0.0
            self.datasets.train = TensorDataset(x, y)
            self.model = make_model()
            self.criterion = nn.CrossEntropyLoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

        def train_epoch(self, split: str = "train"):
            start, cpu_start = perf_counter(), process_time()
            result = super().train_epoch(split)
            self.train_epoch_seconds += perf_counter() - start
            self.train_epoch_cpu_seconds += process_time() - cpu_start
            return result

    x, y = make_data(samples)
    torch.manual_seed(MODEL_SEED)
    config = {"dir": directory, "epoch_end": epochs, "dataloader": {"batch_size": BATCH_SIZE}}
    return BenchRunner({**config, **SCENARIOS[scenario]}, x, y)


def run_runner(epochs: int, samples: int, scenario: str = "fp32") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as directory:
        runner = build_runner(epochs, samples, directory, scenario)
        start, cpu_start = perf_counter(), process_time()
        results = runner.train()
        seconds, cpu = perf_counter() - start, process_time() - cpu_start
        steps = runner.steps
        batches = epochs * len(runner.dataloaders.train)
        runner.close()
    result = {"steps": steps, "batches": batches, "seconds": seconds, "train_seconds": runner.train_epoch_seconds}
    result.update(cpu_seconds=cpu, train_cpu_seconds=runner.train_epoch_cpu_seconds)
    return {**result, "loss": results[epochs - 1]["train"]["loss"]}


def worker(variant: str, epochs: int, samples: int, result_file: str, scenario: str) -> None:
    import torch

    torch.set_num_threads(1)
    run = run_loop if variant == "loop" else run_runner
    result = run(epochs, samples, scenario)
    with open(result_file, "w", encoding="utf-8") as fp:
        json.dump(result, fp)


def spawn(variant: str, epochs: int, samples: int, scenario: str = "fp32") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-runner-ipc-") as directory:
        result_file = os.path.join(directory, "result.json")
        stderr_file = os.path.join(directory, "stderr.txt")
        command = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--result-file", result_file]
        command += ["--epochs", str(epochs), "--samples", str(samples), "--scenario", scenario]
        with open(stderr_file, "w", encoding="utf-8") as stderr:
            code = subprocess.call(command, stdout=subprocess.DEVNULL, stderr=stderr)
        if code != 0:
            with open(stderr_file, encoding="utf-8") as fp:
                raise RuntimeError(f"{variant} worker failed with exit code {code}:\n{fp.read()}")
        with open(result_file, encoding="utf-8") as fp:
            return json.load(fp)


def us_per_step(result: dict, key: str = "seconds") -> float:
    # Per batch (micro-step): with accumulation an optimizer step spans several.
    return result[key] / result["batches"] * 1e6


COLUMNS = (
    ("A", "loop", "seconds"),
    ("B full", "runner", "seconds"),
    ("B train", "runner", "train_seconds"),
    ("A cpu", "loop", "cpu_seconds"),
    ("B cpu full", "runner", "cpu_seconds"),
    ("B cpu train", "runner", "train_cpu_seconds"),
)
RATIOS = (
    ("wall, full train()", 1, 0),
    ("wall, train-only (no per-epoch writes)", 2, 0),
    ("cpu,  full train()", 4, 3),
    ("cpu,  train-only (no per-epoch writes)", 5, 3),
)


def benchmark(rounds: int, epochs: int, samples: int, scenarios: list[str]) -> None:
    print(f"tiny MLP, batch {BATCH_SIZE}, {samples} samples, {epochs} epochs, 1 thread, {rounds} rounds (A/B/A/B...)")
    print("us/batch: A = hand-written loop, B full = runner.train(), B train = train-only (no per-epoch writes);")
    print("wall clock (perf_counter) and CPU time of the process (process_time, less sensitive to other load)")
    print(f"scenarios, interleaved within each round: {', '.join(scenarios)}")
    names = "".join(f"{name:>12}" for name, _, _ in COLUMNS)
    print(f"{'scenario':>8}{'round':>6}{names}{'B/A full':>10}{'B/A train':>10}  final loss A / B")
    rows: dict[str, list[list[float]]] = {scenario: [] for scenario in scenarios}
    for index in range(rounds):
        for scenario in scenarios:
            # Alternate which variant goes first (A B, B A, ...): a machine that slows down or speeds up within a
            # round would otherwise always favour the same one.
            order = ("loop", "runner") if index % 2 == 0 else ("runner", "loop")
            results = {variant: spawn(variant, epochs, samples, scenario) for variant in order}
            if results["loop"]["steps"] != results["runner"]["steps"]:
                raise RuntimeError(f"step counts differ: {results['loop']['steps']} and {results['runner']['steps']}")
            row = [us_per_step(results[variant], key) for _, variant, key in COLUMNS]
            rows[scenario].append(row)
            cells = "".join(f"{value:>12.1f}" for value in row)
            losses = f"{results['loop']['loss']:.6f} / {results['runner']['loss']:.6f}"
            ratios = f"{row[1] / row[0]:>10.3f}{row[2] / row[0]:>10.3f}"
            print(f"{scenario:>8}{index:>6}{cells}{ratios}  {losses}", flush=True)
    for scenario in scenarios:
        summarise(scenario, rows[scenario])


def summarise(scenario: str, rows: list[list[float]]) -> None:
    medians = "; ".join(
        f"{name} {statistics.median(row[i] for row in rows):.1f}" for i, (name, _, _) in enumerate(COLUMNS)
    )
    print(f"[{scenario}] median us/batch: {medians}")
    for label, numerator, denominator in RATIOS:
        ratio = statistics.median(row[numerator] / row[denominator] for row in rows)
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        best = min(row[numerator] for row in rows) / min(row[denominator] for row in rows)
        extra = statistics.median(row[numerator] - row[denominator] for row in rows)
        print(
            f"[{scenario}] median of per-round B/A, {label}: {ratio:.3f} (target <= {TARGET:.2f}) {verdict}; "
            f"min B/min A {best:.3f}; median B-A {extra:+.1f} us/batch"
        )


def profile(epochs: int, samples: int, scenario: str) -> None:
    import torch

    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-runner-"))
        stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        runner = build_runner(epochs, samples, directory, scenario)
        profiler = cProfile.Profile()
        profiler.enable()
        runner.train()
        profiler.disable()
        runner.close()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
    print(stream.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved A/B rounds (default 7)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=tuple(SCENARIOS),
        help="fp32, accum (accum_steps=4), bf16 or fp16 (with the grad scaler); repeat for several (default: all)",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=SAMPLES, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="profile the runner variant once with cProfile")
    parser.add_argument("--worker", choices=("loop", "runner"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scenarios = args.scenario or list(SCENARIOS)
    if args.worker is not None:
        worker(args.worker, args.epochs, args.samples, args.result_file, scenarios[0])
    elif args.profile:
        profile(args.epochs, args.samples, scenarios[0])
    else:
        benchmark(args.rounds, args.epochs, args.samples, scenarios)


if __name__ == "__main__":
    main()
