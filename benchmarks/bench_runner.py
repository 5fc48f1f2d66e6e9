"""Per-batch overhead of `danling.TorchRunner` against a hand-written PyTorch loop, on a tiny MLP on the CPU.

Both variants train an MLP (32 -> 64 -> 10) with SGD on 8192 synthetic samples in batches of 32, one thread, from the
same seeds, and must end with the same loss and optimizer steps (checked). The runner has a user's config (logging
on); its `save_checkpoint` is stubbed out unless `--checkpoints`, so the loop is measured, not the saves.
`benchmarks/README.md` describes the workload, the scenarios and the protocol.

Two measures, each reported under its name:

- `lockstep` (default): each round starts one process per variant; after start-up they run in lockstep, one epoch
  at a time, the order rotating every epoch, each idle while another runs, so adjacent epochs see the same machine.
  `train` is the time inside `train_epoch`; `epoch` adds the runner's per-epoch work after it (results files). A
  round's ratio is the median over its epoch pairs. `--control` adds a second loop process (A/A null test);
  `--baseline PATH` a runner process importing danling from another checkout (PATH first on its `PYTHONPATH`).
- `paired` (`--paired`): one process per round holds the runner and the loop; the runner's loader hands each chunk
  of `--chunk` batches to both, taking turns (who goes first alternates), and both are timed per batch on the same
  batches. The first epoch is left out (whoever runs a kernel first pays its one-time set-up). Free of the factor
  by which two processes of the same code differ, but blind to per-epoch work. With `--baseline`, every round also
  runs a paired process under the other checkout.

The verdict is the median over rounds of the per-round ratios, with a 95% bootstrap interval; the targets are
runner/loop <= 1.05 in fp32 and <= 1.08 with accumulation, bf16 and fp16.

Usage:
    python benchmarks/bench_runner.py                    # 9 rounds of 3 epochs, every scenario, lockstep
    python benchmarks/bench_runner.py --paired           # runner and loop in one process, turns of 32 batches
    python benchmarks/bench_runner.py --scenario bf16 --control --rounds 15
    python benchmarks/bench_runner.py --baseline /tmp/danling-old   # git worktree add /tmp/danling-old <commit>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter, process_time
from typing import IO, Any

from _stats import LOCKSTEP_HEAD, PAIRED_HEAD, lockstep_row, lockstep_summary, paired_row, paired_summary

SAMPLES = 8192
BATCH_SIZE = 32
EPOCHS = 3
ROUNDS = 9
CHUNK = 32
LR = 0.01
DATA_SEED = 1234
MODEL_SEED = 0
SCENARIOS: dict[str, dict[str, Any]] = {"fp32": {}, "accum": {"accum_steps": 4}}  # the runner's config per scenario
SCENARIOS.update({precision: {"precision": precision} for precision in ("bf16", "fp16")})
TARGETS = {"fp32": 1.05, "accum": 1.08, "bf16": 1.08, "fp16": 1.08}
Span = tuple[float, float]  # wall-clock and process CPU seconds


def now() -> Span:
    return perf_counter(), process_time()


def since(start: Span) -> Span:
    return perf_counter() - start[0], process_time() - start[1]


def make_data(samples: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(DATA_SEED)
    return torch.randn(samples, 32, generator=generator), torch.randint(0, 10, (samples,), generator=generator)


def make_model() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def report_channel() -> IO[str]:
    r"""A duplicate of stdout for a worker's reports; stdout itself then goes to /dev/null (the runner's log lines)."""
    channel = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return channel


class Baton:
    r"""A lockstep worker's side: wait for the parent's `go`, run one epoch, report its times."""

    def __init__(self) -> None:
        self.reports = report_channel()
        self.ready = False
        self.started: Span | None = None
        self.train: Span = (0.0, 0.0)

    def wait(self) -> None:
        if not self.ready:  # start-up is over: the parent may start timing
            self.reports.write("ready\n")
            self.reports.flush()
            self.ready = True
        command = sys.stdin.readline().strip()
        if command != "go":
            raise SystemExit(f"expected 'go' from the benchmark, got {command!r}")
        self.started = now()

    def report(self, **extra: Any) -> None:
        # `train` is the span the caller measured; `epoch` runs from `wait` to now.
        wall, cpu = since(self.started)
        times = {"train_wall": self.train[0], "train_cpu": self.train[1], "epoch_wall": wall, "epoch_cpu": cpu}
        self.reports.write(json.dumps({**times, **extra}) + "\n")
        self.reports.flush()
        self.started = None

    def hold(self) -> None:
        r"""Wait until every worker has run its last epoch (the parent closes stdin): no teardown beside a timed one."""
        sys.stdin.read()


def loop_epochs(baton: Baton, epochs: int, samples: int, scenario: str) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data(samples)
    loop = HandLoop(scenario)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    for _ in range(epochs):
        baton.wait()
        loop.start_epoch()
        for input, target in loader:
            loop.step(input, target)
        loss = loop.mean_loss()
        baton.train = since(baton.started)
        baton.report(steps=loop.steps, batches=len(loader), loss=loss)
    baton.hold()


class HandLoop:
    r"""
    The hand-written loop, one batch per `step`: forward and loss under the scenario's autocast, the (scaled,
    divided) backward, and at each window's end the optimizer step and `zero_grad(set_to_none=True)`; the
    sample-weighted loss kept in a float64 tensor. A method call per batch costs about 0.1 us of a 1 ms step.
    """

    def __init__(self, scenario: str) -> None:
        import torch

        torch.manual_seed(MODEL_SEED)  # the runner builds its model from the same seed
        self.model, self.criterion = make_model(), torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
        self.scaler = torch.amp.GradScaler("cpu", enabled=scenario == "fp16")
        self.accum_steps = SCENARIOS[scenario].get("accum_steps", 1)
        self.autocast = torch.autocast
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.count = self.batches = self.steps = 0

    def start_epoch(self) -> None:
        self.loss_sum.zero_()
        self.count = self.batches = 0

    def step(self, input: Any, target: Any) -> None:
        with self.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.criterion(self.model(input), target)
        self.scaler.scale(loss / self.accum_steps if self.accum_steps > 1 else loss).backward()
        self.batches += 1
        if self.batches % self.accum_steps == 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1
        self.loss_sum.add_(loss.detach(), alpha=target.shape[0])
        self.count += target.shape[0]

    def mean_loss(self) -> float:
        return self.loss_sum.item() / self.count


class PairedLoader:
    r"""
    The runner's loader, handing each chunk of `chunk` batches to the hand-written loop too: the loop's turn first
    on one chunk, the runner's first on the next. `times` holds, per batch, the loop's wall and CPU seconds and the
    runner's (from handing the batch over to the runner asking for the next), each with the batch's fetch.
    """

    def __init__(self, loader: Any, loop: HandLoop, chunk: int = CHUNK) -> None:
        self.loader, self.loop, self.chunk = loader, loop, chunk
        self.loop_first = True
        self.times: list[tuple[float, float, float, float]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        self.loop.start_epoch()
        iterator = iter(self.loader)
        while True:
            batches = [
                (batch, cost) for batch, cost in (fetch(iterator) for _ in range(self.chunk)) if batch is not None
            ]
            if not batches:
                return
            runner: list[Span] = []
            if self.loop_first:
                loop = self._loop_turn(batches)
                yield from self._runner_turn(batches, runner)
            else:
                yield from self._runner_turn(batches, runner)
                loop = self._loop_turn(batches)
            self.loop_first = not self.loop_first
            for (_, cost), a, b in zip(batches, loop, runner):
                self.times.append((a[0] + cost[0], a[1] + cost[1], b[0] + cost[0], b[1] + cost[1]))

    def _loop_turn(self, batches: list) -> list[Span]:
        spans = []
        for batch, _ in batches:
            start = now()
            self.loop.step(*batch)
            spans.append(since(start))
        return spans

    def _runner_turn(self, batches: list, spans: list[Span]) -> Iterator:
        for batch, _ in batches:
            start = now()
            yield batch
            spans.append(since(start))


def fetch(iterator: Iterator) -> tuple[Any, Span]:
    r"""The next batch (`None` at the end) and what fetching it took."""
    start = now()
    batch = next(iterator, None)
    return batch, since(start)


def build_runner(
    epochs: int, samples: int, directory: str, scenario: str, baton: Baton | None = None, checkpoints: bool = False
) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    import danling as dl

    class BenchRunner(dl.TorchRunner):
        def __init__(self, config: dict, x: Any, y: Any) -> None:
            super().__init__(config)
            self.datasets.train = TensorDataset(x, y)
            self.model, self.criterion = make_model(), torch.nn.CrossEntropyLoss()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

        def train_epoch(self, split: str = "train") -> Any:
            if baton is None:
                return super().train_epoch(split)
            report_previous_epoch(self, baton)
            baton.wait()
            start = now()
            result = super().train_epoch(split)
            baton.train = since(start)
            return result

        def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            if checkpoints:  # stubbed out by default: the protocol measures the loop, not the saves
                super().save_checkpoint(*args, **kwargs)

    x, y = make_data(samples)
    torch.manual_seed(MODEL_SEED)
    config = {"dir": directory, "epoch_end": epochs, "dataloader": {"batch_size": BATCH_SIZE}}
    return BenchRunner({**config, **SCENARIOS[scenario]}, x, y)


def final_loss(runner: Any) -> float:
    return runner.results[max(runner.results)]["train"]["loss"] if runner.results else float("nan")


def report_previous_epoch(runner: Any, baton: Baton) -> None:
    # An epoch's `epoch` span ends where the next one starts (or `train()` returns), after its per-epoch work.
    if baton.started is not None:
        baton.report(steps=runner.steps, batches=len(runner.dataloaders.train), loss=final_loss(runner))


def runner_epochs(baton: Baton, epochs: int, samples: int, scenario: str, checkpoints: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as directory:
        runner = build_runner(epochs, samples, directory, scenario, baton, checkpoints)
        runner.train()
        report_previous_epoch(runner, baton)
        baton.hold()
        runner.close()


def paired_epochs(epochs: int, samples: int, scenario: str, chunk: int, checkpoints: bool) -> dict:
    r"""One paired round: the runner trains with the loop paired in; totals over every epoch but the first."""
    with tempfile.TemporaryDirectory(prefix="bench-runner-paired-") as directory:
        runner = build_runner(epochs, samples, directory, scenario, checkpoints=checkpoints)
        loop = HandLoop(scenario)
        if "train" not in runner.dataloaders:
            runner.build_dataloaders()
        paired = runner.dataloaders["train"] = PairedLoader(runner.dataloaders["train"], loop, chunk)
        runner.train()
        losses, steps = (loop.mean_loss(), final_loss(runner)), (loop.steps, runner.steps)
        runner.close()
    times = paired.times[len(paired) :]  # the first epoch is warm-up
    loop_wall, loop_cpu, runner_wall, runner_cpu = (sum(column) for column in zip(*times))
    result = {"wall": runner_wall / loop_wall, "cpu": runner_cpu / loop_cpu, "loss": losses, "steps": steps}
    result.update(loop_us=1e6 * loop_wall / len(times), runner_us=1e6 * runner_wall / len(times))
    return {**result, "extra_us": statistics.median(1e6 * (b - a) for a, _, b, _ in times)}


def check_baseline_import() -> None:
    # A baseline worker must run the other checkout's danling, not this one's: stop if the path did not win.
    import danling

    expected, found = os.environ["DANLING_BASELINE"], os.path.abspath(danling.__file__)
    if os.path.commonpath([expected, found]) != expected:
        raise SystemExit(f"--baseline {expected}: the worker imported danling from {found} instead")


@dataclass(frozen=True)
class Plan:
    r"""What the parent runs: the rounds, the workers' arguments and the optional extra variants."""

    rounds: int = ROUNDS
    epochs: int = EPOCHS
    samples: int = SAMPLES
    chunk: int = CHUNK
    checkpoints: bool = False
    control: bool = False
    baseline: str | None = None

    def command(self, role: str, scenario: str) -> list[str]:
        command = [sys.executable, os.path.abspath(__file__), "--worker", role, "--scenario", scenario]
        command += ["--epochs", str(self.epochs), "--samples", str(self.samples), "--chunk", str(self.chunk)]
        return command + ["--checkpoints"] * self.checkpoints

    def environment(self, baseline: bool, directory: str) -> dict[str, str]:
        # The workers' temporary files go in `directory`, which the parent removes even after killing one of them.
        environment = {key: value for key, value in os.environ.items() if key != "DANLING_BASELINE"}
        environment["TMPDIR"] = directory
        if baseline:
            path = os.path.abspath(self.baseline)
            python_path = os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))
            environment.update(PYTHONPATH=python_path, DANLING_BASELINE=path)
        return environment


