from __future__ import annotations

from typing import Any

import chanfig
import pytest
import torch
from torch.optim import lr_scheduler

import danling.optim.lr_scheduler.registry
import danling.optim.registry
from danling.metrics.registry import METRICS
from danling.optim import OPTIMIZERS, SCHEDULERS, LRScheduler
from danling.optim._registry import Registry, UnexpectedArgumentError, check_arguments

# Extra constructor arguments some schedulers need.
SCHEDULER_KWARGS: dict[str, dict[str, Any]] = {
    "lambda": {"lr_lambda": lambda step: 1.0},
    "multiplicative": {"lr_lambda": lambda step: 0.9},
    "step": {"step_size": 10},
    "multistep": {"milestones": [10, 20]},
    "multi_step": {"milestones": [10, 20]},
    "exponential": {"gamma": 0.9},
    "cosine_annealing": {"T_max": 10},
    "cosine_annealing_warm_restarts": {"T_0": 10},
    "cosine_warm_restarts": {"T_0": 10},
    "cyclic": {"base_lr": 0.01, "max_lr": 0.1},
    "one_cycle": {"max_lr": 0.1},
}


def make_params() -> list[torch.Tensor]:
    # A single 2-D tensor suits every optimizer, Muon included.
    return [torch.zeros(2, 2, requires_grad=True)]


def make_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(make_params(), lr=0.1, momentum=0.9)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer) -> Any:
    kwargs = dict(SCHEDULER_KWARGS.get(name, {}))
    if name == "sequential":
        kwargs = {"schedulers": [lr_scheduler.ConstantLR(optimizer), lr_scheduler.ExponentialLR(optimizer, 0.9)]}
        kwargs["milestones"] = [5]
    return SCHEDULERS.build(optimizer, total_steps=100, type=name, **kwargs)


def test_public_module_paths() -> None:
    assert danling.optim.registry.OPTIMIZERS is OPTIMIZERS
    assert danling.optim.lr_scheduler.registry.SCHEDULERS is SCHEDULERS
    assert danling.optim.lr_scheduler.LRScheduler is LRScheduler


def test_every_torch_optimizer_is_registered() -> None:
    expected = {"sgd", "adam", "adamw", "adafactor", "rmsprop", "torch_adam", "torch_adamw"}
    for name in torch.optim.__all__:
        component = getattr(torch.optim, name)
        if isinstance(component, type) and issubclass(component, torch.optim.Optimizer):
            expected.add(name.lower())
    expected.discard("optimizer")
    assert expected <= set(OPTIMIZERS.names())
    assert OPTIMIZERS.lookup("torch_adam") is torch.optim.Adam
    assert OPTIMIZERS.lookup("torch_adamw") is torch.optim.AdamW


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_name_builds(name: str) -> None:
    optimizer = OPTIMIZERS.build(params=make_params(), type=name, lr=0.01)
    assert isinstance(optimizer, OPTIMIZERS.lookup(name))
    assert optimizer.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("name", ["AdamW", "ADAMW", "adamw", "AdAmW"])
def test_optimizer_lookup_is_case_insensitive(name: str) -> None:
    assert OPTIMIZERS.lookup(name) is torch.optim.AdamW
    assert type(OPTIMIZERS.build(params=make_params(), type=name)) is torch.optim.AdamW


def test_optimizer_builds_from_config_section() -> None:
    config = chanfig.Config()
    config.optim = {"type": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    config.sched = {"type": "cosine", "final_lr_ratio": 1e-2}
    model = torch.nn.Linear(3, 2)
    optimizer = OPTIMIZERS.build(params=model.parameters(), **config.optim)
    scheduler = SCHEDULERS.build(optimizer, total_steps=100, **config.sched)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["weight_decay"] == 0.05
    assert isinstance(scheduler, LRScheduler)
    assert (scheduler.strategy, scheduler.total_steps, scheduler.final_lr_ratio) == ("cosine", 100, 1e-2)
    assert config.optim.type == "adamw"  # the section itself is left untouched


def test_build_accepts_the_mapping_itself() -> None:
    section = chanfig.Config(type="SGD", lr=0.5)
    optimizer = OPTIMIZERS.build(section, params=make_params())
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.5
    assert section.type == "SGD"


@pytest.mark.parametrize("registry", [OPTIMIZERS, SCHEDULERS])
def test_unknown_name_is_a_clear_error(registry: Any) -> None:
    with pytest.raises(KeyError) as info:
        registry.lookup("no_such_thing")
    message = str(info.value)
    assert "no_such_thing" in message
    assert registry.names()[0] in message
    with pytest.raises(ValueError, match="no_such_thing"):
        registry.build(make_optimizer(), type="no_such_thing")


def test_misspelt_keyword_is_not_silently_dropped() -> None:
    with pytest.raises(TypeError):
        OPTIMIZERS.build(params=make_params(), type="sgd", lr=0.1, momentun=0.9)
    with pytest.raises(TypeError):
        SCHEDULERS.build(make_optimizer(), total_steps=10, type="cosine", warmup_step=2)


@pytest.mark.parametrize(
    "name", ["step", "multistep", "exponential", "cosine_annealing", "reduce_on_plateau", "one_cycle", "cyclic"]
)
def test_reference_scheduler_names_exist(name: str) -> None:
    assert name in SCHEDULERS.names()


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_name_builds_and_steps(name: str) -> None:
    optimizer = make_optimizer()
    scheduler = build_scheduler(name, optimizer)
    optimizer.step()
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)
    else:
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] >= 0


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "Cosine", "LINEAR"])
def test_our_strategies_build_our_scheduler(name: str) -> None:
    scheduler = SCHEDULERS.build(make_optimizer(), total_steps=40, type=name, warmup_steps=4)
    assert type(scheduler) is LRScheduler
    assert scheduler.strategy == name.lower()
    assert (scheduler.total_steps, scheduler.warmup_steps) == (40, 4)


