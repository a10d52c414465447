"""Fault injection: a step that raises anywhere leaves the model and the optimizer exactly as they were.

For every model family of `hardening` and both optimizers, an exception is raised

* in the forward of every module in turn, before it runs and after it ran (a BatchNorm has
  updated its running statistics by then);
* in the backward pass, when it reaches each module's output;
* in the reward (``LFPOptimizer``) or the loss (``DropInLFPOptimizer``);
* at every single torch function call the step makes up to and including the backward pass (the
  small families), and from there up to the base optimizer's step (the CNN, with and without
  clipping), and in a step pre-hook of the base optimizer;
* ``KeyboardInterrupt`` in the middle of a forward, of either optimizer.

After each fault the suites compare a bit-exact `hardening.Snapshot` (parameters, buffers
including BatchNorm's running statistics and ``num_batches_tracked``, ``.grad`` values and
objects, module objects and attributes, every hook dict, ``inplace``, ``training`` and
``requires_grad`` flags, the optimizer state, the torch-function mode stack), and after the
faults they check that the next step is the step of a twin that never saw one.

``DropInLFPOptimizer`` runs inside the user's own loop, so its promise is relative to plain
PyTorch: a failed forward leaves BatchNorm statistics exactly as the same failure leaves them
under ``torch.optim.SGD`` (PyTorch updates them as each layer runs), a failed backward leaves
``.grad`` as autograd left it (the loop's next ``zero_grad()`` clears it), and nothing of
lfpoptim's own is left behind.

Run with ``-s`` to see how many faults were injected.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import torch
import torch.nn.functional as F
from hardening import (
    FAMILIES,
    SMALL_FAMILIES,
    FaultAtCall,
    InjectedFault,
    Snapshot,
    dropin_iteration,
    fault_after_forward,
    fault_before_forward,
    fault_in_backward,
    make_dropin,
    make_lfp,
    same_buffers,
    same_parameters,
    single_thread,
)
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer

OptimizerT = TypeVar("OptimizerT", bound=torch.optim.Optimizer)

FAULTS: Counter[str] = Counter()
"""Faults injected (and seen to raise), by optimizer and site."""


@pytest.fixture(scope="module", autouse=True)
def _report_fault_count() -> Iterator[None]:
    yield
    total = sum(FAULTS.values())
    details = ", ".join(f"{site}: {count}" for site, count in sorted(FAULTS.items()))
    print(f"\ntest_faults.py: {total} faults injected ({details})")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(autouse=True)
def _grad_mode_back_on() -> Iterator[None]:
    """A leak of grad mode is reported by the snapshot; it must not fail every test after it."""
    yield
    torch.set_grad_enabled(True)


def fault_sites(family_name: str, model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The modules whose forward, and those whose backward, get a fault.

    Every module, except in timm's resnet18, where a step costs as much as 25 of the others': its
    eight BasicBlocks repeat the same modules, so the stem, the first block with a downsample path
    (``layer2.0``, which has every module a block can have), the head and the root cover every
    position; the backward gets a fault at every fourth of those.
    """
    modules = list(model.named_modules())
    if family_name != "resnet18":
        return modules, modules
    kept = [
        (name, module)
        for name, module in modules
        if name in ("", "conv1", "bn1", "act1", "maxpool", "global_pool", "fc", "layer2.0")
        or name.startswith("layer2.0.")
    ]
    return kept, kept[::4]


def expect_fault(site: str, run: Callable[[], object], exception: type[BaseException] = InjectedFault) -> None:
    """Run, expecting the injected fault, and count it."""
    with pytest.raises(exception):
        run()
    FAULTS[site] += 1


def assert_unchanged(
    before: Snapshot, model: nn.Module, optimizer: torch.optim.Optimizer, where: str, **compare: bool
) -> None:
    differences = before.differences(model, optimizer, **compare)
    assert not differences, f"after a fault {where}: " + "; ".join(differences)


def warmed_up_lfp(family_name: str) -> tuple[nn.Module, LFPOptimizer]:
    """A model and optimizer one step into training: momentum and running statistics are non-trivial."""
    family = FAMILIES[family_name]
    model = family.make()
    optimizer = make_lfp(model)
    optimizer.step(*family.batch(seed=1))
    return model, optimizer


def twin_of(
    model: nn.Module, optimizer: torch.optim.Optimizer, make: Callable[[nn.Module], OptimizerT]
) -> tuple[nn.Module, OptimizerT]:
    """A copy of the model and a new optimizer over it, in the same state."""
    twin = copy.deepcopy(model)
    twin_optimizer = make(twin)
    # a state dict holds the live state tensors: without the copy both optimizers would share them
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin, twin_optimizer


