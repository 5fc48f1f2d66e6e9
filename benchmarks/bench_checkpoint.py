"""Time and peak memory of `TorchRunner.save_checkpoint()` against a plain `torch.save` of the same state.

The model is a stack of `--layers` `nn.Linear(4096, 4096)` (3 layers: 50.3M parameters, 201 MB in float32) trained
one step with Adam, so the optimizer holds `exp_avg` and `exp_avg_sq` too (about 604 MB of checkpoint in all).
Each round times, in this order:

(A) `plain`: `torch.save(runner.state_dict(), checkpoint_dir / "plain.pth")`;
(B) `danling`: `runner.save_checkpoint()` (atomic temporary file + fsync + rename to `latest.pth`, and a hard link
    to `best.pth`).

Both write into the runner's checkpoint directory on tmpfs (`/dev/shm`; a temporary directory on disk, with a
warning, when there is none), so the disk's speed does not hide the serialisation cost. The summary is the median
of the per-round ratios B/A; the target is B/A <= 1.3.

Peak RSS: before each save, the kernel's peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`), and the
`VmHWM` read after the save minus the `VmRSS` before it is the save's peak increase. A thread also samples `VmRSS`
every 5 ms as a cross-check (it needs the GIL, so it may miss a peak reached inside a C++ call that holds it). A save
that serialised the whole checkpoint in memory before writing it would show an increase of the checkpoint's size.

Usage:
    python benchmarks/bench_checkpoint.py                # 5 rounds, 3 layers
    python benchmarks/bench_checkpoint.py --rounds 7 --layers 3
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import threading
import warnings
from time import perf_counter

import torch
from memory import reset_peak, status_kib
from torch import nn

import danling as dl

TARGET = 1.3
WIDTH = 4096
MIB = 2**20


class RssSampler:
    r"""Samples `VmRSS` every `interval` seconds in a thread; `peak` is the largest sample in KiB."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib("VmRSS") or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = status_kib("VmRSS") or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kib("VmRSS") or 0)


def measure(save) -> dict:
    r"""Run `save()` and return its time and peak RSS increases (MiB)."""
    gc.collect()
    reset = reset_peak()
    before = status_kib("VmRSS") or 0
    with RssSampler() as sampler:
        start = perf_counter()
        save()
        seconds = perf_counter() - start
    hwm = status_kib("VmHWM") if reset else None
    return {
        "seconds": seconds,
        "hwm_mib": None if hwm is None else (hwm - before) / 1024,
        "sampled_mib": (sampler.peak - before) / 1024,
    }


class CheckpointRunner(dl.TorchRunner):
    def __init__(self, config, layers: int) -> None:
        super().__init__(config)
        self.model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)


def build_runner(directory: str, layers: int) -> CheckpointRunner:
    torch.manual_seed(0)
    runner = CheckpointRunner({"dir": directory, "log": False}, layers)
    runner.model(torch.randn(8, WIDTH)).square().mean().backward()
    runner.optimizer.step()
    runner.optimizer.zero_grad(set_to_none=True)
    return runner


def tmpfs_root() -> str:
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    warnings.warn("/dev/shm is not available: writing to a temporary directory on disk instead", stacklevel=2)
    return tempfile.gettempdir()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def benchmark(rounds: int, layers: int) -> None:
    directory = tempfile.mkdtemp(prefix="bench-checkpoint-", dir=tmpfs_root())
    try:
        runner = build_runner(directory, layers)
        parameters = sum(p.numel() for p in runner.model.parameters())
        plain_path = os.path.join(runner.checkpoint_dir, "plain.pth")
        latest_path = os.path.join(runner.checkpoint_dir, "latest.pth")
        print(f"{layers} x Linear({WIDTH}, {WIDTH}): {parameters / 1e6:.1f}M parameters, Adam state, in {directory}")
        print("seconds per save, and peak RSS increase during the save in MiB (VmHWM / 5 ms samples)")
        print(f"{'round':>5} {'A plain':>8} {'B danling':>10} {'B/A':>6}   {'A RSS':>13}   {'B RSS':>13}")
        rows = []
        for index in range(rounds):
            plain = measure(lambda: torch.save(runner.state_dict(), plain_path))
            ours = measure(runner.save_checkpoint)
            ratio = ours["seconds"] / plain["seconds"]
            rows.append((plain, ours, ratio))
            print(
                f"{index:>5} {plain['seconds']:>8.3f} {ours['seconds']:>10.3f} {ratio:>6.3f}"
                f"   {_fmt(plain['hwm_mib']):>6} / {_fmt(plain['sampled_mib']):>4}"
                f"   {_fmt(ours['hwm_mib']):>6} / {_fmt(ours['sampled_mib']):>4}",
                flush=True,
            )
        size = os.path.getsize(latest_path) / MIB
        print(f"checkpoint size: {size:.0f} MiB (plain.pth {os.path.getsize(plain_path) / MIB:.0f} MiB)")
        median_a = statistics.median(row[0]["seconds"] for row in rows)
        median_b = statistics.median(row[1]["seconds"] for row in rows)
        print(f"median save time: A plain {median_a:.3f} s, B danling {median_b:.3f} s")
        for label, column in (("A plain", 0), ("B danling", 1)):
            hwm = [row[column]["hwm_mib"] for row in rows]
            sampled = max(row[column]["sampled_mib"] for row in rows)
            hwm_text = "n/a" if None in hwm else f"{max(hwm):.1f} MiB"
            print(f"max peak RSS increase {label}: VmHWM {hwm_text}, sampled {sampled:.1f} MiB")
        ratio = statistics.median(row[2] for row in rows)
        print(f"median B/A: {ratio:.3f} (target <= {TARGET:.1f}) {'PASS' if ratio <= TARGET else 'FAIL'}")
        runner.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved A/B rounds (default 5)")
    parser.add_argument("--layers", type=int, default=3, help="Linear(4096, 4096) layers (default 3: 50M params)")
    args = parser.parse_args()
    benchmark(args.rounds, args.layers)


if __name__ == "__main__":
    main()
