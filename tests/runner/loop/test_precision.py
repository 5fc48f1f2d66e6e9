"""Mixed precision in TorchRunner: autocast really runs, the scaler really scales."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from danling.runner.loop.precision import Precision
from danling.runner.loop.stepping import StepProbe

from ..conftest import ClassifierRunner


class DtypeProbe(nn.Module):
    """Records the dtype of its hidden activations."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(x)
        self.dtypes.append(hidden.dtype)
        return self.out(hidden)


class ProbeRunner(ClassifierRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = DtypeProbe()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), (None, torch.float32)]
)
def test_forward_runs_in_the_requested_dtype_in_training_and_evaluation(make_runner, precision, dtype):
    runner = make_runner(ProbeRunner, precision=precision, epoch_end=1)
    runner.train()
    assert set(runner.model.dtypes) == {dtype}
    assert len(runner.model.dtypes) == 5 + 2
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # master weights stay in float32


def test_autocast_is_a_real_context_manager(make_runner):
    runner = make_runner(precision="bf16")
    with runner.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_each_autocast_call_builds_a_new_torch_autocast():
    precision = Precision("bf16", "cpu")
    with precision.autocast() as first:
        pass
    with precision.autocast() as second:
        assert torch.is_autocast_enabled("cpu")
    assert second is not first
    assert type(first) is torch.autocast
    assert not torch.is_autocast_enabled("cpu")


def test_two_nested_runner_autocast_blocks_leave_autocast_off_after_both(make_runner):
    runner = make_runner(precision="bf16")
    with runner.autocast():
        with runner.autocast():
            assert torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    for _ in range(3):  # the same holds block after block
        with runner.autocast(), runner.autocast():
            pass
        assert not torch.is_autocast_enabled("cpu")


def test_a_context_the_caller_holds_is_never_handed_out_again(make_runner):
    # A pool of autocast objects handed this held one out again after its block: entering it inside the new block
    # then overwrote its saved state, and autocast stayed on after both blocks.
    runner = make_runner(precision="bf16")
    held = runner.autocast()
    with held:
        pass
    with runner.autocast() as other:
        assert other is not held
        with held:
            pass
    assert not torch.is_autocast_enabled("cpu")


def test_nested_autocast_blocks_get_their_own_context_and_restore_the_state():
    precision = Precision("fp16", "cpu")
    with precision.autocast() as outer:
        with precision.autocast() as inner:
            assert inner is not outer
            assert torch.get_autocast_dtype("cpu") == torch.float16
        assert torch.is_autocast_enabled("cpu")  # the inner block's exit restored the outer block's state
        with torch.autocast("cpu", enabled=False):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_a_context_kept_by_its_caller_nests_with_new_ones_and_restores_the_state():
    precision = Precision("bf16", "cpu")
    kept = precision.autocast()
    for _ in range(3):  # re-entering the kept context, with a new one nested inside
        with kept:
            with precision.autocast() as nested:
                assert nested is not kept
            assert torch.is_autocast_enabled("cpu")
        assert not torch.is_autocast_enabled("cpu")


def test_an_exception_inside_autocast_restores_the_state_and_returns_the_context():
    precision = Precision("bf16", "cpu")
    with pytest.raises(RuntimeError, match="boom"), precision.autocast() as context:
        raise RuntimeError("boom")
    assert not torch.is_autocast_enabled("cpu")
    with precision.autocast() as again:
        assert torch.is_autocast_enabled("cpu")
    assert again is not context


def test_autocast_contexts_in_two_threads_do_not_share_state():
    import threading

    precision = Precision("bf16", "cpu")
    inside, release, seen = threading.Barrier(2), threading.Event(), {}

    def work(name: str) -> None:
        with precision.autocast() as context:
            seen[name] = context
            inside.wait()  # both threads are inside their block at once
            release.wait()
            seen[name + " enabled"] = torch.is_autocast_enabled("cpu")
        seen[name + " after"] = torch.is_autocast_enabled("cpu")

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert seen["a"] is not seen["b"]
    assert seen["a enabled"]
    assert seen["b enabled"]
    assert not seen["a after"]
    assert not seen["b after"]


