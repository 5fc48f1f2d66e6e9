"""Where the runner's per-batch cost goes: CPU instructions of each piece of `TorchRunner`'s step, by callgrind.

`bench_runner_instructions.py` gives one number per scenario (runner / hand-written loop). This script splits it:
it builds the workload of `bench_runner.py` (MLP 32 -> 64 -> 10, SGD, batch 32, 1 thread) once, warms it up, and
then runs each piece `--repeat` times under valgrind's callgrind, counting only the instructions inside that piece
(callgrind collects inside `eval` calls only and dumps its counters between pieces). Pieces, per batch:

- `fetch`: the runner's timed batch iterator (`Telemetry.iterate`) over a list of batches; `fetch (hand)` the same
  list iterated plainly.
- `unpack + to_device`, `contexts` (`accumulate()` and `autocast()` entered and left), `record` (loss meter),
  `watch` (the non-finite-loss guard), `optimizer_step` (with its clipping/scaler/EMA/scheduler checks and step
  counter) next to `optimizer (hand)` (`step` and `zero_grad`) and `loss sum (hand)`.
- `train_step` next to `step (hand)`: forward under autocast, loss, scaled backward, optimizer step at the end of
  each window and the loss sum, as `bench_runner.py`'s hand-written loop does.
- `log step`: one step log line (loss check, step result, formatting, logging), per call and spread over the
  default log interval.
- `epoch`: `train_epoch` over the `DataLoader` next to `epoch (hand)`, the hand-written epoch.

Usage:
    python benchmarks/bench_runner_breakdown.py                    # fp32
    python benchmarks/bench_runner_breakdown.py --scenario bf16    # also: accum, fp16
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from bench_runner_instructions import SETUP

WORKLOAD = (
    """
import sys
scenario, repeat, names_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
"""
    + SETUP
    + r"""


class Runner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


sys.stdout = io.StringIO()
runner = Runner({"dir": tempfile.mkdtemp(), "epoch_end": 1, "dataloader": {"batch_size": 32}, **options})
loader = DataLoader(dataset, batch_size=32, shuffle=True)
batches = [batch for _, batch in zip(range(repeat), loader)]
batch = batches[0]
x, y = batch
model, criterion, optimizer = runner.model, runner.criterion, runner.optimizer
scaler = torch.amp.GradScaler("cpu", enabled=dtype is torch.float16)
pred = model(x)
loss = criterion(pred, y)
total = torch.zeros((), dtype=torch.float64)


def fetch(n):
    for _ in runner.telemetry.iterate(batches[:n]):
        pass


def fetch_hand(n):
    for _ in batches[:n]:
        pass


def unpack_to_device(n):
    for _ in range(n):
        runner.unpack(runner.to_device(batch))


def contexts(n):
    for _ in range(n):
        with runner.accumulate():
            with runner.autocast():
                pass


def record(n):
    for _ in range(n):
        runner.record(pred, y, loss)


def loss_sum_hand(n):
    for _ in range(n):
        total.add_(loss.detach(), alpha=len(y))


def watch(n):
    for index in range(n):
        runner._loss_guard.watch(loss, index)


def optimizer_step(n):
    for _ in range(n):
        runner.optimizer_step()


def optimizer_hand(n):
    for _ in range(n):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train_step(n):
    for _ in range(n):
        runner.train_step(batch)


def hand_step(index, inputs, targets):
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = criterion(model(inputs), targets)
    scaler.scale(loss / accum_steps if accum_steps > 1 else loss).backward()
    if (index + 1) % accum_steps == 0:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    total.add_(loss.detach(), alpha=len(targets))


def step_hand(n):
    for index in range(n):
        hand_step(index, x, y)


def log_step(n):
    for _ in range(n):
        runner._log_step("train", 100, 256)


def epoch(n):
    runner.train_epoch("train")


def epoch_hand(n):
    for index, (inputs, targets) in enumerate(loader):
        hand_step(index, inputs, targets)


