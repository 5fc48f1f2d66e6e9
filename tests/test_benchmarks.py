"""The benchmarks run end to end on tiny workloads, and their statistics are the median of per-round ratios."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CHECKOUT = BENCHMARKS.parent
TINY = ["--rounds", "1", "--epochs", "2", "--samples", "256"]  # 8 batches an epoch
SUMMARY = r"median of 1 round ratios (\d+\.\d+) \(95% CI"


def bench(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / script), *args]


@pytest.fixture
def stats(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _stats

    return _stats


def test_stats_take_the_median_of_per_round_ratios(stats):
    assert stats.ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="2 numerators against 1 denominators"):
        stats.ratios([1.0, 2.0], [1.0])
    loop = [{"train_wall": 1.0, "batches": 8}, {"train_wall": 2.0, "batches": 8}, {"train_wall": 1.0, "batches": 8}]
    runner = [{"train_wall": 1.2, "batches": 8}, {"train_wall": 2.0, "batches": 8}, {"train_wall": 1.1, "batches": 8}]
    assert stats.round_ratio(runner, loop, "train_wall") == pytest.approx(1.1)  # the median of 1.2, 1.0, 1.1
    assert stats.us_per_batch(runner, "train_wall") == pytest.approx(4.3 / 24 * 1e6)
    # Three rounds: the verdict is the median ratio 1.04, not the ratio of the totals (pulled to 1.6 by one round).
    per_round = stats.ratios([1.04, 1.02, 9.0], [1.0, 1.0, 5.0])
    line = stats.summary("fp32", "lockstep wall, train runner/loop", per_round, target=1.05)
    assert line.startswith("[fp32] lockstep wall, train runner/loop: median of 3 round ratios 1.040 (95% CI ")
    assert line.endswith("rounds 1.020-1.800); target <= 1.05: met")
    assert stats.summary("bf16", "paired wall runner/loop", [1.09], target=1.08).endswith("target <= 1.08: missed")
    low, high = stats.bootstrap_interval(per_round)
    assert min(per_round) <= low <= 1.04 <= high <= max(per_round)


def test_bench_runner_lockstep_with_control_and_baseline(subprocess_run):
    # Four processes in lockstep: the loop, the runner, the loop again (A/A) and this checkout as the baseline. The
    # script stops if any of them trains differently from the loop (steps, final loss).
    command = bench("bench_runner.py", *TINY, "--scenario", "accum", "--control", "--baseline", str(CHECKOUT))
    completed = subprocess_run(command, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    row = next(line for line in completed.stdout.splitlines() if line.lstrip().startswith("accum"))
    losses = re.search(r"loss (\d+\.\d+) / (\d+\.\d+)  A'/A \d+\.\d+  B0/A \d+\.\d+$", row)
    assert losses is not None, row
    assert losses.group(1) == losses.group(2)
    for label in ("wall, train", "cpu, train", "wall, epoch", "cpu, epoch"):
        match = re.search(
            rf"\[accum\] lockstep {label} runner/loop: {SUMMARY}.*target <= 1.08: (met|missed)$", completed.stdout, re.M
        )
        assert match is not None, completed.stdout
    for label in ("A'/A", "B0/A", "B/B0"):
        assert re.search(rf"\[accum\] lockstep wall, train {re.escape(label)}: {SUMMARY}", completed.stdout)


def test_paired_measure_with_a_baseline(subprocess_run):
    command = bench(
        "bench_runner.py", *TINY, "--scenario", "fp16", "--paired", "--chunk", "3", "--baseline", str(CHECKOUT)
    )
    completed = subprocess_run(command, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines() if line.lstrip().startswith("fp16")]
    assert sorted(row[2] for row in rows) == ["baseline", "runner"]
    assert all(row[-3] == row[-1] for row in rows)  # loss loop / runner
    for measure in ("wall", "cpu"):
        match = re.search(rf"\[fp16\] paired {measure} runner/loop: {SUMMARY}", completed.stdout)
        assert match is not None, completed.stdout
        assert 0.2 < float(match.group(1)) < 5.0
    assert re.search(rf"\[fp16\] paired wall B/B0: {SUMMARY}", completed.stdout)


def test_bench_runner_refuses_a_baseline_that_is_not_a_checkout(subprocess_run, tmp_path):
    # A path without danling: the baseline worker would import this checkout's, so it refuses to run.
    completed = subprocess_run(bench("bench_runner.py", *TINY, "--scenario", "fp32", "--baseline", str(tmp_path)))
    assert completed.returncode != 0
    assert f"--baseline {tmp_path}: the worker imported danling from" in completed.stderr


def test_paired_measure_needs_an_epoch_after_the_warm_up(subprocess_run):
    completed = subprocess_run(bench("bench_runner.py", "--paired", "--epochs", "1"), timeout=60)
    assert completed.returncode == 2
    assert "--epochs must be at least 1, and 2 with --paired (its first is warm-up), got 1" in completed.stderr


def test_bench_checkpoint_compares_saves_loads_and_the_async_stall(subprocess_run, tmp_path):
    command = bench("bench_checkpoint.py", "--rounds", "1", "--layers", "1", "--width", "64", "--dir", str(tmp_path))
    completed = subprocess_run(command, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for label in (
        "save danling/plain",
        "save danling/plain\\+fsync",
        "bytes on disk per save/state",
        "load danling/plain",
        "cold load danling/plain",
        "restore danling/plain",
        "async stall/synchronous save",
    ):
        assert re.search(rf"\[{re.escape(str(tmp_path))}\] {label}: {SUMMARY}", out), out
    for target in ("1.50", "1.30", "1.05", "0.25"):
        assert f"target <= {target}" in out
    # Every save commits latest.pth, step-N.pth and best.pth, and only one of them holds bytes.
    assert re.search(r"bytes on disk per save/state: median of 1 round ratios 1\.0", out), out
    assert list(tmp_path.iterdir()) == []  # its directory is removed


def test_bench_import_reports_the_time_and_no_tensorboard(subprocess_run):
    completed = subprocess_run(bench("bench_import.py", "--rounds", "1", "--importtime", "--top", "3"), timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert re.search(r"^import: median of 1 rounds, torch \d+\.\d+ s, danling \d+\.\d+ s", out, re.M), out
    assert re.search(r"^heavy modules imported by `import danling`: .*torch", out, re.M)
    assert re.search(r"^not imported: .*tensorboard", out, re.M)
    listed = re.findall(r"^ +\d+ +\d+  \S+$", out, re.M)
    assert len(listed) == 3
    assert out.rstrip().endswith("none of tensorboard, torch.utils.tensorboard imported: OK")


@pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None, reason="needs torchmetrics (benchmark extra)")
def test_bench_metrics_agrees_with_torchmetrics(subprocess_run):
    completed = subprocess_run(bench("bench_metrics.py", "--samples", "2000", "--repeats", "1"), timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split() for line in completed.stdout.splitlines()[2:]]
    assert len(rows) == 4, completed.stdout
    assert all(row[-1] == "True" for row in rows), completed.stdout
