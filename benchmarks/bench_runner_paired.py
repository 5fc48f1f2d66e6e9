"""Per-batch overhead of `danling.TorchRunner` against the hand-written loop, both in one process, taking turns.

`bench_runner.py` compares two processes in lockstep. On a shared VM two processes running the same code differ by
up to 10-15% for their whole life (the A/A control; seen with address-space randomisation off and the hash seed
fixed, so physical memory placement is the likely cause), and the machine's speed drifts within an epoch, so a
few points of overhead take dozens of rounds to resolve. This script removes the first and most of the second: one
process holds the runner (`bench_runner.build_runner`: a user's config, logging on) and the hand-written loop
(`HandLoop`: the steps of `bench_runner.loop_epoch`), each with its own model from the same seed, and they take
turns of `--chunk` batches (32 by default, tens of milliseconds) on the same batches:

- the runner's `DataLoader` is wrapped; the wrapper fetches a chunk of batches, then gives them to the runner one by
  one and to the loop, one step each: the runner's turn first on one chunk, the loop's first on the next;
- the loop's time for a batch is its step plus the batch's fetch; the runner's is the fetch plus everything the
  runner did from receiving the batch to asking for the next one (its step, its epoch loop, its telemetry, its log
  step when one falls there).

The two train the same model on the same batches in the same order, so they must end with the same loss (checked).
What the runner does at the start and the end of an epoch (before its first request and after its last) is not
counted: those are per-epoch costs, which `bench_runner.py`'s `full` reports. Nor is the first epoch (`--warmup`):
the first time a kernel runs in a process it pays a one-time set-up (oneDNN primitives, autocast's first casts), and
the side that happens to run it first, the loop on the first turn, pays for both; counting it read bf16 about 2
points low (1.053 with it, 1.06 to 1.09 without, on the same machine). A round is one process; its ratio is the
runner's total time over the loop's, in wall-clock and CPU time, and the summary gives the median of the round ratios
with a 95% bootstrap interval (the target is 1.05).

Why turns of several batches: part of what the runner costs is indirect. Its Python between torch's kernels evicts
their code and data from the caches, so the torch work of the next steps runs slower. With turns of one batch
(`--chunk 1`) every step runs after the other side's, so the loop pays half of that cost too, and the ratio reads
low (bf16 1.030 with turns of 1 against 1.053 with turns of 32, on the same machine); with long turns each side
pays for its own. Longer turns are also longer stretches for the machine to drift in: rounds spread over about 2
points with turns of 1, about 2 to 5 with turns of 32.

Usage:
    python benchmarks/bench_runner_paired.py                         # 5 rounds of 5 epochs, every scenario
    python benchmarks/bench_runner_paired.py --scenario bf16 --rounds 9 --chunk 64
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
from time import perf_counter, process_time
from typing import Any

from bench_runner import DEFAULT_SCENARIOS, LR, MODEL_SEED, SAMPLES, SCENARIOS, build_runner, make_model
from bench_stats import TARGET, bootstrap_interval

EPOCHS = 5
WARMUP = 1  # epochs timed but left out: whoever runs a kernel first pays its one-time set-up
ROUNDS = 5
CHUNK = 32


class HandLoop:
    r"""
    The hand-written loop of `bench_runner.loop_epoch`, one batch per `step`: autocast, loss, the (scaled) backward,
    and at each window's end the optimizer step and zeroing; the sample-weighted loss kept as a float64 tensor.

    The body repeats `loop_epoch`'s on purpose: that one stays a plain inline loop (no call per batch), since it is
    the baseline `bench_runner.py` measures the runner against, and this one must be callable batch by batch.
    """

    def __init__(self, scenario: str) -> None:
        import torch

        torch.manual_seed(MODEL_SEED)  # the runner built its model from the same seed
        self.model = make_model()
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(scenario)
        self.scaler = torch.amp.GradScaler("cpu", enabled=self.dtype is torch.float16)
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
        if self.accum_steps > 1:
            self.scaler.scale(loss / self.accum_steps).backward()
        else:
            self.scaler.scale(loss).backward()
        self.batches += 1
        if self.batches % self.accum_steps == 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1
        self.loss_sum.add_(loss.detach(), alpha=target.shape[0])
        self.count += target.shape[0]


class PairedLoader:
    r"""
    The runner's loader, handing every batch to the hand-written loop too and timing both, `chunk` batches at a
    time: the loop's turn first on the first chunk, the runner's first on the next, and so on (over epochs too).

    `times` holds, per batch, the loop's wall and CPU seconds and the runner's; each includes the batch's fetch.
    Everything but iteration (`len`, `dataset`, `batch_size`, ...) is the wrapped loader's.
    """

    def __init__(self, loader: Any, loop: HandLoop, chunk: int = CHUNK) -> None:
        self.loader = loader
        self.loop = loop
        self.chunk = chunk
        self.loop_first = True  # who starts the next chunk
        self.times: list[tuple[float, float, float, float]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        self.loop.start_epoch()
        iterator = iter(self.loader)
        while True:
            fetched = [fetch(iterator) for _ in range(self.chunk)]
            batches = [(batch, cost) for batch, cost in fetched if batch is not None]
            if not batches:
                return
            runner: list[tuple[float, float]] = []
            if self.loop_first:
                loop = self._loop_turn(batches)
                yield from self._runner_turn(batches, runner)
            else:
                yield from self._runner_turn(batches, runner)
                loop = self._loop_turn(batches)
            self.loop_first = not self.loop_first
            for (_, cost), loop_span, runner_span in zip(batches, loop, runner):
                self.times.append((*_plus(loop_span, cost), *_plus(runner_span, cost)))

    def _loop_turn(self, batches: list) -> list[tuple[float, float]]:
        spans = []
        for batch, _ in batches:
            start = perf_counter(), process_time()
            self.loop.step(*batch)
            spans.append(_span(start, (perf_counter(), process_time())))
        return spans

    def _runner_turn(self, batches: list, spans: list) -> Iterator:
        # The runner's span for a batch: from handing it over to the runner asking for the next one.
        for batch, _ in batches:
            start = perf_counter(), process_time()
            yield batch
            spans.append(_span(start, (perf_counter(), process_time())))


def fetch(iterator: Iterator) -> tuple[Any, tuple[float, float]]:
    r"""The next batch (`None` at the end) and the wall and CPU seconds fetching it took."""
    start = perf_counter(), process_time()
    batch = next(iterator, None)
    return batch, _span(start, (perf_counter(), process_time()))


def _span(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


def _plus(span: tuple[float, float], cost: tuple[float, float]) -> tuple[float, float]:
    return span[0] + cost[0], span[1] + cost[1]


def run_process(scenario: str, epochs: int, samples: int, chunk: int = CHUNK, warmup: int = WARMUP) -> dict:
    r"""
    One round: the runner trains `epochs` epochs with the loop paired in; returns the totals over the epochs after
    the first `warmup` and the losses.
    """
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-runner-paired-") as directory:
        runner = build_runner(epochs, samples, directory, scenario)
        loop = HandLoop(scenario)
        if "train" not in runner.dataloaders:
            runner.build_dataloaders()
        paired = PairedLoader(runner.dataloaders["train"], loop, chunk)
        runner.dataloaders["train"] = paired
        runner.train()
        runner_loss = runner.results[max(runner.results)]["train"]["loss"]
        runner_steps = runner.steps
        runner.close()
    times = paired.times[warmup * len(paired) :]
    if not times:
        raise ValueError(f"no batches left to time: {epochs} epochs, {warmup} of them warm-up")
    totals = [sum(column) for column in zip(*times)]
    diffs = [1e6 * (runner - loop) for loop, _, runner, _ in times]
    return {
        "wall": totals[2] / totals[0],
        "cpu": totals[3] / totals[1],
        "loop_us": 1e6 * totals[0] / len(times),
        "runner_us": 1e6 * totals[2] / len(times),
        "median_extra_us": statistics.median(diffs),
        "loss": (loop.loss_sum.item() / loop.count, runner_loss),
        "steps": (loop.steps, runner_steps),
    }


def run_round(scenario: str, epochs: int, samples: int, chunk: int, warmup: int = WARMUP) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--scenario", scenario]
    command += ["--epochs", str(epochs), "--samples", str(samples), "--chunk", str(chunk), "--warmup", str(warmup)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"[{scenario}] worker failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    (loop_loss, runner_loss), (loop_steps, runner_steps) = result["loss"], result["steps"]
    if loop_steps != runner_steps or abs(loop_loss - runner_loss) > 1e-4 * max(1.0, abs(loop_loss)):
        raise RuntimeError(f"[{scenario}] the runner trained differently from the loop: {result}")
    return result


def summarise(scenario: str, rounds: list[dict]) -> None:
    for measure in ("wall", "cpu"):
        values = [result[measure] for result in rounds]
        median = statistics.median(values)
        low, high = bootstrap_interval(values)
        verdict = "PASS" if median <= TARGET else "FAIL"
        print(
            f"[{scenario}] {measure:<4} runner/loop per batch: median of {len(values)} rounds {median:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}, rounds {min(values):.3f}-{max(values):.3f}; target <= {TARGET}) {verdict}"
        )
    extra = statistics.median(result["median_extra_us"] for result in rounds)
    print(f"[{scenario}] median extra time of the runner per batch: {extra:+.1f} us")


def benchmark(rounds: int, epochs: int, samples: int, scenarios: list[str], chunk: int, warmup: int = WARMUP) -> None:
    print(
        f"tiny MLP, batch 32, {samples} samples, {rounds} processes of {epochs} epochs (the first {warmup} not "
        f"counted), turns of {chunk} batches"
    )
    heads = f"{'loop us':>10}{'runner us':>11}{'wall':>8}{'cpu':>8}{'extra us':>10}"
    print(f"{'scen.':>6}{'round':>6}{heads}  loss loop / runner")
    results: dict[str, list[dict]] = {scenario: [] for scenario in scenarios}
    for index in range(rounds):
        for scenario in scenarios:
            result = run_round(scenario, epochs, samples, chunk, warmup)
            results[scenario].append(result)
            cells = f"{result['loop_us']:>10.1f}{result['runner_us']:>11.1f}{result['wall']:>8.3f}{result['cpu']:>8.3f}"
            losses = f"{result['loss'][0]:.6f} / {result['loss'][1]:.6f}"
            print(f"{scenario:>6}{index:>6}{cells}{result['median_extra_us']:>10.1f}  {losses}", flush=True)
    for scenario in scenarios:
        summarise(scenario, results[scenario])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"processes per scenario (default {ROUNDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per process (default {EPOCHS})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"samples per epoch (default {SAMPLES})")
    parser.add_argument(
        "--scenario", action="append", choices=tuple(SCENARIOS), help="repeat for several (default: all but async)"
    )
    parser.add_argument("--chunk", type=int, default=CHUNK, help=f"batches per turn (default {CHUNK}; 1: alternate)")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP, help=f"first epochs left out of the totals (default {WARMUP})"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scenarios = args.scenario or list(DEFAULT_SCENARIOS)
    if args.chunk < 1:
        parser.error(f"--chunk must be a positive number of batches, got {args.chunk}")
    if not 0 <= args.warmup < args.epochs:
        parser.error(f"--warmup must leave at least one of the {args.epochs} epochs to time, got {args.warmup}")
    if args.worker:
        report = os.fdopen(os.dup(1), "w")  # the runner's log lines go to /dev/null, the result here
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        result = run_process(scenarios[0], args.epochs, args.samples, args.chunk, args.warmup)
        report.write(json.dumps(result) + "\n")
        report.close()
    else:
        benchmark(args.rounds, args.epochs, args.samples, scenarios, args.chunk, args.warmup)


if __name__ == "__main__":
    main()