@dataclass
class Worker:
    r"""The parent's handle on one lockstep worker process."""

    variant: str
    process: subprocess.Popen
    stderr: IO[str]
    epochs: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, plan: Plan, variant: str, scenario: str, directory: str) -> Worker:
        stderr = open(os.path.join(directory, f"{variant}.stderr"), "w+", encoding="utf-8")  # noqa: SIM115
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": stderr, "text": True}
        command, environment = plan.command(variant, scenario), plan.environment(variant == "baseline", directory)
        process = subprocess.Popen(command, env=environment, **pipes)
        return cls(variant, process, stderr)

    def wait_ready(self) -> None:
        if self.process.stdout.readline().strip() != "ready":
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


def lockstep_round(plan: Plan, index: int, scenario: str) -> dict[str, list[dict]]:
    r"""One process per variant, in lockstep; the order rotates every epoch so each variant runs at every place."""
    variants = ("loop", "runner") + ("control",) * plan.control + ("baseline",) * (plan.baseline is not None)
    with tempfile.TemporaryDirectory(prefix="bench-runner-ipc-") as directory:
        workers = {variant: Worker.start(plan, variant, scenario, directory) for variant in variants}
        try:
            for handle in workers.values():
                handle.wait_ready()
            for epoch in range(plan.epochs):
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
    result = {variant: handle.epochs for variant, handle in workers.items()}
    for variant, epochs in result.items():
        check_same_training(scenario, variant, *((e[-1]["loss"], e[-1]["steps"]) for e in (result["loop"], epochs)))
    return result