pieces = [fetch, fetch_hand, unpack_to_device, contexts, record, loss_sum_hand, watch, optimizer_step, optimizer_hand,
          train_step, step_hand, log_step, epoch, epoch_hand]
runner.train_epoch("train")  # warm up: dataloaders, lazy imports, allocator
for piece in pieces:
    piece(4)
runner.train_epoch("train")
runner._begin_accumulation(None)  # the step pieces run outside an epoch: windows of an unsized loader
with open(names_file, "w") as fp:
    fp.write(",".join(piece.__name__ for piece in pieces))
eval(compile("0", "first", "eval")); os.getppid()  # the first eval's one-off costs land in a dump of their own
for piece in pieces:
    eval(compile(f"{piece.__name__}({repeat})", piece.__name__, "eval"))
    os.getppid()  # callgrind dumps the counters just before this call
"""
)

# How each piece is shown and what its count is divided by (`None`: per call of `repeat`; a number: per batch).
LABELS = {
    "fetch": "fetch",
    "fetch_hand": "fetch (hand)",
    "unpack_to_device": "unpack + to_device",
    "contexts": "contexts",
    "record": "record",
    "loss_sum_hand": "loss sum (hand)",
    "watch": "watch",
    "optimizer_step": "optimizer_step",
    "optimizer_hand": "optimizer (hand)",
    "train_step": "train_step",
    "step_hand": "step (hand)",
    "log_step": "log step (per call)",
    "epoch": "epoch (train_epoch)",
    "epoch_hand": "epoch (hand)",
}
EPOCH_BATCHES = 8192 // 32


def count(scenario: str, repeat: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as directory:
        script, names = os.path.join(directory, "workload.py"), os.path.join(directory, "names.txt")
        with open(script, "w", encoding="utf-8") as fp:
            fp.write(WORKLOAD)
        out = os.path.join(directory, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=builtin_eval*"]
        command += ["--dump-before=getppid", f"--callgrind-out-file={out}", sys.executable, script]
        subprocess.run([*command, scenario, str(repeat), names], capture_output=True, text=True, check=True)
        with open(names, encoding="utf-8") as fp:
            pieces = fp.read().split(",")
        dumps = sorted(glob.glob(out + ".*"), key=lambda path: int(path.rsplit(".", 1)[1]))
        totals = [_summary(path) for path in dumps]
    if len(totals) < len(pieces) + 1:
        raise RuntimeError(f"callgrind wrote {len(totals)} dumps for {len(pieces) + 1} pieces")
    return dict(zip(pieces, totals[1:]))  # the first dump holds the first eval's one-off costs


def _summary(path: str) -> int:
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="fp32", choices=("fp32", "accum", "bf16", "fp16"))
    parser.add_argument("--repeat", type=int, default=256, help="calls of each piece (default 256)")
    parser.add_argument("--log-interval", type=int, default=25, help="log interval to spread a log step over")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: this benchmark counts instructions with callgrind")
    counts = count(args.scenario, args.repeat)
    print(f"[{args.scenario}] instructions per batch ({args.repeat} calls of each piece)")
    for name, label in LABELS.items():
        per = EPOCH_BATCHES if name.startswith("epoch") else args.repeat
        print(f"  {label:<22} {counts[name] / per:>12,.0f}")
    log_share = counts["log_step"] / args.repeat / args.log_interval
    print(f"  {'log step, per batch':<22} {log_share:>12,.0f}  (one every {args.log_interval} batches)")
    step_extra = (counts["train_step"] - counts["step_hand"]) / args.repeat
    epoch_extra = (counts["epoch"] - counts["epoch_hand"]) / EPOCH_BATCHES
    ratio = counts["epoch"] / counts["epoch_hand"]
    print(f"  train_step - step (hand): {step_extra:+,.0f}; epoch - epoch (hand): {epoch_extra:+,.0f} ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