@pytest.mark.parametrize(("name", "cls"), [("constant_lr", "ConstantLR"), ("linear_lr", "LinearLR")])
def test_torch_constant_and_linear_do_not_shadow_ours(name: str, cls: str) -> None:
    assert SCHEDULERS.lookup(name) is getattr(lr_scheduler, cls)


def test_total_steps_reaches_schedulers_that_take_it() -> None:
    scheduler = SCHEDULERS.build(make_optimizer(), total_steps=123, type="one_cycle", max_lr=0.1)
    assert scheduler.total_steps == 123


def test_total_steps_is_dropped_for_schedulers_without_it() -> None:
    scheduler = SCHEDULERS.build(make_optimizer(), total_steps=123, type="step", step_size=3)
    assert type(scheduler) is lr_scheduler.StepLR


def test_unknown_section_key_names_key_builder_parameters_and_closest_name() -> None:
    # What `--sched.warmup 5` gives: the key is checked before LRScheduler runs.
    with pytest.raises(UnexpectedArgumentError) as info:
        SCHEDULERS.build(make_optimizer(), type="cosine", total_steps=10, warmup=5)
    error = info.value
    assert isinstance(error, TypeError)
    message = str(error)
    assert "'warmup'" in message
    assert "LRScheduler (scheduler 'cosine')" in message
    assert "Did you mean 'warmup_steps'?" in message
    assert "It accepts: optimizer, total_steps, final_lr_ratio," in message
    assert (error.unexpected, error.suggestions()) == (["warmup"], {"warmup": "warmup_steps"})


def test_unknown_keys_of_torch_components() -> None:
    with pytest.raises(TypeError, match=r"SGD \(optimizer 'sgd'\) got unexpected argument 'momentun'\. Did you mean"):
        OPTIMIZERS.build(params=make_params(), type="sgd", momentun=0.9)
    with pytest.raises(TypeError, match=r"StepLR \(scheduler 'step'\).*'gama'.*'gamma'"):
        SCHEDULERS.build(make_optimizer(), total_steps=10, type="step", step_size=2, gama=0.5)
    with pytest.raises(TypeError, match=r"MultiStepLR \(scheduler 'multistep / multi_step'\)"):
        SCHEDULERS.build(make_optimizer(), type="multistep", milestones=[2], gama=0.5)


def test_key_check_applies_to_config_mappings() -> None:
    section = chanfig.Config(type="cosine_with_warmup", warmup=3)
    with pytest.raises(TypeError, match=r"CosineWithWarmupLR \(scheduler 'cosine_with_warmup'\).*'warmup_steps'"):
        SCHEDULERS.build(section, make_optimizer(), total_steps=10)


def test_several_unknown_keys_are_all_named() -> None:
    with pytest.raises(TypeError) as info:
        SCHEDULERS.build(make_optimizer(), type="linear", total_steps=10, warmup=1, zzz=2)
    message = str(info.value)
    assert "unexpected arguments 'warmup', 'zzz'" in message
    assert "'warmup' -> 'warmup_steps'" in message
    assert "'zzz' ->" not in message


def test_errors_inside_a_constructor_are_not_rewritten() -> None:
    with pytest.raises(TypeError) as info:
        SCHEDULERS.build(object(), type="step", step_size=2)  # torch: not an Optimizer
    assert type(info.value) is TypeError
    with pytest.raises(ValueError, match="total_steps"):
        SCHEDULERS.build(make_optimizer(), type="cosine", total_steps=0)


def test_components_taking_kwargs_or_without_signature_are_not_checked() -> None:
    registry = Registry()
    registry.register(lambda **kwargs: kwargs, "anything")
    registry.register(dict, "dict")  # a builtin: inspect.signature fails
    assert registry.build(type="anything", whatever=1) == {"whatever": 1}
    assert registry.build(type="dict", whatever=1) == {"whatever": 1}


def test_check_arguments_outside_a_registry() -> None:
    def scale(x, /, factor=2, *, offset=0):
        return x * factor + offset

    check_arguments(scale, (1,), {"factor": 3, "offset": 1})
    with pytest.raises(
        UnexpectedArgumentError, match=r"^.*scale got unexpected argument 'x'.*accepts: factor, offset\.$"
    ):
        check_arguments(scale, (), {"x": 1})  # positional-only
    with pytest.raises(UnexpectedArgumentError) as info:
        Registry.init(scale, 1, offest=1)
    assert info.value.registered_as is None
    assert "Did you mean 'offset'?" in str(info.value)


def test_metrics_registry_checks_keys_too() -> None:
    def accuracy_only(threshold=0.5):
        return threshold

    with pytest.raises(UnexpectedArgumentError, match="'treshold'.*'threshold'"):
        METRICS.init(accuracy_only, treshold=0.3)
    assert isinstance(METRICS, Registry)
    assert METRICS.lookup("MultiClass") is METRICS.lookup("multiclass")
