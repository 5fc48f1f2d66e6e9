"""Time of `import danling` in fresh interpreters, and which heavy modules it imports (tensorboard must not be one).

Each round starts two fresh interpreters, one running `import torch` and one `import danling` (which imports torch
too), in alternating order. Each child times its own import (`import`: from before the statement to after it) and
lists `sys.modules`; the parent times the whole process (`process`: start-up, import and exit). The summary is the
median over rounds of each, and of each round's difference danling - torch: what danling adds on top of torch.

The modules listed in `HEAVY` are reported as imported or not after `import danling`; the script exits with status 1
when one of `FORBIDDEN` was imported (they belong behind the code that uses them). `--importtime` runs one more
child under `python -X importtime` and prints the modules with the largest own import time.

Usage:
    python benchmarks/bench_import.py                  # 9 rounds
    python benchmarks/bench_import.py --rounds 15 --importtime --top 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from time import perf_counter

HEAVY = (
    "torch",
    "numpy",
    "tensorboard",
    "torch.utils.tensorboard",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "matplotlib",
    "torchmetrics",
    "accelerate",
    "deepspeed",
    "transformers",
)
FORBIDDEN = ("tensorboard", "torch.utils.tensorboard")
CHILD = (
    "import json, sys, time\n"
    "start = time.perf_counter()\n"
    "import {module}\n"
    "seconds = time.perf_counter() - start\n"
    "print(json.dumps({{'seconds': seconds, 'modules': sorted(sys.modules)}}))\n"
)


def time_import(module: str) -> dict:
    r"""Import `module` in a fresh interpreter: the import's seconds, the process's seconds and `sys.modules`."""
    start = perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", CHILD.format(module=module)], capture_output=True, text=True, timeout=300, check=False
    )
    process = perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"import {module} failed:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"import": report["seconds"], "process": process, "modules": set(report["modules"])}


def import_times(top: int) -> list[tuple[str, int, int]]:
    r"""`python -X importtime -c "import danling"`: the `top` modules by own time, as (name, self us, cumulative us)."""
    command = [sys.executable, "-X", "importtime", "-c", "import danling"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"import danling failed:\n{completed.stderr[-3000:]}")
    rows = []
    for line in completed.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[0].strip().isdigit():
            rows.append((fields[2].strip(), int(fields[0]), int(fields[1])))
    return sorted(rows, key=lambda row: row[1], reverse=True)[:top]


def benchmark(rounds: int) -> set[str]:
    r"""Interleaved rounds of `import torch` and `import danling`; prints each and the medians; danling's modules."""
    print(f"{'round':>5}{'torch import':>14}{'danling import':>16}{'torch process':>15}{'danling process':>17}")
    results: dict[str, list[dict]] = {"torch": [], "danling": []}
    for index in range(rounds):
        for module in ("torch", "danling")[:: 1 if index % 2 == 0 else -1]:
            results[module].append(time_import(module))
        torch, danling = results["torch"][-1], results["danling"][-1]
        cells = (
            f"{torch['import']:>14.3f}{danling['import']:>16.3f}{torch['process']:>15.3f}{danling['process']:>17.3f}"
        )
        print(f"{index:>5}{cells}", flush=True)
    for measure in ("import", "process"):
        torch = [r[measure] for r in results["torch"]]
        danling = [r[measure] for r in results["danling"]]
        extra = statistics.median(d - t for d, t in zip(danling, torch))
        print(
            f"{measure}: median of {rounds} rounds, torch {statistics.median(torch):.3f} s, danling "
            f"{statistics.median(danling):.3f} s (torch included), danling - torch {extra:+.3f} s"
        )
    return set.union(*(r["modules"] for r in results["danling"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="fresh interpreters per module (default 9)")
    parser.add_argument("--importtime", action="store_true", help="also list the slowest modules (-X importtime)")
    parser.add_argument("--top", type=int, default=15, help="modules listed by --importtime (default 15)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be positive, got {args.rounds}")
    modules = benchmark(args.rounds)
    imported = [name for name in HEAVY if name in modules]
    print(f"heavy modules imported by `import danling`: {', '.join(imported) or 'none'}")
    print(f"not imported: {', '.join(name for name in HEAVY if name not in modules)}")
    if args.importtime:
        print(f"{'own us':>10}{'cumulative us':>15}  module (python -X importtime, largest own time first)")
        for name, own, cumulative in import_times(args.top):
            print(f"{own:>10}{cumulative:>15}  {name}")
    forbidden = [name for name in FORBIDDEN if name in modules]
    if forbidden:
        raise SystemExit(f"`import danling` imported {', '.join(forbidden)}: import it where it is used")
    print(f"none of {', '.join(FORBIDDEN)} imported: OK")


if __name__ == "__main__":
    main()
