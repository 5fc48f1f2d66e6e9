"""
Statistics shared by the benchmarks (a helper module, not a script): ratios per round, their median and a bootstrap
interval of that median, and the one-line summary each benchmark prints.

A round is one independent sample (one process, or one set of processes in lockstep); a benchmark's verdict is the
median over rounds of each round's ratio, never a ratio of pooled totals.

Examples:
    >>> loop = [{"train_wall": 2.0, "batches": 4}, {"train_wall": 1.0, "batches": 4}]
    >>> runner = [{"train_wall": 2.2, "batches": 4}, {"train_wall": 1.0, "batches": 4}]
    >>> round(round_ratio(runner, loop, "train_wall"), 3), round(us_per_batch(runner, "train_wall"))
    (1.05, 400000)
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    r"""
    Element-wise `numerators[i] / denominators[i]`.

    Examples:
        >>> ratios([2.0, 3.0], [1.0, 2.0])
        [2.0, 1.5]
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators against {len(denominators)} denominators")
    return [numerator / denominator for numerator, denominator in zip(numerators, denominators)]


def round_ratio(epochs: Sequence[Mapping], base: Sequence[Mapping], measure: str) -> float:
    r"""One round's ratio: the median over its epoch pairs of `epochs[i][measure] / base[i][measure]`."""
    return statistics.median(ratios([e[measure] for e in epochs], [e[measure] for e in base]))


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    r"""
    A 95% percentile-bootstrap interval of the median of `values` (rounds resampled with replacement).

    The seed is fixed, so the same measurements always print the same interval.

    Examples:
        >>> bootstrap_interval([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def us_per_batch(epochs: Sequence[Mapping], measure: str) -> float:
    r"""Microseconds of `measure` per batch over `epochs` (each with its `batches`)."""
    return sum(e[measure] for e in epochs) / sum(e["batches"] for e in epochs) * 1e6


def summary(scenario: str, label: str, values: Sequence[float], target: float | None = None) -> str:
    r"""
    The summary line of `values`, the per-round ratios of one measure: their median, its 95% bootstrap interval,
    the spread of the rounds and, with a `target`, whether the median meets it.

    Examples:
        >>> summary("fp32", "lockstep wall, train runner/loop", [1.02, 1.04, 1.01], target=1.05)
        '[fp32] lockstep wall, train runner/loop: median of 3 round ratios 1.020 (95% CI 1.010-1.040; rounds 1.010-1.040); target <= 1.05: met'
    """  # noqa: E501
    median, (low, high) = statistics.median(values), bootstrap_interval(values)
    line = (
        f"[{scenario}] {label}: median of {len(values)} round ratios {median:.3f} "
        f"(95% CI {low:.3f}-{high:.3f}; rounds {min(values):.3f}-{max(values):.3f})"
    )
    if target is None:
        return line
    return f"{line}; target <= {target:.2f}: {'met' if median <= target else 'missed'}"


# The tables and summaries of `bench_runner.py`. A lockstep round is `{variant: [epoch report, ...]}` (variants
# `loop`, `runner`, optionally `control` and `baseline`), each report holding one epoch's `MEASURES` in seconds and
# its `batches`; a paired round is `{variant: report}` (`runner`, optionally `baseline`), each report one process's
# runner/loop ratios (`wall`, `cpu`), microseconds per batch (`loop_us`, `runner_us`, `extra_us`) and losses.

MEASURES = {
    "train_wall": "wall, train",
    "train_cpu": "cpu, train",
    "epoch_wall": "wall, epoch",
    "epoch_cpu": "cpu, epoch",
}
LOCKSTEP_HEAD = f"{'scen.':>6}{'round':>6}{'A train':>10}{'B train':>10}{'B epoch':>10}" + "".join(
    f"{label.replace(', ', ' '):>12}" for label in MEASURES.values()
)
PAIRED_HEAD = (
    f"{'scen.':>6}{'round':>6}{'variant':>9}{'loop us':>10}{'runner us':>11}{'wall':>8}{'cpu':>8}{'extra':>10}"
)


def lockstep_row(scenario: str, index: int, result: Mapping[str, Sequence[Mapping]]) -> str:
    r"""One round: us per batch of A (loop) and B (runner), B/A per measure, both losses, then A'/A and B0/A."""
    columns = (("loop", "train_wall"), ("runner", "train_wall"), ("runner", "epoch_wall"))
    cells = "".join(f"{us_per_batch(result[v], m):>10.1f}" for v, m in columns)
    cells += "".join(f"{round_ratio(result['runner'], result['loop'], m):>12.3f}" for m in MEASURES)
    cells += f"  loss {result['loop'][-1]['loss']:.6f} / {result['runner'][-1]['loss']:.6f}"
    for variant, label in (("control", "A'/A"), ("baseline", "B0/A")):
        if variant in result:
            cells += f"  {label} {round_ratio(result[variant], result['loop'], 'train_wall'):.3f}"
    return f"{scenario:>6}{index:>6}{cells}"


def lockstep_summary(scenario: str, rounds: Sequence[Mapping[str, Sequence[Mapping]]], target: float) -> None:
    r"""Per measure, the median of the round ratios runner/loop; then A'/A, B0/A and B/B0 where they were run."""
    for measure, label in MEASURES.items():
        values = [round_ratio(r["runner"], r["loop"], measure) for r in rounds]
        print(summary(scenario, f"lockstep {label} runner/loop", values, target))
    extra = statistics.median(
        us_per_batch(r["runner"], "train_wall") - us_per_batch(r["loop"], "train_wall") for r in rounds
    )
    print(f"[{scenario}] lockstep wall, train: runner - loop {extra:+.1f} us per batch (median of rounds)")
    for variant, base, label in (
        ("control", "loop", "A'/A"),
        ("baseline", "loop", "B0/A"),
        ("runner", "baseline", "B/B0"),
    ):
        if variant in rounds[0] and base in rounds[0]:
            for measure in ("train_wall", "train_cpu"):
                values = [round_ratio(r[variant], r[base], measure) for r in rounds]
                print(summary(scenario, f"lockstep {MEASURES[measure]} {label}", values))


def paired_row(scenario: str, index: int, variant: str, result: Mapping) -> str:
    r"""One paired process: us per batch of the loop and the runner, runner/loop, median extra us, both losses."""
    cells = f"{result['loop_us']:>10.1f}{result['runner_us']:>11.1f}{result['wall']:>8.3f}{result['cpu']:>8.3f}"
    losses = f"loss {result['loss'][0]:.6f} / {result['loss'][1]:.6f}"
    return f"{scenario:>6}{index:>6}{variant:>9}{cells}{result['extra_us']:>10.1f}  {losses}"


def paired_summary(scenario: str, rounds: Sequence[Mapping[str, Mapping]], target: float) -> None:
    r"""The median of the round ratios runner/loop in wall and CPU time; with a baseline, B0/A and B/B0 too."""
    for measure in ("wall", "cpu"):
        print(summary(scenario, f"paired {measure} runner/loop", [r["runner"][measure] for r in rounds], target))
    extra = statistics.median(r["runner"]["extra_us"] for r in rounds)
    print(f"[{scenario}] paired wall: runner - loop {extra:+.1f} us per batch (median of rounds)")
    if "baseline" in rounds[0]:
        print(summary(scenario, "paired wall B0/A", [r["baseline"]["wall"] for r in rounds]))
        print(summary(scenario, "paired wall B/B0", [r["runner"]["wall"] / r["baseline"]["wall"] for r in rounds]))
