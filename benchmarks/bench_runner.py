"""Per-step overhead of `danling.TorchRunner` against a hand-written PyTorch training loop.

Both variants train the same tiny MLP (32 -> 64 -> 10, ReLU), with SGD (lr 0.01) and `CrossEntropyLoss`, on 8192
synthetic samples drawn from a fixed generator, in batches of 32 from
`DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)`, on the CPU with `torch.set_num_threads(1)`. The
global torch seed is the same in both, so they initialise the model and shuffle the data identically and must end
with the same loss (printed as a check).

(A) `loop`: forward, loss, `zero_grad(set_to_none=True)`, backward, step, and a sample-weighted running sum of the
    loss kept as a tensor (no `.item()` per step; one per epoch for the mean).
(B) `runner`: a `TorchRunner` subclass with the config a user would have: logging on (to `dir/run.log` and to
    stdout, which the benchmark sends to /dev/null), `progress_bar` left at its default (stderr is captured to a
    file, so it is not a TTY and no bar is drawn), `dir` in a temporary directory, `epoch_end=--epochs`,
    `dataloader.batch_size=32`, no evaluation split.

How it is timed. This machine's speed drifts by +-25% over seconds, so two processes run one after the other see
different machines. Each round therefore starts one process of each variant and runs them in lockstep: the parent
tells A to run one epoch, then B, then B, then A, ... (the order alternates per epoch), and each process is idle
while the other runs. Adjacent epochs see nearly the same machine, so the ratio of each pair of epochs cancels the
drift. Every process reports, per epoch and excluding start-up, imports and building the model and data:

- `train`: the time inside `train_epoch` for B, the epoch for A;
- `full`: for B, from the start of the epoch to the start of the next (or the end of `runner.train()`), which adds
  the per-epoch `results.json`/`latest.json`/`best.json` and `latest.pth`/`step-N.pth`/`best.pth` writes, each
  fsynced; for A the same as `train`;

each in wall-clock and in process CPU time. A round's ratio is the median over its epoch pairs of B/A. The summary
gives, for each measure, the median of the round ratios with a 95% bootstrap interval (the verdict; the target is
B/A <= 1.05), the median over all epoch pairs of all rounds, the median of the ratios of whole-round totals and
the median extra time per batch. Rounds are the independent samples: two processes of the same code still differ
by a few percent for their whole life (memory layout, hash seeds), so more rounds, not more epochs, narrow the
interval. `--control` adds a third process per round running the loop again (A'), the A/A null test: its ratio
A'/A shows how far apart identical code reads in the same run. Each worker waits after its last epoch until all
have run theirs, so no start-up or teardown ever runs beside a timed epoch; `--cpu N` runs all of them on CPU N.
`--baseline PATH` adds a process per round running the runner from another checkout of danling (PATH goes first on
its `PYTHONPATH`, e.g. a `git worktree` of an earlier commit): B0/A is printed and summarised beside B/A, so two
versions of the runner are compared on the same machine in the same run. It must train exactly like the loop.

Usage:
    python benchmarks/bench_runner.py                           # 5 rounds of 8 epochs, every scenario
    python benchmarks/bench_runner.py --rounds 9 --scenario bf16
    python benchmarks/bench_runner.py --rounds 15 --control      # with the A/A null test in every round
    python benchmarks/bench_runner.py --rounds 12 --baseline /tmp/danling-old   # against another checkout's runner
    python benchmarks/bench_runner.py --profile                 # runner variant once under cProfile, top 25
    python benchmarks/bench_runner.py --scenario fp32 --runner-variant hand-step   # see runner_variants.py
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from time import perf_counter, process_time
from typing import IO

from bench_stats import print_round, summarise, summarise_other
from runner_variants import VARIANTS, variant_base, variant_config

SAMPLES = 8192
BATCH_SIZE = 32
EPOCHS = 8
ROUNDS = 5
LR = 0.01
DATA_SEED = 1234
MODEL_SEED = 0

# Scenario -> runner config; the hand-written loop does the same by hand (see `loop_epochs`).
SCENARIOS = {
    "fp32": {},
    "accum": {"accum_steps": 4},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    # Not run by default: fp32 with the per-epoch checkpoint committed by a background thread.
    "async": {"async_save": True},
}
DEFAULT_SCENARIOS = ("fp32", "accum", "bf16", "fp16")


def make_data(samples: int):
    import torch

    generator = torch.Generator().manual_seed(DATA_SEED)
    x = torch.randn(samples, 32, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return x, y


def make_model():
    from torch import nn

    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


class Baton:
    r"""
    A worker's end of the lockstep protocol: wait for the parent's `go`, time one epoch, report it.

    Commands arrive on stdin; reports leave on a duplicate of the original stdout, which is then pointed at
    `/dev/null` so that what the runner prints does not mix with them.
    """

    def __init__(self) -> None:
        self.reports: IO[str] = os.fdopen(os.dup(1), "w")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        self.ready = False
        self.started: tuple[float, float] | None = None
        self.train: tuple[float, float] = (0.0, 0.0)

    def wait(self) -> None:
        if not self.ready:  # the first wait: start-up is over, the parent may start timing
            self.reports.write("ready\n")
            self.reports.flush()
            self.ready = True
        command = sys.stdin.readline().strip()
        if command != "go":
            raise SystemExit(f"expected 'go' from the benchmark, got {command!r}")
        self.started = (perf_counter(), process_time())

    def report(self, **extra) -> None:
        # `train` is the span the caller measured; `full` runs from `wait` to now.
        wall, cpu = perf_counter() - self.started[0], process_time() - self.started[1]
        times = {"train_wall": self.train[0], "train_cpu": self.train[1], "full_wall": wall, "full_cpu": cpu}
        self.reports.write(json.dumps({**times, **extra}) + "\n")
        self.reports.flush()
        self.started = None

    def hold(self) -> None:
        r"""
        After the last report, wait until the parent closes stdin, which it does once every worker has run its
        last epoch: tearing down (closing the runner, freeing memory, exiting) must not run beside another
        worker's timed epoch.
        """
        sys.stdin.read()


def loop_epochs(baton: Baton, epochs: int, samples: int, scenario: str) -> None:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data(samples)
    torch.manual_seed(MODEL_SEED)
    model = make_model()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype is torch.float16)
    model.train()
    steps = 0
    for _ in range(epochs):
        baton.wait()
        loss, epoch_steps = loop_epoch(model, criterion, optimizer, scaler, loader, scenario)
        steps += epoch_steps
        baton.train = (perf_counter() - baton.started[0], process_time() - baton.started[1])
        baton.report(steps=steps, batches=len(loader), loss=loss)
    baton.hold()


def loop_epoch(model, criterion, optimizer, scaler, loader, scenario: str) -> tuple[float, int]:
    r"""One epoch of the hand-written loop; returns its sample-weighted mean loss and its optimizer steps."""
    import torch

    accum_steps = SCENARIOS[scenario].get("accum_steps", 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = steps = 0
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
    return loss_sum.item() / count, steps


def build_runner(
    epochs: int, samples: int, directory: str, scenario: str = "fp32", baton: Baton | None = None, variant: str = "full"
):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    class BenchRunner(variant_base(variant)):
        def __init__(self, config, x, y) -> None:
            super().__init__(config)
            self.datasets.train = TensorDataset(x, y)
            self.model = make_model()
            self.criterion = nn.CrossEntropyLoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

        def train_epoch(self, split: str = "train"):
            if baton is None:
                return super().train_epoch(split)
            report_previous_epoch(self, baton)
            baton.wait()
            start, cpu_start = perf_counter(), process_time()
            result = super().train_epoch(split)
            baton.train = (perf_counter() - start, process_time() - cpu_start)
            return result

    x, y = make_data(samples)
    torch.manual_seed(MODEL_SEED)
    config = {"dir": directory, "epoch_end": epochs, "dataloader": {"batch_size": BATCH_SIZE}}
    return BenchRunner({**config, **SCENARIOS[scenario], **variant_config(variant)}, x, y)


def report_previous_epoch(runner, baton: Baton) -> None:
    # The full span of an epoch ends where the next one starts (or `train()` returns), after its writes.
    if baton.started is None:
        return
    loss = runner.results[max(runner.results)]["train"]["loss"] if runner.results else float("nan")
    baton.report(steps=runner.steps, batches=len(runner.dataloaders.train), loss=loss)


def runner_epochs(baton: Baton, epochs: int, samples: int, scenario: str, variant: str = "full") -> None:
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as directory:
        runner = build_runner(epochs, samples, directory, scenario, baton, variant)
        runner.train()
        report_previous_epoch(runner, baton)
        baton.hold()
        runner.close()


def worker(variant: str, epochs: int, samples: int, scenario: str, runner_variant: str = "full") -> None:
    import torch

    torch.set_num_threads(1)
    baton = Baton()
    if variant == "runner":
        runner_epochs(baton, epochs, samples, scenario, runner_variant)
    elif variant == "baseline":
        check_baseline_import()
        runner_epochs(baton, epochs, samples, scenario)
    else:  # the loop, or the control: the loop again
        loop_epochs(baton, epochs, samples, scenario)


def check_baseline_import() -> None:
    # The baseline worker must run the other checkout's danling, not this one's: stop if the path did not win.
    import danling

    expected = os.path.abspath(os.environ["DANLING_BASELINE"])
    found = os.path.abspath(danling.__file__)
    if os.path.commonpath([expected, found]) != expected:
        raise SystemExit(f"--baseline {expected}: the worker imported danling from {found} instead")


def worker_environment(variant: str, baseline: str | None) -> dict[str, str] | None:
    r"""The baseline worker's environment: `baseline` first on `PYTHONPATH`; the others inherit the parent's."""
    if variant != "baseline":
        return None
    path = os.pathsep.join(filter(None, [os.path.abspath(baseline), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "DANLING_BASELINE": baseline}


@dataclass
class Worker:
    r"""The parent's handle on one worker process."""

    variant: str
    process: subprocess.Popen
    stderr: IO[str]
    epochs: list[dict] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        variant: str,
        epochs: int,
        samples: int,
        scenario: str,
        directory: str,
        runner_variant: str,
        baseline: str | None = None,
    ) -> Worker:
        command = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--scenario", scenario]
        command += ["--runner-variant", runner_variant]
        command += ["--epochs", str(epochs), "--samples", str(samples)]
        stderr = open(os.path.join(directory, f"{variant}.stderr"), "w+", encoding="utf-8")  # noqa: SIM115
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": stderr, "text": True}
        process = subprocess.Popen(command, env=worker_environment(variant, baseline), **pipes)
        return cls(variant, process, stderr)

    def wait_ready(self) -> None:
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.fail()

    def run_epoch(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.fail()
        self.epochs.append(json.loads(line))

    def finish(self) -> None:
        self.process.stdin.close()
        if self.process.wait(timeout=120) != 0:
            self.fail()
        self.stderr.close()

    def fail(self) -> None:
        self.process.kill()
        self.process.wait()
        self.stderr.seek(0)
        raise RuntimeError(f"{self.variant} worker failed (exit code {self.process.returncode}):\n{self.stderr.read()}")


def run_round(
    index: int,
    epochs: int,
    samples: int,
    scenario: str,
    control: bool,
    runner_variant: str = "full",
    baseline: str | None = None,
) -> dict[str, list[dict]]:
    r"""
    The variants in lockstep for `epochs` epochs; the order within each epoch rotates, so that every variant runs
    first, second (and third) equally often. `control` adds a second loop process, the A/A null test; `baseline`
    a runner process from that checkout.
    """
    with tempfile.TemporaryDirectory(prefix="bench-runner-ipc-") as directory:
        variants = ("loop", "runner") + ("control",) * control + ("baseline",) * (baseline is not None)
        workers = {v: Worker.start(v, epochs, samples, scenario, directory, runner_variant, baseline) for v in variants}
        try:
            for handle in workers.values():
                handle.wait_ready()
            for epoch in range(epochs):
                shift = (index + epoch) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    workers[variant].run_epoch()
            for handle in workers.values():
                handle.finish()
        finally:
            for handle in workers.values():
                if handle.process.poll() is None:
                    handle.process.kill()
                    handle.process.wait()
    return {variant: handle.epochs for variant, handle in workers.items()}


def check_same_training(scenario: str, result: dict[str, list[dict]]) -> None:
    loop = result["loop"][-1]
    for variant in ("runner", "baseline"):
        if variant not in result:
            continue
        other = result[variant][-1]
        if loop["steps"] != other["steps"]:
            raise RuntimeError(f"[{scenario}] optimizer steps differ: loop {loop['steps']}, {variant} {other['steps']}")
        if abs(loop["loss"] - other["loss"]) > 1e-4 * max(1.0, abs(loop["loss"])):
            raise RuntimeError(f"[{scenario}] final losses differ: loop {loop['loss']}, {variant} {other['loss']}")
    control = result.get("control")
    if control is not None and (control[-1]["steps"], control[-1]["loss"]) != (loop["steps"], loop["loss"]):
        raise RuntimeError(f"[{scenario}] the control loop differs from the loop: {control[-1]} against {loop}")


def benchmark(
    rounds: int,
    epochs: int,
    samples: int,
    scenarios: list[str],
    control: bool = False,
    runner_variant: str = "full",
    baseline: str | None = None,
) -> None:
    print(f"tiny MLP, batch {BATCH_SIZE}, {samples} samples, {rounds} rounds of {epochs} epochs in lockstep, 1 thread")
    print("us/batch: A = hand-written loop, B train = inside train_epoch, B full = with the per-epoch writes;")
    print("ratios: median over the round's epoch pairs of B/A, wall clock and process CPU time")
    heads = ("A", "B train", "B full", "A cpu", "B cpu tr", "B cpu fl")
    ratio_heads = ("tr/A", "full/A", "cpu tr", "cpu full")
    columns = "".join(f"{head:>10}" for head in heads) + "".join(f"{head:>9}" for head in ratio_heads)
    print(f"{'scen.':>6}{'round':>6}{columns}  loss A / B")
    results: dict[str, list] = {scenario: [] for scenario in scenarios}
    for index in range(rounds):
        for scenario in scenarios:
            result = run_round(index, epochs, samples, scenario, control, runner_variant, baseline)
            check_same_training(scenario, result)
            results[scenario].append(result)
            print_round(scenario, index, result)
    for scenario in scenarios:
        summarise(scenario, results[scenario])
        if control:
            summarise_other(scenario, results[scenario], "control", "control A'/A")
        if baseline is not None:
            summarise_other(scenario, results[scenario], "baseline", "baseline B0/A")
            summarise_other(scenario, results[scenario], "runner", "runner against the baseline B/B0", "baseline")


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


def pin_to_one_cpu(cpu: int | None) -> None:
    r"""
    Pin this process, and so every worker it starts, to CPU `cpu` (`None`: leave it unpinned).

    Only one worker runs at a time, so they lose nothing by sharing a CPU, and none of them runs on a core slower
    or busier than the others' for a whole round. On the 2-core CI VM this did not narrow the spread of the A/A
    control, so it is not the default.
    """
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"process pairs per scenario (default {ROUNDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per process (default {EPOCHS})")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=tuple(SCENARIOS),
        help="fp32, accum (accum_steps=4), bf16, fp16 (with the grad scaler) or async (fp32 with async_save); "
        "repeat for several (default: all but async)",
    )
    parser.add_argument(
        "--control", action="store_true", help="add a second loop process to every round: the A/A null test"
    )
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="add a process per round running the runner of the danling checkout at PATH (B0), e.g. a git worktree",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        help="run every worker on this CPU (default: not pinned; pinning did not narrow the spread here)",
    )
    parser.add_argument(
        "--runner-variant",
        choices=VARIANTS,
        default="full",
        help="the runner as a user has it (full), or with layers of its per-batch work removed (runner_variants.py)",
    )
    parser.add_argument("--samples", type=int, default=SAMPLES, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="profile the runner variant once with cProfile")
    parser.add_argument("--worker", choices=("loop", "runner", "control", "baseline"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    scenarios = args.scenario or list(DEFAULT_SCENARIOS)
    if args.worker is not None:
        worker(args.worker, args.epochs, args.samples, scenarios[0], args.runner_variant)
    elif args.profile:
        profile(args.epochs, args.samples, scenarios[0])
    else:
        pin_to_one_cpu(args.cpu)
        benchmark(args.rounds, args.epochs, args.samples, scenarios, args.control, args.runner_variant, args.baseline)


if __name__ == "__main__":
    main()
