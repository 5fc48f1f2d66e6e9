"""
Parallelism policy of `TorchRunner`: how the model is compiled, wrapped (DDP) or sharded (FSDP2), how gradients
skip synchronisation inside an accumulation window, how evaluation runs, and how states are exported and imported.

The runner holds one [`DataParallel`][danling.runner.distributed.parallel.DataParallel] or
[`FullyShardedDataParallel`][danling.runner.distributed.parallel.FullyShardedDataParallel] (chosen by
`config.strategy`) and
delegates to it; nothing here reads the runner's attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import wraps
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpointing import files as ckpt
from .recompute import ActivationCheckpointing

STRATEGIES = ("ddp", "fsdp")


def build_parallelism(config: Mapping, precision_dtype: torch.dtype | None = None) -> DataParallel:
    r"""
    The parallelism policy for `config.strategy` (`"ddp"`, the default, or `"fsdp"`), `config.compile`,
    `config.fsdp` and `config.activation_checkpointing`.

    Args:
        config: The runner's config (read with `get`).
        precision_dtype: The autocast dtype (`torch.bfloat16`, `torch.float16`) or `None` for float32.

    Returns:
        The policy object.

    Raises:
        ValueError: If `strategy` is not one of `"ddp"`, `"fsdp"`, or `fsdp` is combined with `fp16`.

    Examples:
        >>> type(build_parallelism({})).__name__
        'DataParallel'
        >>> type(build_parallelism({"strategy": "FSDP"})).__name__
        'FullyShardedDataParallel'
        >>> build_parallelism({"strategy": "zero3"})
        Traceback (most recent call last):
        ValueError: unknown strategy 'zero3'; accepted values are 'ddp', 'fsdp'
    """
    strategy = config.get("strategy")
    name = "ddp" if strategy is None else str(strategy).lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; accepted values are {', '.join(map(repr, STRATEGIES))}")
    compile_options = compile_arguments(config.get("compile"), config.get("compile_options"))
    fsdp_options = config.get("fsdp") or {}
    recompute = ActivationCheckpointing(config.get("activation_checkpointing"), fsdp_options.get("shard_modules"))
    if name == "ddp":
        return DataParallel(compile_options, recompute)
    if precision_dtype is torch.float16:
        raise ValueError(
            "strategy 'fsdp' does not support precision 'fp16' (the gradient scaler needs unsharded gradients); "
            "use precision 'bf16' or None"
        )
    return FullyShardedDataParallel(compile_options, fsdp_options.get("shard_modules"), precision_dtype, recompute)


def compile_arguments(setting: Any, options: Mapping | None = None) -> dict[str, Any] | None:
    r"""
    Keyword arguments of `torch.compile` from `config.compile` (`None`/`False`: off, `True`: on) and
    `config.compile_options` (a mapping such as `{"mode": "max-autotune", "backend": "aot_eager"}`).

    `compile` is declared a boolean in [`Config`][danling.runner.Config], so options live in their own key. A
    mapping given as `compile` itself (possible with a plain mapping config) is read as the options.

    Raises:
        ValueError: If `setting` is of another type, or `options` is not a mapping.

    Examples:
        >>> compile_arguments(None), compile_arguments(True), compile_arguments(True, {"backend": "eager"})
        (None, {}, {'backend': 'eager'})
        >>> compile_arguments(False, {"backend": "eager"}) is None
        True
    """
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"compile_options is set to {options!r}; it must be a mapping of torch.compile arguments")
    if setting is None or setting is False:
        return None
    if setting is True:
        return dict(options or {})
    if isinstance(setting, Mapping):
        return {**dict(options or {}), **dict(setting)}
    raise ValueError(f"compile is set to {setting!r}; accepted values are True, False, None or a mapping of options")


def evaluation_context(method: Callable) -> Callable:
    r"""
    Run a runner's evaluation or inference method inside its policy's
    [`evaluation`][danling.runner.distributed.parallel.DataParallel.evaluation] context (`torch.inference_mode()` under
    DDP).
    """

    @wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._parallel.evaluation(self.model):
            return method(self, *args, **kwargs)

    return wrapper


class DataParallel:
    r"""
    The `"ddp"` strategy: the model (compiled when `config.compile` says so) is wrapped in
    `DistributedDataParallel` when several processes run; every rank holds the whole model.

    Args:
        compile_options: Keyword arguments of `torch.compile`, or `None` not to compile.
        recompute: The blocks that recompute their activations (applied first), or `None`.

    Examples:
        >>> policy = DataParallel(None)
        >>> model = policy.wrap(nn.Linear(2, 2), torch.device("cpu"), None)
        >>> type(model).__name__, policy.evaluation_module(model) is model
        ('Linear', True)
    """

    name = "ddp"
    # Whether gradients left unreduced by `no_sync` in a window cut short by the epoch can be averaged afterwards
    # (DDP: an all-reduce at the flush); when not, unsized loaders synchronise every micro-step.
    reduces_cut_windows = True

    def __init__(
        self, compile_options: dict[str, Any] | None = None, recompute: ActivationCheckpointing | None = None
    ) -> None:
        self.compile_options = compile_options
        self.recompute = recompute

    def wrap(self, model: nn.Module, device: torch.device, optimizer: Any) -> nn.Module:
        r"""
        Make its blocks recompute their activations (`activation_checkpointing`), compile `model` (when enabled),
        then wrap it in `DistributedDataParallel` when distributed.

        Args:
            model: The model, already on `device`.
            device: The device of this process.
            optimizer: The optimizer built on `model`'s parameters (unchanged by DDP).

        Returns:
            The model to train.
        """
        if self.recompute is not None:
            self.recompute.apply(model)
        model = self._compile(model)
        if _multi_process() and not isinstance(model, DistributedDataParallel):
            device_ids = [device.index] if device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    def _compile(self, model: nn.Module) -> nn.Module:
        if self.compile_options is None or hasattr(model, "_orig_mod"):
            return model
        return torch.compile(model, **self.compile_options)

    def wrap_ema(self, ema: nn.Module) -> nn.Module:
        r"""The EMA model, made equal to rank 0's (each rank then updates its full copy identically). Collective."""
        if _multi_process():
            broadcast_from_rank0(ema)
        return ema

    def no_sync(self, model: nn.Module) -> AbstractContextManager:
        r"""Context for a micro-step that must not synchronise gradients: `model.no_sync()` when it has one (DDP)."""
        # Looked up on the class: a plain module's `__getattr__` would raise (and catch) an AttributeError per call.
        return nullcontext() if getattr(type(model), "no_sync", None) is None else model.no_sync()

    @staticmethod
    def evaluation_module(model: nn.Module) -> nn.Module:
        r"""The module evaluation and inference call: without DDP (no collectives per batch), still compiled."""
        while isinstance(model, DistributedDataParallel):
            model = model.module
        return model

    def evaluation(self, model: nn.Module | None) -> AbstractContextManager:
        r"""Context of evaluation and inference loops: `torch.inference_mode()`."""
        return torch.inference_mode()

    def export_state(self, state: dict[str, Any], model: Any, optimizer: Any, ema: Any) -> None:
        r"""Replace the model, optimizer and EMA parts of a checkpoint with their full state (nothing to do here)."""

    def import_state(self, state: Mapping, model: Any, optimizer: Any, ema: Any) -> Mapping:
        r"""Load sharded parts of a checkpoint; returns what the ordinary loading code still has to load."""
        return state

    def load_model_state(self, model: nn.Module, state: Mapping) -> None:
        r"""Load a full (unsharded, clean-named) model state dict into the wrapped `model`."""
        _unwrapped(model).load_state_dict(state)