def test_fp32_autocast_is_a_fresh_no_op_that_nests():
    precision = Precision(None, "cpu")
    assert precision.autocast() is not precision.autocast()  # nothing pooled, even when it holds no state
    with precision.autocast(), precision.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_fp16_uses_an_enabled_grad_scaler_saved_in_checkpoints(make_runner):
    runner = make_runner(precision="fp16", epoch_end=1)
    assert runner.scaler.is_enabled()
    assert not make_runner(precision="bf16").scaler.is_enabled()
    runner.train()
    checkpoint = torch.load(f"{runner.checkpoint_dir}/latest.pth", weights_only=True)
    assert "scaler" in checkpoint
    assert checkpoint["scaler"]["scale"] == runner.scaler.get_scale()


def test_fp16_skips_the_step_when_gradients_overflow(make_runner):
    runner = make_runner(precision="fp16")
    runner.scheduler = torch.optim.lr_scheduler.StepLR(runner.optimizer, step_size=1, gamma=0.5)
    runner.ema = torch.optim.swa_utils.AveragedModel(runner.model)
    before = [p.detach().clone() for p in runner.model.parameters()]
    scale = runner.scaler.get_scale()
    # A finite loss whose scaled gradients overflow in float32: the scaler skips the step.
    loss = runner.model(torch.randn(2, 4)).sum() * 1e36
    runner.advance(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, runner.model.parameters()))
    assert runner.scaler.get_scale() < scale
    assert runner.steps == 0  # a skipped step is not a step
    assert runner.scheduler.last_epoch == 0
    assert runner.optimizer.param_groups[0]["lr"] == 0.1
    assert int(runner.ema.n_averaged) == 0
    runner.advance(runner.model(torch.randn(2, 4)).sum())
    assert runner.steps == 1
    assert runner.scheduler.last_epoch == 1
    assert int(runner.ema.n_averaged) == 1


class HooklessSGD:
    # An optimizer-like object without `register_step_post_hook`: the runner cannot watch its steps.
    def __init__(self, parameters, lr: float) -> None:
        self.inner = torch.optim.SGD(parameters, lr=lr)
        self.param_groups = self.inner.param_groups

    def step(self) -> None:
        self.inner.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("kind", ["fused", "without hooks"])
def test_fp16_finds_skipped_steps_of_optimizers_it_cannot_watch(make_runner, kind):
    # A fused optimizer unscales inside its own step (which runs, and calls its hooks, even when skipping); an
    # optimizer without post-step hooks says nothing. For both the scale is compared before and after the update.
    runner = make_runner(precision="fp16")
    parameters = list(runner.model.parameters())
    fused = kind == "fused"
    runner.optimizer = torch.optim.SGD(parameters, lr=0.1, fused=True) if fused else HooklessSGD(parameters, 0.1)
    before = [p.detach().clone() for p in parameters]
    runner.advance(runner.model(torch.randn(2, 4)).sum() * 1e36)  # scaled gradients overflow: skipped
    assert all(torch.equal(a, b) for a, b in zip(before, parameters))
    assert runner.steps == 0
    runner.advance(runner.model(torch.randn(2, 4)).sum())
    assert runner.steps == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, parameters))


def count_item_calls(monkeypatch, action) -> int:
    calls = []
    item = torch.Tensor.item

    def counting_item(self):
        calls.append(1)
        return item(self)

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", counting_item)
        action()
    return len(calls)


def test_detecting_skipped_fp16_steps_adds_no_synchronisation(make_runner, monkeypatch):
    runner = make_runner(precision="fp16")
    runner.scheduler = torch.optim.lr_scheduler.StepLR(runner.optimizer, step_size=1, gamma=0.5)
    x = torch.randn(2, 4)
    scaler = torch.amp.GradScaler("cpu")
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def by_hand():  # the loop one would write: scale, backward, step, update
        scaler.scale(model(x).sum()).backward()
        scaler.step(optimizer)
        scaler.update()

    def with_the_runner():
        runner.advance(runner.model(x).sum())

    assert count_item_calls(monkeypatch, with_the_runner) == count_item_calls(monkeypatch, by_hand)
    assert runner.steps == 1


