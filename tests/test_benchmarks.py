"""The overhead benchmark runs end to end: lockstep workers, the same training in both variants, a summary."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections import Counter

import pytest

BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_runner.py")


def test_bench_runner_runs_the_variants_in_lockstep(subprocess_run):
    # Two epochs of 8 batches with accumulation, with the A/A control: the script itself raises if the step counts
    # or losses differ. `subprocess_run` starts it in its own process group and kills the group (all workers) on
    # timeout.
    command = [sys.executable, BENCHMARK, "--rounds", "1", "--epochs", "2", "--samples", "256", "--scenario", "accum"]
    completed = subprocess_run([*command, "--control"], timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines() if line.strip().startswith("accum")]
    assert len(rows) == 1, completed.stdout
    loss_loop, loss_runner, control = float(rows[0][-5]), float(rows[0][-3]), float(rows[0][-1])
    assert loss_loop == loss_runner
    assert control > 0
    pattern = r"\[accum\] (wall|cpu), +(train-only|full train\(\)): median of 1 round ratios B/A (\d+\.\d+) \(95% CI"
    summary = re.findall(pattern, completed.stdout)
    measures = sorted((c, s) for c, s, _ in summary)
    assert measures == sorted([(c, s) for c in ("wall", "cpu") for s in ("train-only", "full train()")])
    assert all(float(ratio) > 0 for _, _, ratio in summary)
    control_pattern = r"\[accum\] control A'/A, (wall|cpu), +train-only: median of 1 round ratios"
    controls = re.findall(control_pattern, completed.stdout)
    assert sorted(controls) == ["cpu", "wall"]


def test_bench_runner_runs_a_reduced_runner_variant(subprocess_run):
    # The hand-written loop inside the runner's process (here with fp16 autocast and the scaler) must train exactly
    # like the loop (the script checks it).
    command = [sys.executable, BENCHMARK, "--rounds", "1", "--epochs", "2", "--samples", "256", "--scenario", "fp16"]
    completed = subprocess_run([*command, "--runner-variant", "loop-in-runner"], timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines() if line.strip().startswith("fp16")]
    assert len(rows) == 1, completed.stdout
    assert float(rows[0][-3]) == float(rows[0][-1])  # loss A / loss B
    assert "[fp16] wall, train-only: median of 1 round ratios B/A" in completed.stdout


def test_loop_scenario_reads_the_runner_config(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCHMARK))
    from runner_variants import loop_scenario

    assert loop_scenario({"accum_steps": 4, "precision": "bf16"}) == "accum"
    assert [loop_scenario({"precision": p}) for p in ("bf16", "fp16", None)] == ["bf16", "fp16", "fp32"]


def test_bench_runner_compares_a_baseline_checkout(subprocess_run, tmp_path):
    # `--baseline` runs the runner of another checkout in a fourth process; this checkout stands in for it here. The
    # baseline worker stops unless it imported danling from that path, and must train exactly like the loop.
    checkout = os.path.dirname(os.path.dirname(BENCHMARK))
    command = [sys.executable, BENCHMARK, "--rounds", "1", "--epochs", "2", "--samples", "256", "--scenario", "fp32"]
    completed = subprocess_run([*command, "--baseline", checkout], timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    row = next(line.split() for line in completed.stdout.splitlines() if line.strip().startswith("fp32"))
    assert row[-2] == "B0/A"
    assert float(row[-1]) > 0
    for label in ("baseline B0/A", "runner against the baseline B/B0"):
        assert re.search(rf"\[fp32\] {re.escape(label)}, wall, +train-only: median of 1 round ratios", completed.stdout)

    elsewhere = tmp_path / "not-a-checkout"  # a path without danling: the worker refuses to run this one's
    elsewhere.mkdir()
    refused = subprocess_run([*command, "--baseline", str(elsewhere)], timeout=240)
    assert refused.returncode != 0
    assert f"--baseline {elsewhere}: the worker imported danling from" in refused.stderr


def load_sampling(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCHMARK))
    import bench_runner_sampling

    return bench_runner_sampling


def test_sampling_sorts_stacks_by_the_work_they_were_doing(monkeypatch):
    sampling = load_sampling(monkeypatch)
    loop = ["<module> (bench_runner_sampling.py:180)", "loop_epoch (bench_runner.py:160)"]
    runner = [
        "train (danling/runner/torch_runner.py:170)",
        "TorchRunner.train_epoch (danling/runner/torch_runner.py:215)",
    ]
    fetch = "_BaseDataLoaderIter.__next__ (torch/utils/data/dataloader.py:725)"
    assert sampling.categorize([*loop, fetch]) == ("data", fetch.split(" (")[0] + " [torch/utils/data/dataloader.py]")
    loss = [
        "Module._call_impl (torch/nn/modules/module.py:1786)",
        "CrossEntropyLoss.forward (torch/nn/modules/loss.py:1)",
    ]
    assert (
        sampling.categorize([*runner, "TorchRunner.train_step (danling/runner/torch_runner.py:285)", *loss])[0]
        == "loss"
    )
    meter = "AverageMeter.update (danling/metrics/average_meter.py:130)"
    assert sampling.categorize([*runner, meter]) == ("rest", "AverageMeter.update [danling/metrics/average_meter.py]")
    assert sampling.categorize(["<module> (bench_runner_sampling.py:180)", fetch]) is None  # not inside an epoch


def test_sampling_ratio_uses_the_shared_work_as_the_yardstick(monkeypatch):
    sampling = load_sampling(monkeypatch)
    loop = Counter(data=30, forward=20, loss=5, autocast=5, backward=25, optimizer=5, rest=10)
    runner = Counter({key: 2 * value for key, value in loop.items()})  # twice the samples, same shares
    assert sampling.per_batch_ratio(runner, loop) == 1.0
    runner["rest"] += 9  # 4.5 of the loop's 90 shared samples more rest: 104.5 / 100
    assert sampling.per_batch_ratio(runner, loop) == pytest.approx(1.045)


@pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed (the benchmark extra)")
def test_bench_runner_sampling_runs_end_to_end(subprocess_run):
    script = os.path.join(os.path.dirname(BENCHMARK), "bench_runner_sampling.py")
    command = [sys.executable, script, "--rounds", "1", "--epochs", "2", "--scenario", "fp32", "--top", "3"]
    completed = subprocess_run(command, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    match = re.search(r"\[fp32\] runner / loop per batch, in place: median of 1 rounds (\d+\.\d+)", completed.stdout)
    assert match is not None, completed.stdout
    assert 0.5 < float(match.group(1)) < 2.0
    shares = re.findall(
        r"^ +(data|forward|loss|autocast|backward|optimizer|rest) +(\d+\.\d+)% +(\d+\.\d+)%$", completed.stdout, re.M
    )
    assert [name for name, _, _ in shares] == ["data", "forward", "loss", "autocast", "backward", "optimizer", "rest"]


def load_paired(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCHMARK))
    import bench_runner_paired

    return bench_runner_paired


class RecordingLoop:
    def __init__(self, events: list) -> None:
        self.events = events

    def start_epoch(self) -> None:
        self.events.append("epoch")

    def step(self, input, target) -> None:
        self.events.append(("loop", input))


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_paired_loader_hands_every_batch_to_both_in_alternating_turns(monkeypatch, chunk):
    paired_module = load_paired(monkeypatch)
    events: list = []
    batches = [(index, -index) for index in range(5)]
    paired = paired_module.PairedLoader(batches, RecordingLoop(events), chunk)
    assert len(paired) == 5  # everything but iteration is the wrapped loader's
    assert paired.count((0, 0)) == 1
    for input, _ in paired:  # the runner's side
        events.append(("runner", input))
    expected = ["epoch"]
    for turn, first in enumerate(range(0, 5, chunk)):  # the loop's turn first on even chunks, second on odd ones
        indices = range(first, min(first + chunk, 5))
        loop, runner = [("loop", index) for index in indices], [("runner", index) for index in indices]
        expected += loop + runner if turn % 2 == 0 else runner + loop
    assert events == expected
    assert len(paired.times) == 5
    assert all(span >= 0 for times in paired.times for span in times)


def test_bench_runner_paired_runs_end_to_end(subprocess_run):
    # The script checks that the runner and the loop end with the same loss and step count.
    script = os.path.join(os.path.dirname(BENCHMARK), "bench_runner_paired.py")
    command = [sys.executable, script, "--rounds", "1", "--epochs", "2", "--samples", "256", "--scenario", "fp16"]
    completed = subprocess_run([*command, "--chunk", "3"], timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    row = next(line.split() for line in completed.stdout.splitlines() if line.strip().startswith("fp16"))
    assert row[-3] == row[-1]  # loss loop / loss runner
    for measure in ("wall", "cpu"):
        pattern = rf"\[fp16\] {measure} +runner/loop per batch: median of 1 rounds (\d+\.\d+)"
        match = re.search(pattern, completed.stdout)
        assert match is not None, completed.stdout
        assert 0.5 < float(match.group(1)) < 2.0


def test_bench_runner_paired_refuses_a_warmup_that_leaves_nothing_to_time(subprocess_run):
    script = os.path.join(os.path.dirname(BENCHMARK), "bench_runner_paired.py")
    completed = subprocess_run([sys.executable, script, "--epochs", "2", "--warmup", "2"], timeout=120)
    assert completed.returncode == 2
    assert "--warmup must leave at least one of the 2 epochs to time, got 2" in completed.stderr
