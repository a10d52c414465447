"""Threads and re-entrancy: several optimizers, several threads, and ``feedback()`` in odd places.

What is promised (``docs/guarantees.md``):

* Optimizers are independent: two ``LFPOptimizer`` on two models, stepped in turn in one thread
  or at the same time in two threads, give exactly the results each gives alone. The LFP rules
  live in a torch-function mode, which PyTorch keeps per thread, so LFP in one thread never
  changes the gradients that plain autograd computes in another.
* One optimizer (like any ``torch.optim`` optimizer) is not meant to be stepped from two threads
  at once.
* ``feedback()`` and ``step()`` use the model in the mode it is in: in ``eval()`` BatchNorm uses
  its running statistics (and leaves them alone) and dropout is off, so ``feedback()`` is
  deterministic; neither method switches modes.
* ``feedback()`` and ``step()`` run their own backward pass, so they enable gradients for it:
  under ``torch.no_grad()`` they give the same numbers as outside (``torch.optim`` steps run under
  ``no_grad`` too). Under ``torch.inference_mode()`` no backward pass is possible and they say so.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hardening import FAMILIES, Snapshot, dropin_iteration, make_dropin, make_lfp, same_parameters, single_thread
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

STEPS = 12


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def lfp_run(family_name: str, model: nn.Module, seed: int) -> Iterator[torch.Tensor]:
    """Steps of ``LFPOptimizer`` on ``model``, one per ``next()``, yielding each step's reward."""
    optimizer = make_lfp(model)
    family = FAMILIES[family_name]
    for step in range(STEPS):
        yield optimizer.step(*family.batch(seed=seed + step)).reward


def sgd_run(family_name: str, model: nn.Module, seed: int) -> Iterator[torch.Tensor]:
    """Plain SGD steps with cross-entropy, yielding each step's loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    family = FAMILIES[family_name]
    for step in range(STEPS):
        yield dropin_iteration(model, optimizer, family.batch(seed=seed + step))


def dropin_run(family_name: str, model: nn.Module, seed: int) -> Iterator[torch.Tensor]:
    """Steps of the drop-in loop, yielding each step's loss."""
    optimizer = make_dropin(model)
    family = FAMILIES[family_name]
    try:
        for step in range(STEPS):
            yield dropin_iteration(model, optimizer, family.batch(seed=seed + step))
    finally:
        optimizer.close()


Run = Callable[[str, nn.Module, int], Iterator[torch.Tensor]]

# models without dropout: the global RNG is shared by threads, so dropout masks would depend on timing
PAIRS: dict[str, tuple[tuple[Run, str], tuple[Run, str]]] = {
    "two LFP optimizers": ((lfp_run, "mlp"), (lfp_run, "residual")),
    "LFP next to plain SGD": ((lfp_run, "residual"), (sgd_run, "mlp")),
    "drop-in next to plain SGD": ((dropin_run, "mlp"), (sgd_run, "residual")),
    "LFP next to drop-in": ((lfp_run, "mlp"), (dropin_run, "heaviside")),
}


def alone(run: Run, family_name: str, model: nn.Module) -> tuple[list[torch.Tensor], nn.Module]:
    model = copy.deepcopy(model)
    return list(run(family_name, model, 100)), model


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_optimizers_stepped_in_turn_are_independent(pair):
    (run_a, family_a), (run_b, family_b) = PAIRS[pair]
    model_a, model_b = FAMILIES[family_a].make(), FAMILIES[family_b].make()
    expected_a, alone_a = alone(run_a, family_a, model_a)
    expected_b, alone_b = alone(run_b, family_b, model_b)
    steps_a, steps_b = run_a(family_a, model_a, 100), run_b(family_b, model_b, 100)
    for step, (want_a, want_b) in enumerate(zip(expected_a, expected_b, strict=True)):
        assert torch.equal(next(steps_a), want_a), f"{family_a}, step {step}"
        assert torch.equal(next(steps_b), want_b), f"{family_b}, step {step}"
    assert same_parameters(model_a, alone_a) == []
    assert same_parameters(model_b, alone_b) == []


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_optimizers_in_two_threads_are_independent(pair):
    runs = PAIRS[pair]
    models = [FAMILIES[family].make() for _, family in runs]
    expected = [alone(run, family, model) for (run, family), model in zip(runs, models, strict=True)]
    results: list[list[torch.Tensor] | BaseException] = [[], []]
    start = threading.Barrier(len(runs))

    def worker(index: int) -> None:
        (run, family), model = runs[index], models[index]
        try:
            start.wait()
            results[index] = list(run(family, model, 100))
        except BaseException as error:  # reported by the main thread
            results[index] = error

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (run, family), model, result, (want, alone_model) in zip(runs, models, results, expected, strict=True):
        if isinstance(result, BaseException):
            raise result
        assert len(result) == len(want) == STEPS
        for step, (ours, theirs) in enumerate(zip(result, want, strict=True)):
            assert torch.equal(ours, theirs), f"{run.__name__} on {family}, step {step}"
        assert same_parameters(model, alone_model) == []
    assert torch._C._len_torch_function_stack() == 0


