"""The evaluation and inference loops of a [`TorchRunner`][danling.runner.TorchRunner].

The runner holds an [`EvaluationLoops`][danling.runner.loop.evaluation.EvaluationLoops]; its `evaluate_epoch` and
`infer` delegate to it (inside the parallelism policy's evaluation context). The loops call back through the
runner's methods (`evaluate_step`, `to_device`, `autocast`, `get_epoch_result`...), so a subclass's override is
the one that runs. An evaluation calls the callbacks' `on_epoch_begin`, `on_log` and `on_evaluate_end`; inference
calls none.
"""

from __future__ import annotations

from typing import Any

import torch
from chanfig import NestedDict

from ..utils import RunnerMode
from .data import describe_loader, loader_length
from .inference import gather_predictions, infer_input, inference_loader


class EvaluationLoops:
    r"""
    Evaluation of a split and inference over a split or any data, every sample counted exactly once and in
    dataset order (the loaders come from the runner's
    [`SplitLoaders`][danling.runner.loop.loaders.SplitLoaders]).

    Args:
        runner: The runner whose model is evaluated.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from danling.runner import TorchRunner
        >>> class Runner(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.model = torch.nn.Linear(2, 1)
        ...         self.criterion = torch.nn.MSELoss()
        ...         self.datasets.val = TensorDataset(torch.randn(6, 2), torch.randn(6, 1))
        >>> runner = Runner({"log": False, "dir": tempfile.mkdtemp(), "dataloader": {"batch_size": 4}})
        >>> runner._evaluation.infer("val").shape
        torch.Size([6, 1])
        >>> sorted(runner._evaluation.evaluate_epoch("val"))[:2]
        ['compute_time', 'data_time']
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def evaluate_epoch(self, split: str) -> NestedDict:
        r"""The body of [`evaluate_epoch`][danling.runner.TorchRunner.evaluate_epoch]."""
        runner = self.runner
        loader = runner._start_epoch(split, RunnerMode.evaluate)
        runner._callbacks.dispatch("on_epoch_begin", runner, split)
        length = loader_length(loader)
        log_interval = runner.config.get("log_interval")
        first = runner.telemetry.batches_before + 1
        iteration = first - 1
        for iteration, data in enumerate(runner._iterate(loader, split, length), first):
            runner.evaluate_step(runner.to_device(data))
            if log_interval is not None and iteration % log_interval == 0:
                runner._log_step(split, iteration, length)
        if iteration < first and not runner.distributed:  # under DDP, one rank's shard may be empty
            raise ValueError(f"split {split!r} yielded no batches to evaluate ({describe_loader(loader)})")
        result = runner.get_epoch_result()
        runner._callbacks.dispatch("on_evaluate_end", runner, split, result)
        return result

    def infer(self, data: Any) -> torch.Tensor:
        r"""The body of [`infer`][danling.runner.TorchRunner.infer]."""
        runner = self.runner
        if isinstance(data, str):
            loader = runner._start_epoch(data, RunnerMode.infer)
            split = data
        else:
            options = runner.config.get("dataloader")
            pin = runner.device.type == "cuda"
            split = "infer"
            loader = inference_loader(data, options, runner.rank, runner.world_size, pin)
            loader = runner._start_epoch(split, RunnerMode.infer, loader)
        model = runner._parallel.evaluation_module(runner.model)
        outputs = []
        for batch in runner._iterate(loader, split, loader_length(loader)):
            with runner.autocast():
                outputs.append(model(infer_input(runner.to_device(batch))).float())
        return gather_predictions(outputs, runner.distributed)
