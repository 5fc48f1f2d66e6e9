"""A step-based learning-rate schedule with built-in warmup and cooldown.

[`LRScheduler`][danling.optim.lr_scheduler.LRScheduler] splits a schedule into three independent parts:

1. a *strategy* maps training progress (``0`` to ``1``) to a decay ratio (``0`` = no decay, ``1`` = fully
   decayed): ``cosine``, ``linear`` or ``constant``;
2. a *method* turns that ratio into a learning rate between the base lr and the final lr, either
   geometrically (``percentile``) or arithmetically (``numerical``);
3. a linear *warmup* from ``min_lr`` at the start and a linear *cooldown* to ``min_lr`` at the end.
"""

from __future__ import annotations

from math import cos, pi
from typing import Any, Callable

from torch import Tensor
from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_lr_scheduler

__all__ = ["METHODS", "STRATEGIES", "LRScheduler"]


def _cosine(progress: float) -> float:
    # Half a cosine period: slow at both ends, fastest in the middle.
    return 1.0 - (1.0 + cos(pi * progress)) / 2.0


def _linear(progress: float) -> float:
    return progress


def _constant(progress: float) -> float:
    return 0.0


STRATEGIES: dict[str, Callable[[float], float]] = {"cosine": _cosine, "linear": _linear, "constant": _constant}
"""Decay strategies: progress in ``[0, 1]`` -> decay ratio in ``[0, 1]``."""

METHODS: tuple[str, ...] = ("percentile", "numerical")
"""Ways to interpolate between the base lr and the final lr given a decay ratio."""

DEFAULT_FINAL_LR_RATIO = 1e-3
WARMUP_FRACTION = 20  # warmup defaults to total_steps // 20, i.e. 5%
COOLDOWN_FRACTION = 5  # cooldown defaults to total_steps // 5, i.e. 20%


def _check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    normalized = value.lower() if isinstance(value, str) else value
    if normalized not in choices:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {sorted(choices)}")
    return normalized


def _check_span(value: int | None, total_steps: int, default_fraction: int, what: str) -> int:
    if value is None:
        return total_steps // default_fraction
    if value < 0 or value > total_steps:
        raise ValueError(f"`{what}` must be in [0, total_steps={total_steps}], but got {value}")
    return int(value)


def _check_non_negative(value: float | None, what: str) -> None:
    if value is not None and value < 0:
        raise ValueError(f"`{what}` must be non-negative, but got {value}")


