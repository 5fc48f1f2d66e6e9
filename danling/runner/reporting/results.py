"""Results bookkeeping: which result is the latest, which is the best, and what score each one has.

`results` is a mapping `index -> split -> metric -> value` (index is usually the epoch). Everything here is
a pure function of that mapping, so it can be tested without a runner.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Callable

from chanfig import NestedDict

# Keys of a result that are bookkeeping, not splits: never picked as the score split.
IGNORED_SPLITS = frozenset({"index", "epoch", "epochs", "step", "steps", "time"})
# Relative tolerance below which two scores are considered equal.
SCORE_TOLERANCE = 1e-7
# Accepted values of `config.score_mode`.
SCORE_MODES = ("min", "max")
# Score names (or their suffixes) for which lower is better.
LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "mape", "error", "err", "perplexity", "ppl", "nll", "wer", "cer")
# Splits that hold held-out test data: choosing one to select the model leaks it.
TEST_SPLITS = frozenset({"test", "testing"})


def infer_score_mode(score_name: str) -> str:
    r"""
    Direction of a score from its name: `"min"` for losses and errors, `"max"` otherwise.

    Lower is better when the last component of `score_name` (after a `.`) is, or ends with, one of
    `LOWER_IS_BETTER` (`loss`, `mse`, `rmse`, `mae`, `error`, `perplexity`...).

    Args:
        score_name: Name of the metric that scores a result.

    Returns:
        `"min"` or `"max"`.

    Examples:
        >>> [infer_score_mode(name) for name in ("loss", "val_loss", "rmse", "task.mae", "acc", "auroc")]
        ['min', 'min', 'min', 'min', 'max', 'max']
    """
    name = str(score_name).rsplit(".", 1)[-1].lower()
    return "min" if name.endswith(LOWER_IS_BETTER) else "max"


def resolve_score_mode(score_mode: str | None, score_name: str) -> str:
    r"""
    `score_mode` when given (checked), else [`infer_score_mode`][danling.runner.reporting.results.infer_score_mode].

    Raises:
        ValueError: If `score_mode` is neither `None` nor one of `SCORE_MODES`.

    Examples:
        >>> resolve_score_mode(None, "rmse"), resolve_score_mode("max", "rmse")
        ('min', 'max')
    """
    if score_mode is None:
        return infer_score_mode(score_name)
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES} or None, but got {score_mode!r}")
    return score_mode


def append_result(results: NestedDict, result: Mapping, index: Any) -> NestedDict:
    r"""
    Store `result` under `index`, merging into a result already stored there (a result without `partial` clears
    the `partial` flag of the one it completes).

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
        >>> _ = append_result(results, {"train": {"loss": 0.5, "partial": True}, "partial": True}, 1)
        >>> append_result(results, {"train": {"loss": 0.4}}, 1).dict()  # the whole epoch, resumed from its cut
        {'train': {'loss': 0.4}}
    """
    if index in results:
        stored = results[index]
        stored.merge(NestedDict(result))
        for key, value in [(None, result), *result.items()]:  # a complete result clears the flag of a partial one
            section = stored if key is None else stored.get(key)
            if isinstance(value, Mapping) and "partial" not in value and isinstance(section, Mapping):
                section.pop("partial", None)
    else:
        results[index] = NestedDict(result)
    return results[index]


def infer_score_split(result: Mapping, score_split: str | None = None, unscored: Collection[str] = ()) -> str:
    r"""
    Split whose score ranks results: `score_split` if given, else `val`, `validate`, then the first split not in
    `unscored` (the train splits), else the second split.

    Args:
        result: A result, `split -> metric -> value`.
        score_split: Explicit choice.
        unscored: Splits passed over while another is there (the train splits).

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
        >>> infer_score_split({"pretrain": {}, "finetune": {}, "dev": {}}, unscored=["pretrain", "finetune"])
        'dev'
    """
    if score_split is not None:
        return score_split
    splits = [key for key, value in result.items() if key not in IGNORED_SPLITS and isinstance(value, Mapping)]
    for candidate in ("val", "validate"):
        if candidate in splits:
            return candidate
    if not splits:
        raise ValueError(f"cannot choose a score split: the result has no splits ({list(result.keys())})")
    evaluated = [split for split in splits if split not in unscored]
    if unscored and evaluated:
        return evaluated[0]
    return splits[1] if len(splits) > 1 else splits[0]


def result_splits(results: Mapping) -> list[str]:
    r"""
    Every split that appears in any result, in order of first appearance.

    Examples:
        >>> result_splits({0: {"train": {"loss": 1.0}}, 1: {"train": {}, "val": {}, "index": 1}})
        ['train', 'val']
    """
    splits: dict[str, None] = {}
    for result in results.values():
        if isinstance(result, Mapping):
            splits.update((key, None) for key, value in result.items() if _is_split(key, value))
    return list(splits)


def _is_split(key: Any, value: Any) -> bool:
    return key not in IGNORED_SPLITS and isinstance(value, Mapping)


def check_score_split(
    results: Mapping, score_split: str | None, unscored: Collection[str] = ()
) -> tuple[str, str | None]:
    r"""
    The split that scores `results`, and a warning to show when it was a fallback rather than a choice.

    Args:
        results: All results (not empty).
        score_split: `config.score_split`, or `None` to infer it from the latest result (see
            [`reference_result`][danling.runner.reporting.results.reference_result]).
        unscored: Splits a result holding nothing else is passed over for, when inferring (the train splits).

    Returns:
        The split, and `None` or a message explaining the fallback (with a leak warning for a `test` split).

    Raises:
        ValueError: If `score_split` names a split none of the results has.

    Examples:
        >>> check_score_split({0: {"train": {}, "val": {}}}, None)
        ('val', None)
        >>> check_score_split({0: {"train": {}, "val": {}}}, "dev")
        Traceback (most recent call last):
        ValueError: score_split is 'dev', but the results have no such split; available splits are ['train', 'val']
    """
    if score_split is not None:
        available = result_splits(results)
        if score_split not in available:
            raise ValueError(
                f"score_split is {score_split!r}, but the results have no such split; available splits are {available}"
            )
        return score_split, None
    split = infer_score_split(reference_result(results, unscored) or {}, None, unscored)
    if split in ("val", "validate"):
        return split, None
    message = (
        f"no score_split is set and no 'val'/'validate' split exists: the best result is chosen on {split!r}; "
        "set config.score_split to choose"
    )
    if split.lower() in TEST_SPLITS:
        message += f" (selecting the model on {split!r} leaks the test data into the model choice)"
    return split, message


def get_scores(
    results: Mapping, score_name: str = "loss", score_split: str | None = None, unscored: Collection[str] = ()
) -> NestedDict:
    r"""
    Score of every result: `results[index][score_split][score_name]`, for results that have one.

    Args:
        results: All results.
        score_name: Metric that scores a result.
        score_split: Split to read it from (inferred from the latest result when `None`).
        unscored: Splits a result holding nothing else is passed over for, when inferring (the train splits).

    Returns:
        `index -> score`, in the order of `results`.

    Examples:
        >>> get_scores({0: {"train": {"loss": 3.0}, "val": {"loss": 2.0}}, 1: {"val": {"loss": 1.0}}}).dict()
        {0: 2.0, 1: 1.0}
    """
    scores = NestedDict()
    if not results:
        return scores
    split = infer_score_split(reference_result(results, unscored) or {}, score_split, unscored)
    for index, result in results.items():
        section = result.get(split) if isinstance(result, Mapping) else None
        if isinstance(section, Mapping) and score_name in section:
            scores[index] = _to_float(section[score_name])
    return scores


def _to_float(value: Any) -> float:
    if value is None:  # a non-finite score read back from JSON
        return math.nan
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def best_index(scores: Mapping, best_fn: Callable = min) -> Any:
    r"""
    Index of the best finite score; ties (within `SCORE_TOLERANCE`) go to the latest index, so a run that
    matches its best keeps going. NaN and infinite scores are never best.

    Args:
        scores: `index -> score`.
        best_fn: `min` or `max` (any function that picks the better of a list of two scores).

    Returns:
        The index, or `None` when no score is finite.

    Examples:
        >>> best_index({0: 0.5, 1: 0.9, 2: 0.9}, max)
        2
        >>> best_index({0: 0.5, 1: float("nan")}, min), best_index({0: float("nan")}, min)
        (0, None)
    """
    best, best_score = None, None
    for index, score in scores.items():
        if not math.isfinite(score):
            continue
        if best_score is None or _same(score, best_score) or best_fn([best_score, score]) == score:
            best, best_score = index, score
    return best


def _same(score: float, best: float) -> bool:
    return abs(score - best) <= SCORE_TOLERANCE * max(1.0, abs(best))


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


def reference_result(results: Mapping, unscored: Collection[str] = ()) -> Mapping | None:
    r"""
    The result a score split is inferred from: the latest one holding a split not in `unscored`, else the latest.

    With `eval_steps` and `eval_at_epoch_end: false`, an epoch that ends between two evaluations has a record of
    its training result alone: inferring from it would score the run on its train split.

    Examples:
        >>> results = {5: {"val": {"loss": 1.0}}, 8: {"train": {"loss": 2.0}}}
        >>> reference_result(results, ["train"]), reference_result(results)
        ({'val': {'loss': 1.0}}, {'train': {'loss': 2.0}})
    """
    if not results:
        return None
    for result in reversed(list(results.values())):
        if isinstance(result, Mapping) and any(
            _is_split(key, value) and key not in unscored for key, value in result.items()
        ):
            return result
    return results[next(reversed(list(results.keys())))]


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
    Whether the latest score is the best so far (`True` when there are no scores yet; never for NaN/inf).

    Examples:
        >>> is_best({0: 0.5, 1: 0.4}, min), is_best({0: 0.5, 1: 0.6}, min), is_best({})
        (True, False, True)
        >>> is_best({0: 0.5, 1: float("nan")}, min)
        False
    """
    if not scores:
        return True
    return best_index(scores, best_fn) == next(reversed(list(scores.keys())))


def epochs_without_improvement(scores: Mapping, best_fn: Callable = min) -> int:
    r"""
    How many results came after the best one (a NaN/inf score is never an improvement).

    Examples:
        >>> epochs_without_improvement({0: 0.5, 1: 0.4, 2: 0.45, 3: 0.6}, min)
        2
        >>> epochs_without_improvement({0: float("nan"), 1: float("nan")}, min)
        2
    """
    if not scores:
        return 0
    indices = list(scores.keys())
    best = best_index(scores, best_fn)
    if best is None:
        return len(indices)
    return len(indices) - 1 - indices.index(best)
