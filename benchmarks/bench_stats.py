"""
Ratios and intervals for `bench_runner.py`: a round is `{variant: [epoch report, ...]}`, every variant's epochs in
the same order, and each report holds the times of one epoch (`train_wall`, `full_cpu`, ...) and its `batches`.

Examples:
    >>> rounds = [{"loop": [{"train_wall": 2.0, "batches": 4}], "runner": [{"train_wall": 2.1, "batches": 4}]}]
    >>> round_ratios(rounds, "train_wall"), round(us_per_batch(rounds[0]["runner"], "train_wall"))
    ([1.05], 525000)
"""

from __future__ import annotations

import random
import statistics

Round = dict[str, list[dict]]
TARGET = 1.05  # the verdict: the runner at most 5% slower than the hand-written loop
MEASURES = ("train_wall", "full_wall", "train_cpu", "full_cpu")
LABELS = {
    "train_wall": "wall, train-only",
    "full_wall": "wall, full train()",
    "train_cpu": "cpu,  train-only",
    "full_cpu": "cpu,  full train()",
}
# The per-round table: (variant, measure) of each us/batch column.
COLUMNS = (("loop", "train_wall"), ("runner", "train_wall"), ("runner", "full_wall"))
COLUMNS += (("loop", "train_cpu"), ("runner", "train_cpu"), ("runner", "full_cpu"))


def pair_ratios(rounds: list[Round], measure: str, variant: str = "runner", base: str = "loop") -> list[float]:
    r"""`variant`/`base` of `measure` for every epoch pair of every round."""
    return [b[measure] / a[measure] for result in rounds for a, b in zip(result[base], result[variant])]


def round_ratios(rounds: list[Round], measure: str, variant: str = "runner", base: str = "loop") -> list[float]:
    r"""Per round, the median over its epoch pairs of `variant`/`base`."""
    return [statistics.median(pair_ratios([result], measure, variant, base)) for result in rounds]


def total_ratios(rounds: list[Round], measure: str, variant: str = "runner") -> list[float]:
    r"""Per round, the ratio of `variant`'s total `measure` to the loop's."""
    return [sum(e[measure] for e in r[variant]) / sum(e[measure] for e in r["loop"]) for r in rounds]


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    r"""
    A 95% percentile-bootstrap interval of the median of `values` (rounds resampled with replacement; a fixed seed,
    so the same measurements always print the same interval).
    """
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def us_per_batch(epochs: list[dict], measure: str) -> float:
    r"""Microseconds of `measure` per batch over `epochs`."""
    return sum(e[measure] for e in epochs) / sum(e["batches"] for e in epochs) * 1e6


def print_round(scenario: str, index: int, result: Round) -> None:
    r"""One table row: us/batch of each column, the round's median ratios, both losses, then A'/A and B0/A."""
    cells = "".join(f"{us_per_batch(result[v], m):>10.1f}" for v, m in COLUMNS)
    medians = "".join(f"{statistics.median(pair_ratios([result], m)):>9.3f}" for m in MEASURES)
    loss = f"{result['loop'][-1]['loss']:.6f} / {result['runner'][-1]['loss']:.6f}"
    others = ""
    for variant, label in (("control", "A'/A"), ("baseline", "B0/A")):
        if variant in result:
            others += f"  {label} {statistics.median(pair_ratios([result], 'train_wall', variant)):.3f}"
    print(f"{scenario:>6}{index:>6}{cells}{medians}  {loss}{others}", flush=True)


def summarise(scenario: str, rounds: list[Round]) -> None:
    r"""
    Per measure: the median of the per-round ratios B/A with its bootstrap interval (the verdict), the median over
    all epoch pairs, the median of the round totals and the median extra time per batch.
    """
    for measure in MEASURES:
        per_round = round_ratios(rounds, measure)
        ratio, (low, high) = statistics.median(per_round), bootstrap_interval(per_round)
        pairs = statistics.median(pair_ratios(rounds, measure))
        totals = statistics.median(total_ratios(rounds, measure))
        extra = statistics.median(us_per_batch(r["runner"], measure) - us_per_batch(r["loop"], measure) for r in rounds)
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(
            f"[{scenario}] {LABELS[measure]}: median of {len(rounds)} round ratios B/A {ratio:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}; target <= {TARGET:.2f}) {verdict}; over all epoch pairs {pairs:.3f}; "
            f"of round totals {totals:.3f}; B-A {extra:+.1f} us/batch"
        )


def summarise_other(scenario: str, rounds: list[Round], variant: str, label: str, base: str = "loop") -> None:
    r"""
    `variant`/`base` in train-only wall and CPU time: the A/A null test (a second loop process against the first,
    which should read 1.000 within the noise), the baseline runner against the loop, or the runner against it.
    """
    for measure in ("train_wall", "train_cpu"):
        per_round = round_ratios(rounds, measure, variant, base)
        ratio, (low, high) = statistics.median(per_round), bootstrap_interval(per_round)
        print(
            f"[{scenario}] {label}, {LABELS[measure]}: median of {len(rounds)} round ratios {ratio:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}; per-round spread {min(per_round):.3f}-{max(per_round):.3f})"
        )
