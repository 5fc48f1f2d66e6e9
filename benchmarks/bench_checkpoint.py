"""Checkpoint cost: `save_checkpoint`/`load_checkpoint` against plain `torch.save`/`torch.load`, bytes on disk per
save, and the `async_save` stall.

The model is `--layers` x `nn.Linear(--width, --width)` (default 3 x 4096: 50.3M parameters) after one Adam step, so
a checkpoint holds the weights, `exp_avg` and `exp_avg_sq` (about 576 MiB). Two runners hold the same model, one
with `async_save: true`; both keep 2 step-stamped checkpoints and save as a best epoch does, so every save commits
`latest.pth`, `step-N.pth` and `best.pth`. Each round runs, side by side (each pair in alternating order):

- save, `plain`: `torch.save(runner.state_dict(), path)`; `plain+fsync`: the same, then `os.fsync` of the file;
- save, `danling`: `runner.save_checkpoint()`: the three names, fsynced, with SHA-256 manifests; `bytes/state` is
  the size of the files it created (each inode once) over the size of the plain file;
- load, `plain`: `torch.load(path)`; `danling`: `read_verified(latest)`, which verifies the SHA-256 while reading;
- load `cold`: the same two after `posix_fadvise(DONTNEED)` dropped the file from the page cache: read from disk;
- restore, `plain`: `torch.load` and the model's and optimizer's `load_state_dict`; `danling`: `load_checkpoint`;
- stall, `async`: `save_checkpoint` on the `async_save` runner returns once the state is in host memory; training
  steps then run until the background save has committed (`bg s`).

The summary is the median of the per-round ratios (targets: save <= 1.5 against `plain+fsync`, load <= 1.3, bytes
<= 1.05, async stall <= 0.25 of the synchronous save on a real disk). `peak MiB` is the peak RSS increase during
each operation (`VmHWM`, reset through `/proc/self/clear_refs`; `n/a` where that is not allowed).

Usage:
    python benchmarks/bench_checkpoint.py                          # 9 rounds in the temporary directory
    python benchmarks/bench_checkpoint.py --rounds 15 --dir /data --dir /dev/shm
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
from danling.runner.checkpointing import read_verified

MIB = 2**20
SAVE_TARGET = 1.5
LOAD_TARGET = 1.3
BYTES_TARGET = 1.05
STALL_TARGET = 0.25
PAIRS = {  # measure: (danling, plain)
    "save": ("danling", "plain+fsync"),
    "load": ("load danling", "load plain"),
    "cold load": ("cold danling", "cold plain"),
    "restore": ("restore danling", "restore plain"),
}


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


def drop_cache(path: str) -> None:
    r"""Write the file out and drop it from the page cache: the next read comes from the disk (where the platform
    has `posix_fadvise`; elsewhere the cold loads read from the cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def inodes(directory: str) -> dict[tuple[int, int], int]:
    r"""Size of every file in `directory`, by inode: names that share bytes count once."""
    found = {}
    for name in os.listdir(directory):
        stat = os.stat(os.path.join(directory, name))
        found[(stat.st_dev, stat.st_ino)] = stat.st_size
    return found


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


def plain_restore(runner: CheckpointRunner, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    runner.model.load_state_dict(state["model"])
    runner.optimizer.load_state_dict(state["optimizer"])


def async_stall(runner: CheckpointRunner) -> dict:
    r"""The loop's stall in an async save, then steps until the background save commits."""
    start = perf_counter()
    runner.save_checkpoint()
    stall = perf_counter() - start
    steps = 0
    while runner.async_saver.busy:  # training goes on while the save is written
        runner.step()
        steps += 1
    runner.async_saver.wait()
    return {"stall": stall, "background": perf_counter() - start, "steps": steps}


def in_turn(row: dict, first: bool, operations: dict[str, Callable[[], Any]]) -> None:
    r"""Measure the operations into `row`, in their order when `first`, else reversed."""
    for key in list(operations) if first else list(reversed(operations)):
        row[key] = measure(operations[key])


def save_pair(row: dict, sync: CheckpointRunner, plain_path: str, first: bool) -> None:
    before = inodes(sync.checkpoint_dir) if os.path.isdir(sync.checkpoint_dir) else {}
    sync.steps += 1  # a new step-stamped name each round; retention removes the oldest
    in_turn(row, first, {"plain+fsync": lambda: plain_save(sync, plain_path, True), "danling": sync.save_checkpoint})
    created = [size for key, size in inodes(sync.checkpoint_dir).items() if key not in before]
    row["bytes"] = sum(created) / os.path.getsize(plain_path)


def load_pairs(row: dict, sync: CheckpointRunner, plain_path: str, first: bool) -> None:
    latest = sync.checkpoint_manager.path("latest")
    kwargs = {"map_location": "cpu", "weights_only": True}
    in_turn(
        row,
        first,
        {
            "load plain": lambda: torch.load(plain_path, **kwargs),
            "load danling": lambda: read_verified(latest, **kwargs),
        },
    )

    def cold(path: str, load: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: (drop_cache(path), load())

    in_turn(
        row,
        first,
        {
            "cold plain": cold(plain_path, lambda: torch.load(plain_path, **kwargs)),
            "cold danling": cold(latest, lambda: read_verified(latest, **kwargs)),
        },
    )
    restores = {"restore plain": lambda: plain_restore(sync, plain_path)}
    restores["restore danling"] = lambda: sync.load_checkpoint(latest)
    in_turn(row, first, restores)


def run_round(runners: dict[str, CheckpointRunner], plain_path: str, index: int) -> dict:
    sync, asynchronous = runners["sync"], runners["async"]
    first = index % 2 == 0
    row: dict[str, Any] = {"plain": measure(lambda: plain_save(sync, plain_path, fsync=False))}
    drop_cache(plain_path)  # untimed: no dirty pages of it are left to slow down what comes next
    save_pair(row, sync, plain_path, first)
    load_pairs(row, sync, plain_path, first)
    asynchronous.step()
    asynchronous.steps += 1
    gc.collect()
    reset, before = reset_peak(), status_kib("VmRSS")
    row.update(async_stall(asynchronous))
    peak = status_kib("VmHWM") if reset else None
    row["async peak"] = None if peak is None or before is None else (peak - before) / 1024
    return row


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


COLUMNS = ("plain", "plain+fsync", "danling", "load plain", "load danling", "cold plain", "cold danling")


def print_head() -> None:
    print("seconds; stall: of the async save_checkpoint; A/D: stall / synchronous save; bg s: background save")
    print("bytes: created by a danling save / the plain file; peak MiB: plain save / danling save / danling load")
    heads = "".join(f"{head:>11}" for head in ("save plain", "+fsync", "danling", "load plain", "danling"))
    heads += "".join(f"{head:>11}" for head in ("cold plain", "danling", "rest plain", "danling"))
    print(f"{'round':>5}{heads}{'bytes':>7}{'stall':>8}{'A/D':>7}{'bg s':>7}   peak MiB")


def print_row(index: int, row: dict) -> None:
    cells = "".join(f"{row[key][0]:>11.3f}" for key in (*COLUMNS, "restore plain", "restore danling"))
    stall = f"{row['stall']:>8.3f}{row['stall'] / row['danling'][0]:>7.3f}{row['background']:>7.2f}"
    peaks = " / ".join(mib(row[key][1]) for key in ("plain", "danling", "load danling"))
    print(f"{index:>5}{cells}{row['bytes']:>7.3f}{stall}   {peaks}", flush=True)


def summarise(root: str, rows: list[dict], size: float) -> None:
    def seconds(key: str) -> list[float]:
        return [row[key] if key == "stall" else row[key][0] for row in rows]

    print(f"[{root}] checkpoint {size:.0f} MiB; max peak RSS increase, MiB: " + peaks(rows))
    print(summary(root, "save danling/plain", ratios(seconds("danling"), seconds("plain"))))
    print(summary(root, "save danling/plain+fsync", ratios(seconds("danling"), seconds("plain+fsync")), SAVE_TARGET))
    print(summary(root, "bytes on disk per save/state", [row["bytes"] for row in rows], BYTES_TARGET))
    for measure_name in ("load", "cold load", "restore"):
        danling, plain = PAIRS[measure_name]
        target = LOAD_TARGET if measure_name != "restore" else None
        print(summary(root, f"{measure_name} danling/plain", ratios(seconds(danling), seconds(plain)), target))
    print(summary(root, "async stall/synchronous save", ratios(seconds("stall"), seconds("danling")), STALL_TARGET))


def peaks(rows: list[dict]) -> str:
    values = {key: [row[key][1] for row in rows] for key in ("plain", "danling", "load plain", "load danling")}
    values["async"] = [row["async peak"] for row in rows]
    return ", ".join(f"{key} {mib(None if None in v else max(v))}" for key, v in values.items())


def benchmark(root: str, rounds: int, layers: int, width: int) -> None:
    directory = tempfile.mkdtemp(prefix="bench-checkpoint-", dir=root)
    try:
        config = {"log": False, "keep_checkpoints": 2}
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
            rows.append(run_round(runners, os.path.join(directory, "plain.pth"), index))
            print_row(index, rows[-1])
        summarise(root, rows, os.path.getsize(os.path.join(directory, "plain.pth")) / MIB)
        for runner in runners.values():
            runner.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds per directory (default 9)")
    parser.add_argument("--layers", type=int, default=3, help="Linear layers (default 3)")
    parser.add_argument("--width", type=int, default=4096, help="features of each layer (default 4096)")
    parser.add_argument("--dir", action="append", help="where to write; repeatable (default: the temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.dir or [tempfile.gettempdir()]:
        benchmark(root, args.rounds, args.layers, args.width)


if __name__ == "__main__":
    main()