class LRScheduler(torch_lr_scheduler.LRScheduler):
    r"""General step-based learning-rate scheduler with warmup and cooldown.

    At scheduler step ``s`` (``1`` right after construction, ``+1`` on every
    [`step()`][torch.optim.lr_scheduler.LRScheduler.step]) each param group's learning rate is computed from its
    base lr as follows:

    - ``progress = clip(s / total_steps, 0, 1)`` and ``ratio = strategy(progress)``;
    - ``percentile``: ``lr = base * (final / base) ** ratio`` (geometric interpolation);
      ``numerical``: ``lr = (1 - ratio) * (base - final) + final`` (arithmetic interpolation);
    - during warmup (``s < warmup_steps``) the lr ramps linearly from ``min_lr`` by ``s / warmup_steps``;
    - during cooldown (the last ``cooldown_steps`` steps) it ramps linearly down to ``min_lr``;
    - the result is never below ``min_lr``.

    ``final`` is ``final_lr`` when given, else ``base * final_lr_ratio`` (``final_lr_ratio`` defaults to ``1e-3``).
    Set ``warmup_steps=0`` or ``cooldown_steps=0`` to disable either phase.

    Args:
        optimizer: Wrapped optimizer.
        total_steps: Total number of scheduler steps of the run; must be positive.
        final_lr_ratio: Final lr as a fraction of each group's base lr. Mutually exclusive with `final_lr`.
        final_lr: Final lr in absolute terms, shared by all param groups. Mutually exclusive with `final_lr_ratio`.
        min_lr: Floor of the lr, and the start/end point of warmup/cooldown. Lowered to `final_lr` if larger.
        strategy: Decay shape, one of ``"cosine"``, ``"linear"``, ``"constant"`` (case-insensitive), or the name
            of a public method ``(self, progress) -> ratio`` that a subclass defines (the reference library's way to
            add a strategy).
        warmup_steps: Number of warmup steps. Defaults to ``total_steps // 20`` (5%).
        cooldown_steps: Number of cooldown steps. Defaults to ``total_steps // 5`` (20%).
        last_epoch: Index of the last step, as in PyTorch schedulers; ``-1`` starts a new schedule.
        method: ``"percentile"`` or ``"numerical"``. Defaults to ``"numerical"`` when `final_lr` is given and to
            ``"percentile"`` otherwise.

    Raises:
        ValueError: If `strategy` or `method` is unknown, if both `final_lr` and `final_lr_ratio` are given,
            if `total_steps` is not positive, if `warmup_steps`/`cooldown_steps` lie outside
            ``[0, total_steps]``, or if any of the lr arguments is negative.

    Examples:
        >>> import torch
        >>> from danling.optim import LRScheduler
        >>> def run(**kwargs):
        ...     optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)
        ...     scheduler = LRScheduler(optimizer, total_steps=5, final_lr_ratio=1e-5, **kwargs)
        ...     lrs = []
        ...     for _ in range(5):
        ...         lrs.append(scheduler.get_last_lr()[0])
        ...         optimizer.step()
        ...         scheduler.step()
        ...     return lrs
        >>> [round(lr, 10) for lr in run(strategy="linear")]
        [0.1, 0.01, 0.001, 0.0001, 1e-09]
        >>> [round(lr, 10) for lr in run(strategy="cosine")]
        [0.3330753446, 0.0187302031, 0.000533897, 3.00232e-05, 1e-09]
        >>> [round(lr, 2) for lr in run(strategy="linear", method="numerical")]
        [0.8, 0.6, 0.4, 0.2, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        final_lr_ratio: float | None = None,
        final_lr: float | None = None,
        min_lr: float = 1e-9,
        strategy: str = "cosine",
        warmup_steps: int | None = None,
        cooldown_steps: int | None = None,
        last_epoch: int = -1,
        method: str | None = None,
    ) -> None:
        if total_steps is None or total_steps <= 0:
            raise ValueError(f"`total_steps` must be a positive integer, but got {total_steps}")
        if final_lr_ratio is not None and final_lr is not None:
            raise ValueError("Only one of `final_lr_ratio` and `final_lr` may be set, but got both")
        _check_non_negative(final_lr_ratio, "final_lr_ratio")
        _check_non_negative(final_lr, "final_lr")
        _check_non_negative(min_lr, "min_lr")
        self.strategy = self._check_strategy(strategy)
        if method is None:
            method = "numerical" if final_lr is not None else "percentile"
        self.method = _check_choice(method, METHODS, "method")
        if final_lr is None and final_lr_ratio is None:
            final_lr_ratio = DEFAULT_FINAL_LR_RATIO
        if final_lr is not None and min_lr > final_lr:
            min_lr = final_lr
        self.total_steps = int(total_steps)
        self.final_lr_ratio = final_lr_ratio
        self.final_lr = final_lr
        self.min_lr = min_lr
        self.warmup_steps = _check_span(warmup_steps, self.total_steps, WARMUP_FRACTION, "warmup_steps")
        self.cooldown_steps = _check_span(cooldown_steps, self.total_steps, COOLDOWN_FRACTION, "cooldown_steps")
        super().__init__(optimizer, last_epoch)

    @property
    def cooldown_steps_begin(self) -> int:
        """The step after which cooldown starts."""
        return self.total_steps - self.cooldown_steps

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Compute the learning rate of every param group at the current step.

        Returns:
            One learning rate per param group of the wrapped optimizer.
        """
        step = self.last_epoch + 1
        return [self.lr_at(float(base_lr), step) for base_lr in self.base_lrs]

    def lr_at(self, base_lr: float | Tensor, step: int) -> float:
        """Compute the learning rate at `step` of a param group whose base lr is `base_lr`.

        This is a pure function of its arguments and the scheduler's settings; it does not change any state.

        Args:
            base_lr: The param group's initial learning rate.
            step: Scheduler step, ``1`` being the first.

        Returns:
            The learning rate, never below `min_lr`.

        Examples:
            >>> import torch
            >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)
            >>> scheduler = LRScheduler(optimizer, total_steps=10, strategy="constant", warmup_steps=4)
            >>> [round(scheduler.lr_at(1.0, step), 6) for step in range(1, 11)]
            [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
        """
        base_lr = float(base_lr)
        lr = self._decayed_lr(base_lr, step)
        if 0 < step < self.warmup_steps:
            lr = self.min_lr + (step / self.warmup_steps) * (lr - self.min_lr)
        elif self.cooldown_steps > 0 and step > self.cooldown_steps_begin:
            remaining = 1.0 - (step - self.cooldown_steps_begin) / self.cooldown_steps
            lr = self.min_lr + remaining * (lr - self.min_lr)
        return max(self.min_lr, lr)

    def _decayed_lr(self, base_lr: float, step: int) -> float:
        progress = min(max(step / self.total_steps, 0.0), 1.0)
        ratio = self._strategy_function(self.strategy)(progress)
        final_lr = self.final_lr if self.final_lr is not None else base_lr * self.final_lr_ratio  # type: ignore[operator]
        # Geometric interpolation is undefined from a zero base lr; fall back to the arithmetic one there.
        if self.method == "percentile" and base_lr > 0:
            return base_lr * (final_lr / base_lr) ** ratio
        # This order of operations gives the reference library's numbers to the last bit.
        return (1 - ratio) * (base_lr - final_lr) + final_lr

    def linear(self, progress: float) -> float:
        """The ``linear`` strategy: the decay ratio is the progress."""
        return _linear(progress)

    def cosine(self, progress: float) -> float:
        """The ``cosine`` strategy: half a cosine period, slow at both ends."""
        return _cosine(progress)

    def constant(self, progress: float) -> float:
        """The ``constant`` strategy: no decay."""
        return _constant(progress)

    def _strategy_function(self, name: str) -> Callable[[float], float] | None:
        """A public method a subclass defines under `name`, else the built-in strategy, else `None`."""
        if name.startswith("_"):
            return None
        for klass in type(self).__mro__:
            if klass is LRScheduler:
                break
            if callable(vars(klass).get(name)):
                return getattr(self, name)
        return STRATEGIES.get(name)

    def _check_strategy(self, strategy: str) -> str:
        if isinstance(strategy, str) and self._strategy_function(strategy) is not None:
            return strategy
        normalized = strategy.lower() if isinstance(strategy, str) else strategy
        if normalized in STRATEGIES:
            return normalized
        raise ValueError(f"Unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)} or a subclass method")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the scheduler's state, as returned by [`state_dict()`][torch.optim.lr_scheduler.LRScheduler.state_dict].

        Args:
            state_dict: Scheduler state.

        Raises:
            ValueError: If the state names an unknown strategy or method.
        """
        if "strategy" in state_dict:
            self._check_strategy(state_dict["strategy"])
        if "method" in state_dict:
            _check_choice(state_dict["method"], METHODS, "method")
        super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(strategy={self.strategy!r}, method={self.method!r}, "
            f"total_steps={self.total_steps}, final_lr_ratio={self.final_lr_ratio}, final_lr={self.final_lr}, "
            f"min_lr={self.min_lr}, warmup_steps={self.warmup_steps}, cooldown_steps={self.cooldown_steps})"
        )