class FullyShardedDataParallel(DataParallel):
    r"""
    The `"fsdp"` strategy (FSDP2, `torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer
    states are sharded over the ranks.

    Sharding applies `fully_shard` to every submodule whose class name is in `config.fsdp.shard_modules`
    (default: the class names in `model._no_split_modules` when the model declares them, else every module held
    in an `nn.ModuleList`: the model's blocks), then to the root. Under `bf16` parameters are all-gathered in
    bfloat16 and gradients reduced in float32 (`MixedPrecisionPolicy`). Inside an accumulation window gradients
    are neither reduced nor resharded until the last micro-step. In a single process nothing is sharded.

    `state_dict()` gathers the full (unsharded) state to CPU on rank 0, the same format as under DDP; checkpoints
    saved by the runner are sharded `torch.distributed.checkpoint` directories instead (see
    [`ShardedCheckpointManager`][danling.runner.checkpointing.ShardedCheckpointManager]), which either strategy
    resumes. Both are collectives: call `state_dict()`/`save_checkpoint()` on every rank.

    Args:
        compile_options: Keyword arguments of `torch.compile`, or `None`.
        shard_modules: Class names of the submodules to shard separately, or `None` for the default policy.
        precision_dtype: The autocast dtype, or `None`.
        recompute: The blocks that recompute their activations (applied before sharding), or `None`.
    """

    name = "fsdp"
    reduces_cut_windows = False

    def __init__(
        self,
        compile_options: dict[str, Any] | None = None,
        shard_modules: Sequence[str] | None = None,
        precision_dtype: torch.dtype | None = None,
        recompute: ActivationCheckpointing | None = None,
    ) -> None:
        super().__init__(compile_options, recompute)
        if isinstance(shard_modules, str):
            shard_modules = [shard_modules]
        self.shard_modules = None if shard_modules is None else list(shard_modules)
        self.precision_dtype = precision_dtype
        self.sharded = False

    def wrap(self, model: nn.Module, device: torch.device, optimizer: Any) -> nn.Module:
        r"""
        Make its blocks recompute their activations (`activation_checkpointing`), shard `model` (blocks, then the
        root), point `optimizer` at the sharded parameters, then compile.

        Returns:
            The model to train (the sharded module, compiled when enabled).
        """
        if self.recompute is not None:
            self.recompute.apply(model)
        if not _multi_process():
            return self._compile(model)
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        broadcast_from_rank0(model)  # as DDP does: every rank starts from the model rank 0 built
        self._shard(model, device)
        self.sharded = True
        if optimizer is not None:
            _rebind_optimizer(optimizer, names, dict(model.named_parameters()))
        return self._compile(model)

    def _shard(self, model: nn.Module, device: torch.device) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        options: dict[str, Any] = {"mesh": mesh}
        if self.precision_dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.precision_dtype, reduce_dtype=torch.float32)
        for block in reversed(shard_targets(model, self.shard_modules)):  # FSDP2 shards nested modules bottom-up
            fully_shard(block, **options)
        fully_shard(model, **options)

    def wrap_ema(self, ema: nn.Module) -> nn.Module:
        r"""Shard the EMA copy like the model, so its update is local to each rank's shards."""
        if not self.sharded:
            return ema
        broadcast_from_rank0(ema)
        inner = ema.module if isinstance(getattr(ema, "module", None), nn.Module) else ema
        parameter = next(inner.parameters(), None) if isinstance(inner, nn.Module) else None
        if parameter is not None:
            self._shard(inner, parameter.device)
        return ema

    def no_sync(self, model: nn.Module) -> AbstractContextManager:
        r"""Context for a non-final micro-step: no gradient reduce-scatter and no resharding after backward."""
        if not self.sharded:
            return nullcontext()
        return _SkipGradientSync(_orig_module(model))

    @staticmethod
    def evaluation_module(model: nn.Module) -> nn.Module:
        r"""The module evaluation calls: the sharded (and compiled) model itself."""
        return model

    def evaluation(self, model: nn.Module | None) -> AbstractContextManager:
        r"""
        `torch.no_grad()` (FSDP cannot all-gather into inference tensors) with every sharded module gathered
        once, so ranks whose evaluation shards differ by a batch run no per-batch collectives. Collective.
        """
        if not self.sharded or model is None:
            return torch.inference_mode()
        return _gathered(_orig_module(model))

    def export_state(self, state: dict[str, Any], model: Any, optimizer: Any, ema: Any) -> None:
        r"""
        Put the full model, optimizer and EMA states (CPU, on rank 0; empty elsewhere) into `state`. Collective.
        """
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        module = _orig_module(model)
        state[ckpt.MODEL] = get_model_state_dict(module, options=options)
        if optimizer is not None:
            state[ckpt.OPTIMIZER] = _full_optimizer_state(module, optimizer, options)
        if ema is not None:
            state[ckpt.EMA] = get_model_state_dict(ema, options=options)

    def import_state(self, state: Mapping, model: Any, optimizer: Any, ema: Any) -> Mapping:
        r"""
        Shard the full states of a checkpoint into the model, optimizer and EMA, and return the checkpoint with
        those parts replaced by the loaded shards (so loading them again changes nothing).
        """
        if not self.sharded:
            return state
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True)
        module = _orig_module(model)
        state = dict(state)
        set_model_state_dict(module, ckpt.extract_model_state(state), options=options)
        state[ckpt.MODEL] = module.state_dict()
        if optimizer is not None and ckpt.OPTIMIZER in state:
            _load_full_optimizer_state(module, optimizer, state[ckpt.OPTIMIZER], options)
            state[ckpt.OPTIMIZER] = optimizer.state_dict()
        if ema is not None and ckpt.EMA in state:
            set_model_state_dict(ema, state[ckpt.EMA], options=options)
            state[ckpt.EMA] = ema.state_dict()
        return state

    def load_model_state(self, model: nn.Module, state: Mapping) -> None:
        r"""Shard a full model state dict into the sharded `model` (every rank passes the full state)."""
        if not self.sharded:
            super().load_model_state(model, state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(_orig_module(model), state, options=StateDictOptions(full_state_dict=True))


def shard_targets(model: nn.Module, class_names: Sequence[str] | None) -> list[nn.Module]:
    r"""
    The submodules to shard separately, in `model.modules()` order (outer before inner; they are sharded in
    reverse, inner first, as FSDP2 requires for nested modules).

    Args:
        model: The model.
        class_names: Class names to match, or `None`: `model._no_split_modules` if set, else every module held
            in an `nn.ModuleList`.

    Raises:
        ValueError: If a class name matches no submodule.

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.ReLU()]))
        >>> [type(m).__name__ for m in shard_targets(model, None)]
        ['Linear', 'ReLU']
        >>> [type(m).__name__ for m in shard_targets(model, ["Linear"])]
        ['Linear', 'Linear']
    """
    if class_names is None:
        class_names = getattr(model, "_no_split_modules", None)
    if class_names is None:
        return [child for module in model.modules() if isinstance(module, nn.ModuleList) for child in module]
    names = set(class_names)
    targets = [module for module in model.modules() if module is not model and type(module).__name__ in names]
    found = {type(module).__name__ for module in targets}
    missing = sorted(names - found)
    if missing:
        present = sorted({type(module).__name__ for module in model.modules()})
        raise ValueError(f"fsdp.shard_modules names {missing}, which match no submodule; the model has {present}")
    return targets


class _SkipGradientSync:
    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.set_requires_gradient_sync(False)
        self.module.set_reshard_after_backward(False)

    def __exit__(self, *exc: Any) -> None:
        self.module.set_requires_gradient_sync(True)
        self.module.set_reshard_after_backward(True)


@contextmanager
def _gathered(model: nn.Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule

    modules = [module for module in model.modules() if isinstance(module, FSDPModule)]
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
        stack.callback(_reshard, modules)
        for module in modules:
            module.unshard()
        yield


def _reshard(modules: list[nn.Module]) -> None:
    for module in modules:
        module.reshard()
        module.set_reshard_after_forward(module is not modules[0], recurse=False)


def broadcast_from_rank0(module: nn.Module) -> None:
    r"""
    Overwrite `module`'s parameters and buffers with rank 0's, in place (a no-op in a single process). Collective.
    """
    if not _multi_process():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type != "meta":
                dist.broadcast(tensor, src=0)


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _unwrapped(model: nn.Module) -> nn.Module:
    return _orig_module(DataParallel.evaluation_module(model))


def _orig_module(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _rebind_optimizer(optimizer: Any, names: dict[int, str], parameters: dict[str, nn.Parameter]) -> None:
    # fully_shard replaces every parameter by a sharded one: the optimizer must step the new ones.
    for group in optimizer.param_groups:
        if any(id(parameter) not in names for parameter in group["params"]):
            raise ValueError(
                "under strategy 'fsdp' the optimizer may only hold parameters of the model (they are sharded and "
                "saved with it); register other learnable tensors as parameters of the model, or use strategy 'ddp'"
            )
        group["params"] = [parameters[names[id(parameter)]] for parameter in group["params"]]


def _parameter_names(module: nn.Module, optimizer: Any) -> list[str]:
    # Names of the optimizer's parameters, in the order `optimizer.state_dict()` numbers them.
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def _full_optimizer_state(module: nn.Module, optimizer: Any, options: Any) -> dict[str, Any]:
    # The full state keyed by parameter names, renumbered as a plain `optimizer.state_dict()` numbers it.
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(module, optimizer, options=options)
    if not full:
        return full
    index = {name: position for position, name in enumerate(_parameter_names(module, optimizer))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in full["param_groups"]]
    return {"state": {index[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def _load_full_optimizer_state(module: nn.Module, optimizer: Any, state: Mapping, options: Any) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _parameter_names(module, optimizer)
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]]
    by_name = {"state": {names[index]: value for index, value in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(module, optimizer, by_name, options=options)


def unwrap_model(model: Any) -> Any:
    r"""
    The model inside `DistributedDataParallel` and `torch.compile` wrappers (any nesting of them).

    Examples:
        >>> linear = nn.Linear(1, 1)
        >>> unwrap_model(linear) is linear
        True
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