def assert_next_lfp_step_is_the_twins(
    model: nn.Module, optimizer: LFPOptimizer, twin: nn.Module, twin_optimizer: LFPOptimizer, family_name: str
) -> None:
    batch = FAMILIES[family_name].batch(seed=2)
    torch.manual_seed(5)
    ours = optimizer.step(*batch)
    torch.manual_seed(5)
    theirs = twin_optimizer.step(*batch)
    assert torch.equal(ours.outputs, theirs.outputs)
    assert torch.equal(ours.reward, theirs.reward)
    assert same_parameters(model, twin) == []
    assert same_buffers(model, twin) == []
    torch.testing.assert_close(optimizer.state_dict(), twin_optimizer.state_dict(), rtol=0, atol=0)


# -- LFPOptimizer ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family_name", list(FAMILIES))
def test_lfp_step_survives_a_fault_in_every_module_and_in_the_reward(family_name):
    model, optimizer = warmed_up_lfp(family_name)
    twin, twin_optimizer = twin_of(model, optimizer, make_lfp)
    batch = FAMILIES[family_name].batch(seed=3)
    before = Snapshot.take(model, optimizer)
    forward_sites, backward_sites = fault_sites(family_name, model)

    for name, module in forward_sites:
        for site, inject in (("before forward", fault_before_forward), ("after forward", fault_after_forward)):
            with inject(module, InjectedFault(name)):
                expect_fault(f"lfp {site}", lambda: optimizer.step(*batch))
            assert_unchanged(before, model, optimizer, f"{site} of {name!r}")
    for name, module in backward_sites:
        with fault_in_backward(module, InjectedFault(name)) as armed:
            expect_fault("lfp backward", lambda: optimizer.step(*batch))
        assert armed[0]
        assert_unchanged(before, model, optimizer, f"in the backward at {name!r}")

    reward_fn = optimizer.reward_fn

    def failing_reward(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise InjectedFault("reward")

    optimizer.reward_fn = failing_reward
    expect_fault("lfp reward", lambda: optimizer.step(*batch))
    optimizer.reward_fn = reward_fn
    assert_unchanged(before, model, optimizer, "in the reward")

    # Ctrl-C in the middle of the forward
    middle_name, middle = forward_sites[len(forward_sites) // 2]
    with fault_after_forward(middle, KeyboardInterrupt()):
        expect_fault("lfp KeyboardInterrupt", lambda: optimizer.step(*batch), KeyboardInterrupt)
    assert_unchanged(before, model, optimizer, f"(KeyboardInterrupt) after forward of {middle_name!r}")

    assert_next_lfp_step_is_the_twins(model, optimizer, twin, twin_optimizer, family_name)


def torch_calls(
    optimizer: LFPOptimizer, method: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[list[str], int]:
    """The torch functions ``optimizer.<method>(*batch)`` calls, and how many it calls before the base step."""
    counter = FaultAtCall()
    before_base_step: list[int] = []
    handle = optimizer.base.register_step_pre_hook(lambda *args: before_base_step.append(counter.calls))
    with counter:
        getattr(optimizer, method)(*batch)
    handle.remove()
    return counter.names, before_base_step[0] if before_base_step else counter.calls


def inject_at_every_call(
    calls: range, model: nn.Module, optimizer: LFPOptimizer, run: Callable[[], object], site: str
) -> None:
    before = Snapshot.take(model, optimizer)
    for fail_at in calls:
        with FaultAtCall(fail_at):
            expect_fault(site, run)
        assert_unchanged(before, model, optimizer, f"at torch call {fail_at} ({site})")


@pytest.mark.parametrize("method", ["step", "feedback"])
@pytest.mark.parametrize("family_name", SMALL_FAMILIES)
def test_lfp_survives_a_fault_at_every_torch_call_through_the_backward(family_name, method):
    """Every call from the start of ``step()`` or ``feedback()`` up to and including the backward pass."""
    model, optimizer = warmed_up_lfp(family_name)
    twin, twin_optimizer = twin_of(model, optimizer, make_lfp)
    batch = FAMILIES[family_name].batch(seed=3)
    names, _ = torch_calls(twin_of(model, optimizer, make_lfp)[1], method, batch)
    last = names.index("grad") + 1
    assert last >= 20
    run = getattr(optimizer, method)
    inject_at_every_call(range(1, last + 1), model, optimizer, lambda: run(*batch), f"lfp {method} torch call")
    assert_next_lfp_step_is_the_twins(model, optimizer, twin, twin_optimizer, family_name)


def test_a_failed_accumulate_leaves_the_accumulated_feedback_alone():
    """``accumulate(a); accumulate(b) fails anywhere; accumulate(b); step()`` is the step of a and b."""
    model, optimizer = warmed_up_lfp("cnn")
    twin, twin_optimizer = twin_of(model, optimizer, make_lfp)
    first, second = FAMILIES["cnn"].batch(seed=3), FAMILIES["cnn"].batch(seed=4)
    for opt in (optimizer, twin_optimizer):
        torch.manual_seed(5)
        opt.accumulate(*first)
    names, _ = torch_calls(twin_of(model, optimizer, make_lfp)[1], "accumulate", second)
    last = names.index("grad") + 1
    inject_at_every_call(
        range(1, last + 1), model, optimizer, lambda: optimizer.accumulate(*second), "lfp accumulate torch call"
    )
    for opt in (optimizer, twin_optimizer):
        torch.manual_seed(6)
        opt.accumulate(*second)
        opt.step()
    assert same_parameters(model, twin) == []
    assert same_buffers(model, twin) == []


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_lfp_step_survives_a_fault_between_the_backward_and_the_base_step(clip_norm):
    """Scaling the feedback, its finiteness check, clipping: BatchNorm statistics and ``.grad`` are put back."""
    model, optimizer = warmed_up_lfp("cnn")
    optimizer.clip_norm = clip_norm
    batch = FAMILIES["cnn"].batch(seed=3)
    twin, twin_optimizer = twin_of(model, optimizer, make_lfp)
    counter = twin_of(model, optimizer, make_lfp)[1]
    twin_optimizer.clip_norm = counter.clip_norm = clip_norm
    names, before_base_step = torch_calls(counter, "step", batch)
    calls = range(names.index("grad") + 2, before_base_step + 1)
    assert len(calls) >= 5
    inject_at_every_call(calls, model, optimizer, lambda: optimizer.step(*batch), "lfp step after backward")
    assert_next_lfp_step_is_the_twins(model, optimizer, twin, twin_optimizer, "cnn")


def test_lfp_step_restores_grad_when_the_base_optimizer_raises():
    model, optimizer = warmed_up_lfp("cnn")
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.5)
    before = Snapshot.take(model, optimizer)

    def refuse(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        raise InjectedFault("base optimizer")

    handle = optimizer.base.register_step_pre_hook(refuse)
    expect_fault("lfp base step", lambda: optimizer.step(*FAMILIES["cnn"].batch(seed=3)))
    handle.remove()
    assert_unchanged(before, model, optimizer, "in the base optimizer's step")


# -- DropInLFPOptimizer ---------------------------------------------------------------------------------
def warmed_up_dropin(family_name: str) -> tuple[nn.Module, DropInLFPOptimizer, nn.Module]:
    """Model and optimizer one iteration into training, and a plain copy of the model (no rules).

    ``.grad`` is cleared as the loop's ``zero_grad()`` clears it.
    """
    family = FAMILIES[family_name]
    model = family.make()
    optimizer = make_dropin(model)
    dropin_iteration(model, optimizer, family.batch(seed=1))
    optimizer.zero_grad()
    optimizer.close()
    plain = copy.deepcopy(model)
    optimizer.attach()
    return model, optimizer, plain


def assert_next_dropin_iteration_is_a_fresh_optimizers(
    model: nn.Module, optimizer: DropInLFPOptimizer, family_name: str
) -> None:
    optimizer.close()
    fresh_model = copy.deepcopy(model)
    optimizer.attach()
    fresh = make_dropin(fresh_model)
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    batch = FAMILIES[family_name].batch(seed=2)
    torch.manual_seed(5)
    ours = dropin_iteration(model, optimizer, batch)
    torch.manual_seed(5)
    theirs = dropin_iteration(fresh_model, fresh, batch)
    assert torch.equal(ours, theirs)
    assert same_parameters(model, fresh_model) == []
    assert same_buffers(model, fresh_model) == []
    fresh.close()


@pytest.mark.parametrize("family_name", list(FAMILIES))
def test_dropin_loop_survives_a_fault_in_every_module_and_in_the_loss(family_name):
    model, optimizer, plain = warmed_up_dropin(family_name)
    batch = FAMILIES[family_name].batch(seed=3)
    before = Snapshot.take(model, optimizer)
    plain_modules = dict(plain.named_modules())

    def plain_forward() -> None:
        torch.manual_seed(7)  # the same dropout masks as the faulted forward
        plain(batch[0])

    def faulted(run: Callable[[], object]) -> Callable[[], object]:
        def seeded() -> object:
            torch.manual_seed(7)
            return run()

        return seeded

    iteration = faulted(lambda: dropin_iteration(model, optimizer, batch))
    forward_sites, backward_sites = fault_sites(family_name, model)
    for name, module in forward_sites:
        for site, inject in (("before forward", fault_before_forward), ("after forward", fault_after_forward)):
            with inject(module, InjectedFault(name)):
                expect_fault(f"dropin {site}", iteration)
            with inject(plain_modules[name], InjectedFault(name)), pytest.raises(InjectedFault):
                plain_forward()
            where = f"{site} of {name!r}"
            # BatchNorm statistics move as under plain PyTorch; everything else stays
            assert_unchanged(before, model, optimizer, where, buffers=False)
            assert same_buffers(model, plain) == [], where
    for name, module in backward_sites:
        with fault_in_backward(module, InjectedFault(name)) as armed:
            expect_fault("dropin backward", iteration)
        assert armed[0]
        plain_forward()
        # .grad is what autograd had accumulated when the fault hit, as without lfpoptim
        assert_unchanged(before, model, optimizer, f"in the backward at {name!r}", buffers=False, grads=False)
        assert same_buffers(model, plain) == []

    def failing_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise InjectedFault("loss")

    expect_fault("dropin loss", faulted(lambda: dropin_iteration(model, optimizer, batch, failing_loss)))
    plain_forward()
    assert_unchanged(before, model, optimizer, "in the loss", buffers=False)
    assert same_buffers(model, plain) == []

    optimizer.strict = True  # a loss whose gradient is not cross-entropy's is refused in the backward
    strict = faulted(lambda: dropin_iteration(model, optimizer, batch, _mse))
    expect_fault("dropin strict loss check", strict, ValueError)
    optimizer.strict = False
    plain_forward()
    assert_unchanged(before, model, optimizer, "in the strict check", buffers=False)
    assert same_buffers(model, plain) == []

    assert_next_dropin_iteration_is_a_fresh_optimizers(model, optimizer, family_name)


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[1]).to(outputs.dtype))


@pytest.mark.parametrize("family_name", SMALL_FAMILIES)
def test_dropin_loop_survives_a_fault_at_every_torch_call(family_name):
    """Every call of ``zero_grad()``, the forward, the loss and ``backward()``."""
    model, optimizer, _ = warmed_up_dropin(family_name)
    batch = FAMILIES[family_name].batch(seed=3)

    def until_backward() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(batch[0]), batch[1]).backward()

    counter = FaultAtCall()
    with counter:
        until_backward()
    calls = counter.calls
    assert calls >= 10
    optimizer.zero_grad()
    before = Snapshot.take(model, optimizer)
    for fail_at in range(1, calls + 1):
        with FaultAtCall(fail_at):
            expect_fault("dropin torch call", until_backward)
        optimizer.zero_grad()
        assert_unchanged(before, model, optimizer, f"at torch call {fail_at}", buffers=False)
    assert_next_dropin_iteration_is_a_fresh_optimizers(model, optimizer, family_name)


def test_keyboard_interrupt_in_a_dropin_forward_leaves_no_mode_behind():
    """A hook that pops the mode would not run on ``KeyboardInterrupt``: the drop-in's forward wrapper does."""
    model, optimizer, _ = warmed_up_dropin("mlp")
    inputs, _ = FAMILIES["mlp"].batch(seed=3)
    # a computation that has nothing to do with the model, and its true gradient
    a, weight = torch.randn(3, requires_grad=True), torch.randn(3, 3)
    (expected,) = torch.autograd.grad(F.silu(F.linear(a, weight)).sum(), a)

    with fault_after_forward(model[1], KeyboardInterrupt()):
        expect_fault("dropin KeyboardInterrupt", lambda: model(inputs), KeyboardInterrupt)
    stack_after_interrupt = torch._C._len_torch_function_stack()
    (actual,) = torch.autograd.grad(F.silu(F.linear(a, weight)).sum(), a)
    optimizer.close()  # leaves no mode behind in any case, for the tests that follow
    assert stack_after_interrupt == 0
    assert torch.equal(actual, expected)