def spy_on_step_post_hooks(optimizer: torch.optim.Optimizer) -> list:
    # The handles of the post-step hooks registered on `optimizer` from now on.
    handles = []
    register = optimizer.register_step_post_hook

    def registering(hook):
        handles.append(register(hook))
        return handles[-1]

    optimizer.register_step_post_hook = registering
    return handles


def is_registered(handle) -> bool:
    hooks = handle.hooks_dict_ref()
    return hooks is not None and handle.id in hooks


def test_closing_the_runner_removes_the_hook_it_put_on_the_optimizer(make_runner):
    runner = make_runner(precision="fp16", epoch_end=1)
    handles = spy_on_step_post_hooks(runner.optimizer)
    runner.train()
    assert len(handles) == 1
    assert is_registered(handles[0])
    runner.close()
    assert not is_registered(handles[0])
    runner.close()  # closing again is fine
    runner.optimizer.step()  # the optimizer still works on its own


def test_a_replaced_optimizer_loses_the_runners_hook(make_runner):
    runner = make_runner(precision="fp16")
    handles = spy_on_step_post_hooks(runner.optimizer)
    runner.advance(runner.model(torch.randn(2, 4)).sum())
    runner.optimizer = torch.optim.SGD(runner.model.parameters(), lr=0.1)
    handles_of_second = spy_on_step_post_hooks(runner.optimizer)
    runner.advance(runner.model(torch.randn(2, 4)).sum())
    assert runner.steps == 2
    assert [is_registered(handle) for handle in handles + handles_of_second] == [False, True]
    runner.close()
    assert not is_registered(handles_of_second[0])


def test_an_optimizer_whose_step_takes_the_scaler_is_watched_through_the_scale():
    class ScalerAwareSGD(torch.optim.SGD):
        def step(self, closure=None, grad_scaler=None):  # GradScaler passes itself: the step runs either way
            return super().step(closure)

    probe = StepProbe()
    probe.attach(ScalerAwareSGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    assert probe.blind
    probe.attach(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    assert not probe.blind
    probe.detach()


def test_a_collapsing_fp16_scale_raises_naming_the_step_and_the_scale(make_runner):
    runner = make_runner(precision="fp16")
    runner.scaler.scale(torch.ones(()))  # the scaler creates its scale lazily
    runner.scaler.update(new_scale=1.5e-4)
    with pytest.raises(FloatingPointError, match=r"scale collapsed to 7\.5e-05 .*at step 1, after 0 optimizer"):
        runner.advance(runner.model(torch.randn(2, 4)).sum() * float("inf"))


def test_a_skipped_fp16_step_that_leaves_the_scale_above_the_floor_does_not_raise(make_runner):
    runner = make_runner(precision="fp16")
    runner.scaler.scale(torch.ones(()))
    runner.scaler.update(new_scale=2.5e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.advance(runner.model(torch.randn(2, 4)).sum() * float("inf"))  # halved to 1.25e-4: still above
    assert runner.scaler.get_scale() == pytest.approx(1.25e-4)
    with pytest.raises(FloatingPointError, match=r"6\.25e-05"):
        runner.advance(runner.model(torch.randn(2, 4)).sum() * float("inf"))
    assert runner.steps == 0


@pytest.mark.parametrize("precision", ["fp8", "float64", "amp"])
def test_unknown_precision_names_the_accepted_values(make_runner, precision):
    with pytest.raises(ValueError, match=precision) as error:
        make_runner(precision=precision)
    assert "bf16" in str(error.value)
    assert "fp16" in str(error.value)


def test_precision_aliases():
    assert Precision("bfloat16", "cpu").dtype is torch.bfloat16
    assert Precision("half", "cpu").dtype is torch.float16
    assert Precision("fp32", "cpu").enabled is False
    assert Precision(None, "cpu").enabled is False
