"""Where the runner's extra time goes, measured in place by a sampling profiler (py-spy), against the hand-written loop.

`bench_runner.py` times the two side by side; on a shared VM its round ratios swing by +-10%, so a few points of
overhead take a dozen rounds to resolve. This script runs the same workload (tiny MLP, SGD, batch 32, 8192 samples,
1 thread) under `py-spy record` and sorts each wall-clock sample of a training epoch (`TorchRunner.train_epoch`, or
the loop's `loop_epoch`) by the work it was doing:

- `data`: inside `torch.utils.data` (the `DataLoader`);
- `forward`, `loss`: inside the model's and the criterion's `forward`;
- `autocast`: building, entering and leaving `torch.autocast`;
- `backward`: inside `Tensor.backward`;
- `optimizer`: inside `torch.optim` or the `GradScaler` (`step`, `zero_grad`, `scale`, `update`);
- `rest`: everything else, the Python of the loop or of the runner (and what it calls outside those).

Both variants do the same torch work, so the first six categories take the same time in both. They are the
yardstick: `(all / shared)` of the runner over `(all / shared)` of the loop is the runner's time per batch over the
loop's, free of the machine's drift between processes and of the profiler's sampling rate. The categories are
printed as shares of the loop's batch so that the yardstick can be checked (they should agree within a point).

py-spy samples the interpreter's stack from outside the process; it does not slow the profiled code down. It needs
`pip install py-spy` (the `benchmark` extra) and permission to trace a child process (root, or
`kernel.yama.ptrace_scope=0`).

Usage:
    python benchmarks/bench_runner_sampling.py                        # bf16, 3 rounds of 60 epochs
    python benchmarks/bench_runner_sampling.py --scenario fp32 --rounds 5 --top 20
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator

from bench_runner import SCENARIOS, build_runner, loop_epochs

RATE = 200  # samples per second: py-spy pauses the process for each one, so fewer perturb it less
SHARED = ("data", "forward", "loss", "autocast", "backward", "optimizer")
CATEGORIES = {  # checked in this order against the frames of a sample below the epoch's own frame
    "data": ("torch/utils/data/",),
    "autocast": ("torch/amp/autocast_mode.py",),
    "loss": ("CrossEntropyLoss.forward",),
    "forward": ("Sequential.forward",),
    "backward": ("Tensor.backward", "torch/autograd/"),
    "optimizer": ("torch/optim/", "torch/amp/grad_scaler.py"),
}
EPOCH_FRAMES = ("TorchRunner.train_epoch (danling/runner/torch_runner.py", "loop_epoch (bench_runner.py")


class FreeBaton:
    r"""`bench_runner.Baton` without the lockstep: every epoch starts at once and nothing is reported."""

    def __init__(self) -> None:
        self.started = (0.0, 0.0)
        self.train = (0.0, 0.0)

    def wait(self) -> None:
        pass

    def report(self, **extra) -> None:
        pass

    def hold(self) -> None:
        pass


def worker(variant: str, scenario: str, epochs: int) -> None:
    import torch

    torch.set_num_threads(1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the runner's log lines
    if variant == "loop":
        loop_epochs(FreeBaton(), epochs, 8192, scenario)
        return
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as directory:
        runner = build_runner(epochs, 8192, directory, scenario)
        runner.train()
        runner.close()


def samples(path: str) -> Iterator[tuple[list[str], int]]:
    r"""The stacks of py-spy's raw output (`frame;frame;... count`), outermost frame first."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            yield stack.split(";"), int(count)


def categorize(frames: list[str]) -> tuple[str, str] | None:
    r"""`(category, leaf function)` of a sample inside a training epoch, `None` outside one."""
    for index, frame in enumerate(frames):
        if frame.startswith(EPOCH_FRAMES):
            below = ";".join(frames[index + 1 :])
            leaf = frames[-1].split(" (")[0] + " [" + frames[-1].split("(")[-1].rsplit(":", 1)[0] + "]"
            for category, keys in CATEGORIES.items():
                if any(key in below for key in keys):
                    return category, leaf
            return "rest", leaf
    return None


def profile(variant: str, scenario: str, epochs: int, directory: str) -> tuple[Counter, Counter]:
    r"""Run one worker under py-spy; return its samples per category and its `rest` samples per leaf function."""
    out = os.path.join(directory, f"{variant}.txt")
    command = ["py-spy", "record", "--rate", str(RATE), "--format", "raw", "--output", out, "--"]
    command += [sys.executable, os.path.abspath(__file__), "--worker", variant, "--scenario", scenario]
    subprocess.run([*command, "--epochs", str(epochs)], check=True, capture_output=True)
    categories: collections.Counter = collections.Counter()
    rest: collections.Counter = collections.Counter()
    for frames, count in samples(out):
        found = categorize(frames)
        if found is None:
            continue
        categories[found[0]] += count
        if found[0] == "rest":
            rest[found[1]] += count
    return categories, rest


def per_batch_ratio(runner: collections.Counter, loop: collections.Counter) -> float:
    r"""Runner time per batch over the loop's, with the shared torch work as the yardstick."""
    shared_runner = sum(runner[c] for c in SHARED)
    shared_loop = sum(loop[c] for c in SHARED)
    return (sum(runner.values()) / shared_runner) / (sum(loop.values()) / shared_loop)


def report(scenario: str, ratios: list[float], runner: collections.Counter, loop: collections.Counter, rest, top):
    scale = sum(runner[c] for c in SHARED) / sum(loop[c] for c in SHARED)
    total = sum(loop.values())
    print(f"[{scenario}] share of the loop's batch, all rounds: category, loop, runner")
    for category in (*SHARED, "rest"):
        print(f"  {category:>10} {loop[category] / total:8.2%} {runner[category] / scale / total:8.2%}")
    print(f"[{scenario}] the runner's largest `rest` functions (share of the loop's batch):")
    for name, count in rest.most_common(top):
        print(f"  {count / scale / total:7.2%}  {name}")
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    median = statistics.median(ratios)
    print(f"[{scenario}] runner / loop per batch, in place: median of {len(ratios)} rounds {median:.3f}")
    print(f"  (rounds {', '.join(f'{r:.3f}' for r in ratios)}; spread {spread}; target <= 1.05)")


def benchmark(scenario: str, rounds: int, epochs: int, top: int) -> None:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy (or the `benchmark` extra)")
    ratios = []
    totals = {"loop": collections.Counter(), "runner": collections.Counter()}
    rest: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="bench-sampling-ipc-") as directory:
        for index in range(rounds):
            order = ("loop", "runner") if index % 2 == 0 else ("runner", "loop")
            found = {variant: profile(variant, scenario, epochs, directory) for variant in order}
            ratios.append(per_batch_ratio(found["runner"][0], found["loop"][0]))
            for variant in order:
                totals[variant].update(found[variant][0])
            rest.update(found["runner"][1])
            print(f"[{scenario}] round {index}: runner / loop per batch {ratios[-1]:.3f}", flush=True)
    report(scenario, ratios, totals["runner"], totals["loop"], rest, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="bf16", choices=tuple(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3, help="loop/runner process pairs (default 3)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs per process (default 60)")
    parser.add_argument("--top", type=int, default=15, help="functions of the runner's `rest` to list (default 15)")
    parser.add_argument("--worker", choices=("loop", "runner"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.scenario, args.epochs)
    else:
        benchmark(args.scenario, args.rounds, args.epochs, args.top)


if __name__ == "__main__":
    main()
