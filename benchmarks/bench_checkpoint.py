"""Checkpoint cost: `save_checkpoint`/`load_checkpoint` against plain `torch.save`/`torch.load`, and `async_save` stall.

The model is `--layers` x `nn.Linear(--width, --width)` (default 3 x 4096: 50.3M parameters) after one Adam step, so
a checkpoint holds the weights, `exp_avg` and `exp_avg_sq` (about 576 MiB). Two runners hold the same model, one
with `async_save: true`; both have `keep_checkpoints: 0` (only `latest.pth` is written). Each round, in order:

- save, `plain`: `torch.save(runner.state_dict(), path)`;
- save, `plain+fsync`: the same, then `os.fsync` of the file: what any durable save pays;
- save, `danling`: `runner.save_checkpoint(save_best=False)`: temporary file, fsync, SHA-256 manifest, rename (one
  file, as the plain save writes; a best epoch also copies it to `best.pth`);
- load, `plain`: `torch.load(path)` and the model's and optimizer's `load_state_dict`, a hand-written resume;
- load, `danling`: `runner.load_checkpoint(latest)`: verifies the SHA-256, restores every part;
- stall, `async`: the same `save_checkpoint` on the `async_save` runner returns once the state is in host memory;
  training steps then run until the background save has committed (`bg s`: its duration, `steps`: steps taken).

The summary is the median of the per-round ratios: danling/plain saves (target <= 1.3 against `plain+fsync`),
loads, and the async stall against the synchronous save (target <= 0.25 on a real disk; on tmpfs, where fsync is
free, the snapshot is a larger share). `peak MiB` is the peak RSS increase during each operation (`VmHWM`, reset
before it through `/proc/self/clear_refs`; `n/a` where that is not allowed): a streaming save needs about 0, an
async one a copy of the state.

Usage:
    python benchmarks/bench_checkpoint.py                          # 3 rounds in the temporary directory
    python benchmarks/bench_checkpoint.py --rounds 5 --dir /data --dir /dev/shm
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from time import perf_counter
from typing import Any

import torch
from _stats import ratios, summary
from torch import nn

import danling as dl

MIB = 2**20
SAVE_TARGET = 1.3
STALL_TARGET = 0.25


def status_kib(field: str) -> int | None:
    r"""A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`), or `None` where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as fp:
            for line in fp:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    r"""Reset the kernel's peak RSS (`VmHWM`) of this process; `False` where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fp:
            fp.write("5")
    except OSError:
        return False
    return True


def measure(operation: Callable[[], Any]) -> tuple[float, float | None]:
    r"""Run `operation`; its seconds and its peak RSS increase in MiB (`None` where it cannot be read)."""
    gc.collect()
    reset, before = reset_peak(), status_kib("VmRSS")
    start = perf_counter()
    operation()
    seconds = perf_counter() - start
    peak = status_kib("VmHWM") if reset else None
    return seconds, None if peak is None or before is None else (peak - before) / 1024


class CheckpointRunner(dl.TorchRunner):
    def __init__(self, config: dict, layers: int, width: int) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = torch.randn(4, width)

    def step(self) -> None:
        r"""A hand-written training step; gradients are kept (`set_to_none=False`), so steps allocate nothing."""
        self.model(self.batch).square().mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)


def plain_save(runner: CheckpointRunner, path: str, fsync: bool) -> None:
    torch.save(runner.state_dict(), path)
    if fsync:
        with open(path, "rb") as fp:
            os.fsync(fp.fileno())


def plain_load(runner: CheckpointRunner, path: str) -> None:
    state = torch.load(path, map_location="cpu")
    runner.model.load_state_dict(state["model"])
    runner.optimizer.load_state_dict(state["optimizer"])


def async_stall(runner: CheckpointRunner) -> dict:
    r"""The loop's stall in an async save, then steps until the background save commits."""
    start = perf_counter()
    runner.save_checkpoint(save_best=False)
    stall = perf_counter() - start
    steps = 0
    while runner.async_saver.busy:  # training goes on while the save is written
        runner.step()
        steps += 1
    runner.async_saver.wait()
    return {"stall": stall, "background": perf_counter() - start, "steps": steps}


def run_round(runners: dict[str, CheckpointRunner], plain_path: str) -> dict:
    sync, asynchronous = runners["sync"], runners["async"]
    row: dict[str, Any] = {}
    row["plain"] = measure(lambda: plain_save(sync, plain_path, fsync=False))
    row["plain+fsync"] = measure(lambda: plain_save(sync, plain_path, fsync=True))
    row["danling"] = measure(lambda: sync.save_checkpoint(save_best=False))
    row["load plain"] = measure(lambda: plain_load(sync, plain_path))
    row["load danling"] = measure(lambda: sync.load_checkpoint(sync.checkpoint_manager.path("latest")))
    asynchronous.step()
    gc.collect()
    reset, before = reset_peak(), status_kib("VmRSS")
    row.update(async_stall(asynchronous))
    peak = status_kib("VmHWM") if reset else None
    row["async peak"] = None if peak is None or before is None else (peak - before) / 1024
    return row


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def print_head() -> None:
    print("seconds; stall: of the async save_checkpoint; A/D: stall / synchronous save; bg s: background save")
    print("peak MiB: peak RSS increase of the plain save / danling save / danling load / async save")
    heads = "".join(f"{head:>13}" for head in ("save plain", "+fsync", "danling", "load plain", "load danling"))
    print(f"{'round':>5}{heads}{'stall':>8}{'A/D':>7}{'bg s':>7}{'steps':>6}   peak MiB")


def print_row(index: int, row: dict) -> None:
    saves = "".join(
        f"{row[key][0]:>13.3f}" for key in ("plain", "plain+fsync", "danling", "load plain", "load danling")
    )
    stall = f"{row['stall']:>8.3f}{row['stall'] / row['danling'][0]:>7.3f}{row['background']:>7.2f}{row['steps']:>6}"
    peaks = (
        " / ".join(mib(row[key][1]) for key in ("plain", "danling", "load danling")) + f" / {mib(row['async peak'])}"
    )
    print(f"{index:>5}{saves}{stall}   {peaks}", flush=True)


def summarise(root: str, rows: list[dict], size: float) -> None:
    def seconds(key: str) -> list[float]:
        return [row[key] if key == "stall" else row[key][0] for row in rows]

    print(f"[{root}] checkpoint {size:.0f} MiB; max peak RSS increase, MiB: " + peaks(rows))
    print(summary(root, "save danling/plain", ratios(seconds("danling"), seconds("plain"))))
    print(summary(root, "save danling/plain+fsync", ratios(seconds("danling"), seconds("plain+fsync")), SAVE_TARGET))
    print(summary(root, "load danling/plain", ratios(seconds("load danling"), seconds("load plain"))))
    print(summary(root, "async stall/synchronous save", ratios(seconds("stall"), seconds("danling")), STALL_TARGET))


def peaks(rows: list[dict]) -> str:
    keys = ("plain", "plain+fsync", "danling", "load plain", "load danling")
    values = {key: [row[key][1] for row in rows] for key in keys}
    values["async"] = [row["async peak"] for row in rows]
    return ", ".join(f"{key} {mib(None if None in v else max(v))}" for key, v in values.items())


def benchmark(root: str, rounds: int, layers: int, width: int) -> None:
    directory = tempfile.mkdtemp(prefix="bench-checkpoint-", dir=root)
    try:
        config = {"log": False, "keep_checkpoints": 0}
        runners = {
            mode: CheckpointRunner(
                {**config, "dir": os.path.join(directory, mode), "async_save": mode == "async"}, layers, width
            )
            for mode in ("sync", "async")
        }
        for runner in runners.values():
            runner.step()  # the Adam state exists
        parameters = sum(p.numel() for p in runners["sync"].model.parameters())
        print(f"{root}: {layers} x Linear({width}, {width}), {parameters / 1e6:.1f}M parameters + Adam state")
        print_head()
        rows = []
        for index in range(rounds):
            rows.append(run_round(runners, os.path.join(directory, "plain.pth")))
            print_row(index, rows[-1])
        summarise(root, rows, os.path.getsize(runners["sync"].checkpoint_manager.path("latest")) / MIB)
        for runner in runners.values():
            runner.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per directory (default 3)")
    parser.add_argument("--layers", type=int, default=3, help="Linear layers (default 3)")
    parser.add_argument("--width", type=int, default=4096, help="features of each layer (default 4096)")
    parser.add_argument("--dir", action="append", help="where to write; repeatable (default: the temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.dir or [tempfile.gettempdir()]:
        benchmark(root, args.rounds, args.layers, args.width)


if __name__ == "__main__":
    main()
