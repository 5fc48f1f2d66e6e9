"""Training stall per checkpoint save: synchronous durable save against `async_save=True`, on disk and on tmpfs.

The model is a stack of `--layers` `nn.Linear(4096, 4096)` (3 layers: 50.3M parameters) trained with Adam, so a
checkpoint holds weights, `exp_avg` and `exp_avg_sq` (about 604 MB). Two runners with the same model and
`keep_checkpoints=0` (only `latest.pth` is written) alternate, each round:

(S) `sync`: a training step, then `runner.save_checkpoint()` with `async_save=False`: the stall is the whole durable
    save (serialise, fsync, SHA-256 manifest, rename);
(A) `async`: a training step, then `runner.save_checkpoint()` with `async_save=True`: the stall is the snapshot of
    the state to host memory (plus any wait for the previous save, which the loop below avoids); training steps
    then continue until the background save has committed and verified (its duration is reported).

The stall ratio A/S is the median of the per-round ratios; the target is <= 0.25. Peak extra memory is the peak
RSS (`VmHWM`, reset before each save with `/proc/self/clear_refs`; else 5 ms samples) from just before the save to
the end of its commit, minus the RSS before it: a snapshot costs one copy of the state by design.

Usage:
    python benchmarks/bench_async_save.py                         # 3 rounds on the repository's disk and tmpfs
    python benchmarks/bench_async_save.py --rounds 5 --dirs /data /dev/shm
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import threading
from pathlib import Path
from time import perf_counter

import torch
from memory import reset_peak, status_kib
from torch import nn

import danling as dl

TARGET = 0.25
WIDTH = 4096
MIB = 2**20
DEFAULT_DIRS = (str(Path(__file__).resolve().parents[1]), "/dev/shm")


class PeakRss:
    r"""Peak RSS increase (MiB) over a `with` block: `VmHWM` when it can be reset, else 5 ms samples."""

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.reset = reset_peak()
        self.before = self.peak = status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, (status_kib("VmRSS") or 0))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        peak = max(self.peak, (status_kib("VmHWM") or 0) if self.reset else 0)
        self.mib = (peak - self.before) / 1024


class BigRunner(dl.TorchRunner):
    def __init__(self, config, layers: int) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = torch.randn(4, WIDTH)

    def step(self) -> None:
        # A hand-written step; gradients are kept (set_to_none=False) so steps allocate nothing new.
        self.model(self.batch).square().mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.steps += 1


def save_round(runner: BigRunner) -> dict:
    runner.step()
    with PeakRss() as memory:
        start = perf_counter()
        runner.save_checkpoint()
        stall = perf_counter() - start
        background, steps = 0.0, 0
        if runner.async_saver is not None:
            while runner.async_saver.busy:  # training goes on while the save is written
                runner.step()
                steps += 1
            runner.async_saver.wait()
            background = perf_counter() - start
    return {"stall": stall, "background": background, "steps": steps, "rss": memory.mib}


def benchmark(root: str, rounds: int, layers: int) -> dict:
    directory = tempfile.mkdtemp(prefix="bench-async-save-", dir=root)
    try:
        config = {"log": False, "keep_checkpoints": 0}
        runners = {
            mode: BigRunner({**config, "dir": os.path.join(directory, mode), "async_save": mode == "async"}, layers)
            for mode in ("sync", "async")
        }
        for runner in runners.values():
            runner.step()  # Adam state exists
        rows = []
        print(f"{root}: {sum(p.numel() for p in runners['sync'].model.parameters()) / 1e6:.1f}M parameters + Adam")
        header = f"{'round':>5} {'sync s':>7} {'async s':>8} {'ratio':>6} {'bg s':>6} {'steps':>5}"
        print(f"{header} {'RSS sync/async MiB':>19}")
        for index in range(rounds):
            sync, asynchronous = save_round(runners["sync"]), save_round(runners["async"])
            ratio = asynchronous["stall"] / sync["stall"]
            rows.append((sync, asynchronous, ratio))
            print(
                f"{index:>5} {sync['stall']:>7.3f} {asynchronous['stall']:>8.3f} {ratio:>6.3f} "
                f"{asynchronous['background']:>6.2f} {asynchronous['steps']:>5} "
                f"{sync['rss']:>9.0f} / {asynchronous['rss']:.0f}",
                flush=True,
            )
        size = os.path.getsize(runners["sync"].checkpoint_manager.path("latest")) / MIB
        summary = {
            "size_mib": size,
            "sync": statistics.median(row[0]["stall"] for row in rows),
            "async": statistics.median(row[1]["stall"] for row in rows),
            "ratio": statistics.median(row[2] for row in rows),
            "background": statistics.median(row[1]["background"] for row in rows),
            "rss_sync": max(row[0]["rss"] for row in rows),
            "rss_async": max(row[1]["rss"] for row in rows),
        }
        verdict = "PASS" if summary["ratio"] <= TARGET else "MISS"
        print(
            f"checkpoint {size:.0f} MiB; median stall: sync {summary['sync']:.3f} s, async {summary['async']:.3f} s, "
            f"ratio {summary['ratio']:.3f} (target <= {TARGET}) {verdict}; "
            f"background save {summary['background']:.2f} s; "
            f"peak extra RSS: sync {summary['rss_sync']:.0f} MiB, async {summary['rss_async']:.0f} MiB\n",
            flush=True,
        )
        for runner in runners.values():
            runner.close()
        return summary
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="sync/async rounds per directory (default 3)")
    parser.add_argument("--layers", type=int, default=3, help="Linear(4096, 4096) layers (default 3: 50M params)")
    parser.add_argument("--dirs", nargs="+", default=DEFAULT_DIRS, help="where to write (default: repo disk, tmpfs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.dirs:
        benchmark(root, args.rounds, args.layers)


if __name__ == "__main__":
    main()