def paired_round(plan: Plan, index: int, scenario: str) -> dict[str, dict]:
    r"""One paired process for this checkout (and one for the baseline, the order alternating between rounds)."""
    variants = ("runner",) + ("baseline",) * (plan.baseline is not None)
    result = {}
    for variant in variants[index % len(variants) :] + variants[: index % len(variants)]:
        with tempfile.TemporaryDirectory(prefix="bench-runner-ipc-") as directory:
            command, environment = plan.command("paired", scenario), plan.environment(variant == "baseline", directory)
            completed = subprocess.run(
                command, env=environment, capture_output=True, text=True, timeout=600, check=False
            )
        if completed.returncode != 0:
            raise RuntimeError(f"[{scenario}] {variant} worker failed:\n{completed.stderr[-3000:]}")
        report = result[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
        check_same_training(scenario, variant, *zip(report["loss"], report["steps"]))
    return result


def check_same_training(scenario: str, variant: str, loop: tuple[float, int], other: tuple[float, int]) -> None:
    r"""Both must end with the same loss and optimizer steps: `(loss, steps)` of the loop and of `variant`."""
    if loop[1] != other[1] or abs(loop[0] - other[0]) > 1e-4 * max(1.0, abs(loop[0])):
        raise RuntimeError(f"[{scenario}] (loss, steps) differ: loop {loop}, {variant} {other}")


def benchmark(plan: Plan, scenarios: list[str], paired: bool) -> None:
    shape = f"{plan.samples // BATCH_SIZE} batches of {BATCH_SIZE}, 1 thread"
    if paired:
        print(f"paired: {plan.rounds} processes of {plan.epochs} epochs (the first not counted), {shape}")
        print(f"turns of {plan.chunk} batches; us per batch, runner/loop wall and CPU, median extra us per batch")
    else:
        print(f"lockstep: {plan.rounds} rounds of {plan.epochs} epochs, {shape}")
        print("us per batch (A loop, B runner), then B/A: the median over the round's epoch pairs")
    print(PAIRED_HEAD if paired else LOCKSTEP_HEAD)
    results: dict[str, list] = {scenario: [] for scenario in scenarios}
    for index in range(plan.rounds):
        for scenario in scenarios:  # scenarios interleave within each round
            if paired:
                result = paired_round(plan, index, scenario)
                for variant, report in result.items():
                    print(paired_row(scenario, index, variant, report), flush=True)
            else:
                result = lockstep_round(plan, index, scenario)
                print(lockstep_row(scenario, index, result), flush=True)
            results[scenario].append(result)
    for scenario in scenarios:
        summarise = paired_summary if paired else lockstep_summary
        summarise(scenario, results[scenario], TARGETS[scenario])


def worker(role: str, plan: Plan, scenario: str) -> None:
    import torch

    torch.set_num_threads(1)
    if "DANLING_BASELINE" in os.environ:
        check_baseline_import()
    if role == "paired":
        with report_channel() as channel:
            print(
                json.dumps(paired_epochs(plan.epochs, plan.samples, scenario, plan.chunk, plan.checkpoints)),
                file=channel,
            )
    elif role in ("runner", "baseline"):
        runner_epochs(Baton(), plan.epochs, plan.samples, scenario, plan.checkpoints)
    else:  # the loop, or the control: the loop again
        loop_epochs(Baton(), plan.epochs, plan.samples, scenario)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per scenario (default {ROUNDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per process (default {EPOCHS})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"samples per epoch (default {SAMPLES})")
    parser.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), help="repeatable (default: all)")
    parser.add_argument("--paired", action="store_true", help="the in-process paired measure instead of lockstep")
    parser.add_argument("--chunk", type=int, default=CHUNK, help=f"batches per paired turn (default {CHUNK})")
    parser.add_argument("--control", action="store_true", help="lockstep: a second loop process (A/A null test)")
    parser.add_argument("--baseline", metavar="PATH", help="also run the runner of the danling checkout at PATH")
    parser.add_argument("--checkpoints", action="store_true", help="keep the runner's per-epoch checkpoint saves")
    parser.add_argument("--worker", choices=("loop", "control", "runner", "baseline", "paired"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.chunk < 1 or args.samples < BATCH_SIZE:
        parser.error("--rounds and --chunk must be positive and --samples at least one batch")
    if args.epochs < (2 if args.paired or args.worker == "paired" else 1):
        parser.error(f"--epochs must be at least 1, and 2 with --paired (its first is warm-up), got {args.epochs}")
    if args.paired and args.control:
        parser.error("--control is a second loop process: it belongs to the lockstep measure")
    scenarios = args.scenario or list(SCENARIOS)
    plan = Plan(args.rounds, args.epochs, args.samples, args.chunk, args.checkpoints, args.control, args.baseline)
    if args.worker is not None:
        worker(args.worker, plan, scenarios[0])
    else:
        benchmark(plan, scenarios, args.paired)


if __name__ == "__main__":
    main()
