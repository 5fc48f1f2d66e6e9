"""Results bookkeeping: which result is the latest, which is the best, and what score each one has.

`results` is a mapping `index -> split -> metric -> value` (index is usually the epoch). Everything here is
a pure function of that mapping, so it can be tested without a runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from chanfig import NestedDict

# Keys of a result that are bookkeeping, not splits: never picked as the score split.
IGNORED_SPLITS = frozenset({"index", "epoch", "epochs", "step", "steps", "time"})
# Relative tolerance below which two scores are considered equal.
SCORE_TOLERANCE = 1e-7


def append_result(results: NestedDict, result: Mapping, index: Any) -> NestedDict:
    r"""
    Store `result` under `index`, merging into a result already stored there.

    Args:
        results: All results (modified in place).
        result: Result to add, `split -> metric -> value`.
        index: Where to store it (usually the epoch).

    Returns:
        The result stored at `index`.

    Examples:
        >>> results = NestedDict()
        >>> _ = append_result(results, {"train": {"loss": 1.0}}, 0)
        >>> append_result(results, {"val": {"loss": 2.0}}, 0).dict()
        {'train': {'loss': 1.0}, 'val': {'loss': 2.0}}
    """
    if index in results:
        results[index].merge(NestedDict(result))
    else:
        results[index] = NestedDict(result)
    return results[index]


def infer_score_split(result: Mapping, score_split: str | None = None) -> str:
    r"""
    Split whose score ranks results: `score_split` if given, else `val`, `validate`, then the second split.

    Args:
        result: A result, `split -> metric -> value`.
        score_split: Explicit choice.

    Returns:
        The split name.

    Raises:
        ValueError: If the result has no split to choose from.

    Examples:
        >>> infer_score_split({"train": {}, "val": {}, "test": {}})
        'val'
        >>> infer_score_split({"train": {}, "test": {}})
        'test'
        >>> infer_score_split({"train": {}})
        'train'
    """
    if score_split is not None:
        return score_split
    splits = [key for key, value in result.items() if key not in IGNORED_SPLITS and isinstance(value, Mapping)]
    for candidate in ("val", "validate"):
        if candidate in splits:
            return candidate
    if not splits:
        raise ValueError(f"cannot choose a score split: the result has no splits ({list(result.keys())})")
    return splits[1] if len(splits) > 1 else splits[0]


def get_scores(results: Mapping, score_name: str = "loss", score_split: str | None = None) -> NestedDict:
    r"""
    Score of every result: `results[index][score_split][score_name]`, for results that have one.

    Args:
        results: All results.
        score_name: Metric that scores a result.
        score_split: Split to read it from (inferred from the latest result when `None`).

    Returns:
        `index -> score`, in the order of `results`.

    Examples:
        >>> get_scores({0: {"train": {"loss": 3.0}, "val": {"loss": 2.0}}, 1: {"val": {"loss": 1.0}}}).dict()
        {0: 2.0, 1: 1.0}
    """
    scores = NestedDict()
    if not results:
        return scores
    split = infer_score_split(latest_result(results) or {}, score_split)
    for index, result in results.items():
        section = result.get(split) if isinstance(result, Mapping) else None
        if isinstance(section, Mapping) and score_name in section:
            scores[index] = _to_float(section[score_name])
    return scores


def _to_float(value: Any) -> float:
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def best_index(scores: Mapping, best_fn: Callable = min) -> Any:
    r"""
    Index of the best score; ties go to the latest index (so a run that matches its best keeps going).

    Args:
        scores: `index -> score`.
        best_fn: `min` or `max` (any function with the `key=` argument).

    Returns:
        The index, or `None` when there are no scores.

    Examples:
        >>> best_index({0: 0.5, 1: 0.9, 2: 0.9}, max)
        2
    """
    if not scores:
        return None
    return best_fn(reversed(list(scores.keys())), key=scores.get)


def latest_result(results: Mapping) -> NestedDict | None:
    r"""
    Copy of the most recently added result, with its `index`.

    Examples:
        >>> latest_result({0: {"val": {"acc": 0.5}}, 1: {"val": {"acc": 0.7}}})
        NestedDict(
          ('val'): NestedDict(
            ('acc'): 0.7
          )
          ('index'): 1
        )
    """
    if not results:
        return None
    index = next(reversed(list(results.keys())))
    return _with_index(results[index], index)


def result_at(results: Mapping, index: Any) -> NestedDict | None:
    r"""
    Copy of the result stored at `index`, with its `index`; `None` when `index` is `None`.
    """
    if index is None:
        return None
    return _with_index(results[index], index)


def _with_index(result: Mapping, index: Any) -> NestedDict:
    copy = NestedDict(result).clone()
    copy["index"] = index
    return copy


def is_best(scores: Mapping, best_fn: Callable = min) -> bool:
    r"""
    Whether the latest score is the best so far (`True` when there are no scores yet).

    Examples:
        >>> is_best({0: 0.5, 1: 0.4}, min), is_best({0: 0.5, 1: 0.6}, min), is_best({})
        (True, False, True)
    """
    if not scores:
        return True
    latest = next(reversed(list(scores.values())))
    best = scores[best_index(scores, best_fn)]
    return abs(latest - best) <= SCORE_TOLERANCE * max(1.0, abs(best))


def epochs_without_improvement(scores: Mapping, best_fn: Callable = min) -> int:
    r"""
    How many results came after the best one.

    Examples:
        >>> epochs_without_improvement({0: 0.5, 1: 0.4, 2: 0.45, 3: 0.6}, min)
        2
    """
    if not scores:
        return 0
    indices = list(scores.keys())
    return len(indices) - 1 - indices.index(best_index(scores, best_fn))