# -- re-entrancy -----------------------------------------------------------------------------------------
def test_feedback_in_eval_mode_uses_running_statistics_and_changes_nothing():
    model = FAMILIES["cnn"].make()  # BatchNorm and Dropout
    optimizer = make_lfp(model)
    optimizer.step(*FAMILIES["cnn"].batch(seed=1))
    inputs, targets = FAMILIES["cnn"].batch(seed=2)
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    in_train_mode = [optimizer.feedback(inputs, targets) for _ in range(2)]
    model.eval()
    in_eval_mode = [optimizer.feedback(inputs, targets) for _ in range(2)]

    assert not model.training
    assert all(not module.training for module in model.modules())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for name in in_eval_mode[0]:
        assert torch.equal(in_eval_mode[0][name], in_eval_mode[1][name]), name  # no dropout: deterministic
    assert any(not torch.equal(in_train_mode[0][n], in_train_mode[1][n]) for n in in_train_mode[0])  # dropout


def test_a_step_in_eval_mode_trains_without_touching_running_statistics():
    model = FAMILIES["cnn"].make().eval()
    optimizer = make_lfp(model)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step(*FAMILIES["cnn"].batch(seed=1))
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert all(not torch.equal(p, params[name]) for name, p in model.named_parameters())
    assert not model.training


@pytest.mark.parametrize("method", ["feedback", "step"])
def test_under_no_grad_feedback_and_step_give_the_same_numbers(method):
    family = FAMILIES["mlp"]
    model = family.make()
    twin = copy.deepcopy(model)
    batch = family.batch(seed=1)
    expected = getattr(make_lfp(twin), method)(*batch)
    with torch.no_grad():
        actual = getattr(make_lfp(model), method)(*batch)
        assert not torch.is_grad_enabled()  # the pass enabled gradients for itself only
    if method == "feedback":
        assert all(torch.equal(actual[name], expected[name]) for name in expected)
    else:
        assert same_parameters(model, twin) == []


@pytest.mark.parametrize("method", ["feedback", "step"])
def test_under_inference_mode_feedback_and_step_say_they_need_autograd(method):
    model = FAMILIES["cnn"].make()
    optimizer = make_lfp(model)
    before = Snapshot.take(model, optimizer)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"disables; call it outside inference_mode"):
        getattr(optimizer, method)(*FAMILIES["cnn"].batch(seed=1))
    assert not before.differences(model, optimizer)


def test_a_reward_may_itself_ask_another_optimizer_for_feedback():
    """Re-entrancy: an LFP pass inside another's reward (a critic model, say) works."""
    critic_model = FAMILIES["mlp"].make()
    critic = make_lfp(critic_model)
    inputs, targets = FAMILIES["mlp"].batch(seed=1)
    expected = critic.feedback(inputs, targets)
    seen = []

    def reward_with_critic(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append(critic.feedback(inputs, targets))
        return SoftmaxLossReward()(outputs, labels)

    LFPOptimizer(FAMILIES["mlp"].make(), reward_with_critic, lr=0.1).step(inputs, targets)
    assert all(torch.equal(seen[0][name], expected[name]) for name in expected)


@pytest.mark.filterwarnings("error:the gradient reaching the model's outputs")  # the loss check must not run
def test_explicit_feedback_on_a_model_with_a_dropin_optimizer_attached_is_exact():
    """The drop-in wrapper does not trace a forward that an LFP pass traces already."""
    model = FAMILIES["mlp"].make()
    batch = FAMILIES["mlp"].batch(seed=1)
    expected = make_lfp(model).feedback(*batch)
    dropin = make_dropin(model)
    try:
        actual = make_lfp(model).feedback(*batch)
    finally:
        dropin.close()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_dropin_forwards_under_no_grad_are_not_traced():
    model = FAMILIES["cnn"].make().eval()
    inputs, _ = FAMILIES["cnn"].batch(seed=1)
    with torch.no_grad():
        expected = model(inputs)
    optimizer = make_dropin(model)
    with torch.no_grad():
        assert torch.equal(model(inputs), expected)
        assert torch._C._len_torch_function_stack() == 0
    # and a plain gradient computed next to it (outside the model) is the true one
    a = torch.randn(4, requires_grad=True)
    (grad,) = torch.autograd.grad(F.silu(a).sum(), a)
    assert torch.allclose(grad, torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a))))
    optimizer.close()
