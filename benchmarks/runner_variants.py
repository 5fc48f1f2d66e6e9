"""
Reduced runners for `bench_runner.py --runner-variant`: each drops one layer of `TorchRunner`'s per-batch work, so
the overhead can be split between the step, the log lines and the epoch loop.

- `full`: the runner as a user has it (the default).
- `hand-step`: `train_step` replaced by the hand-written step (forward, loss, backward, optimizer step, zero the
  gradients), keeping the loss meter and the step count; the runner's `train_epoch` (telemetry, log lines, step
  boundary checks) is unchanged.
- `hand-step-no-log`: the same without step log lines.
- `loop-in-runner`: the hand-written loop's epoch (`bench_runner.loop_epoch`, with autocast, the scaler and
  accumulation as the scenario asks) over the runner's own loader, inside the runner's process: what is left is the
  process (imports, memory layout), not the runner's code.

Only `fp32` without accumulation is meaningful for the hand-step variants (they do no autocast or accumulation);
`loop-in-runner` runs the loop's own epoch (`bench_runner.loop_epoch`) for the runner's scenario, so it is meaningful
for every scenario.
"""

from __future__ import annotations

from typing import Any

VARIANTS = ("full", "hand-step", "hand-step-no-log", "loop-in-runner")


def variant_config(variant: str) -> dict[str, Any]:
    r"""Config keys a variant sets: no step log lines for the last two."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown runner variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return {"log_interval": 10**9} if variant in ("hand-step-no-log", "loop-in-runner") else {}


def variant_base(variant: str) -> type:
    r"""The `TorchRunner` subclass the benchmark's runner derives from for `variant` (imports torch)."""
    import danling as dl

    if variant == "full":
        return dl.TorchRunner
    return _build()["loop-in-runner" if variant == "loop-in-runner" else "hand-step"]


def loop_scenario(config: Any) -> str:
    r"""
    The `bench_runner` scenario a runner config describes: `accum`, `bf16`, `fp16` or `fp32`.

    Examples:
        >>> loop_scenario({"accum_steps": 4}), loop_scenario({"precision": "bf16"}), loop_scenario({})
        ('accum', 'bf16', 'fp32')
    """
    if config.get("accum_steps", 1) > 1:
        return "accum"
    precision = config.get("precision")
    return precision if precision in ("bf16", "fp16") else "fp32"


def _build() -> dict[str, type]:
    # Built on first use, so that importing this module (the benchmark's parent process does) needs no torch.
    import torch
    from chanfig import NestedDict

    import danling as dl
    from danling.runner import RunnerMode
    from danling.runner.stepping import count_step

    class HandStep(dl.TorchRunner):
        def train_step(self, data: Any) -> Any:
            input, target = data
            loss = self.criterion(self.model(input), target)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._loss_meter.update(loss, n=target.shape[0])
            count_step(self.config)
            return None, loss

    class LoopInRunner(dl.TorchRunner):
        def train_epoch(self, split: str = "train") -> NestedDict:
            from bench_runner import loop_epoch

            loader = self._start_epoch(split, RunnerMode.train)  # seeds the shuffling as the runner does
            scenario = loop_scenario(self.config)
            if getattr(self, "_loop_scaler", None) is None:  # one scaler for the run, as the loop has
                self._loop_scaler = torch.amp.GradScaler("cpu", enabled=scenario == "fp16")
            loss, steps = loop_epoch(self.model, self.criterion, self.optimizer, self._loop_scaler, loader, scenario)
            self.config["steps"] = self.steps + steps
            return NestedDict({"loss": loss})

    return {"hand-step": HandStep, "loop-in-runner": LoopInRunner}
