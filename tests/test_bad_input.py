"""Bad input: refused with an exception that names the problem, and nothing changes.

Property-based: hypothesis draws batch sizes, positions, values and dtypes (derandomized, so that
every run tries the same examples), and every refusal is checked against a bit-exact
`hardening.Snapshot` of the model and optimizer.

The policy these tests state:

* Inputs go to the model as they are; lfpoptim casts nothing. An input the model cannot take
  fails in its first layer with PyTorch's own message, which names both dtypes.
* Targets are checked by the reward (`lfpoptim.rewards.class_indices`): shape, dtype and range.
  Any integer dtype is accepted as class indices.
* NaN and Inf are refused with a ``ValueError``, never trained on (there is no skip mode: catch
  the error to skip a batch), wherever they appear: in the outputs (whatever the reward makes of
  them), in the reward, or only in the feedback (a step unit turns NaN inputs into finite outputs).
* The outputs must be one non-empty tensor with a batch dimension; the reward must be a real
  tensor shaped like the outputs, and must not write into them.

Run with ``-s`` to see how many bad inputs were tried.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hardening import (
    CLASSES,
    FAMILIES,
    Snapshot,
    dropin_iteration,
    make_dropin,
    make_lfp,
    single_thread,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lfpoptim import CorrectClassificationReward, LFPOptimizer, SoftmaxLossReward

BAD_INPUTS: Counter[str] = Counter()
"""Bad inputs tried (and refused as specified), by kind."""

SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
FAMILY_NAMES = st.sampled_from(["mlp", "cnn"])
BATCH_SIZES = st.integers(1, 10)
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report() -> Iterator[None]:
    with single_thread():
        yield
    total = sum(BAD_INPUTS.values())
    details = ", ".join(f"{kind}: {count}" for kind, count in sorted(BAD_INPUTS.items()))
    print(f"\ntest_bad_input.py: {total} bad inputs tried ({details})")


class PoisonOutputs(nn.Module):
    """Writes ``value`` into the outputs where ``mask`` is set (an identity while ``mask`` is None)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None
        self.value = 0.0

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return outputs
        return torch.where(self.mask, torch.full_like(outputs, self.value), outputs)


@cache
def trained(family_name: str) -> tuple[nn.Module, LFPOptimizer]:
    """One model and optimizer per family, a step into training, shared by every example.

    The last module lets a test write NaN or Inf into the outputs. Sharing is deliberate: a
    refusal that left anything behind would show up in the examples that follow.
    """
    family = FAMILIES[family_name]
    model = nn.Sequential(family.make(), PoisonOutputs())
    optimizer = make_lfp(model)
    optimizer.step(*family.batch(seed=1))
    return model, optimizer


def assert_refused(
    family_name: str,
    run: Callable[[LFPOptimizer], object],
    exception: type[Exception] | tuple[type[Exception], ...],
    match: str,
    kind: str,
) -> None:
    """``run(optimizer)`` raises ``exception`` matching ``match``, and the model and optimizer are untouched."""
    model, optimizer = trained(family_name)
    before = Snapshot.take(model, optimizer)
    with pytest.raises(exception, match=match):
        run(optimizer)
    differences = before.differences(model, optimizer)
    assert not differences, f"after refusing {kind}: " + "; ".join(differences)
    BAD_INPUTS[kind] += 1


def batch(family_name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return FAMILIES[family_name].batch(seed=size, batch_size=size)


def with_reward(reward_fn: Callable[..., Any], inputs: torch.Tensor, targets: Any) -> Callable[[LFPOptimizer], object]:
    """A step with another reward function, the optimizer's own put back afterwards."""

    def run(optimizer: LFPOptimizer) -> object:
        own = optimizer.reward_fn
        optimizer.reward_fn = reward_fn
        try:
            return optimizer.step(inputs, targets)
        finally:
            optimizer.reward_fn = own

    return run


# -- targets --------------------------------------------------------------------------------------------
@SETTINGS
@given(family_name=FAMILY_NAMES, inputs=BATCH_SIZES, targets=st.integers(0, 10))
def test_mismatched_batch_sizes_are_named(family_name, inputs, targets):
    assume(inputs != targets)
    x, _ = batch(family_name, inputs)
    t = torch.zeros(targets, dtype=torch.long)
    match = rf"targets have shape \({targets},\) but SoftmaxLossReward expects class indices shaped \({inputs},\)"
    assert_refused(family_name, lambda opt: opt.step(x, t), ValueError, match, "batch size mismatch")


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, data=st.data())
def test_class_indices_out_of_range_are_named(family_name, size, data):
    x, t = batch(family_name, size)
    ignore_index = -100  # Hugging Face's padding label: ignored, not out of range
    bad = data.draw(
        st.integers(-1000, -1).filter(lambda i: i != ignore_index) | st.integers(CLASSES, 1000), label="bad index"
    )
    t[data.draw(st.integers(0, size - 1), label="position")] = bad
    match = rf"target class index {bad} is out of range for outputs with {CLASSES} classes"
    assert_refused(family_name, lambda opt: opt.step(x, t), ValueError, match, "class index out of range")


@SETTINGS
@given(
    family_name=FAMILY_NAMES,
    size=BATCH_SIZES,
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.complex64]),
)
def test_targets_of_a_non_integer_dtype_are_named(family_name, size, dtype):
    x, t = batch(family_name, size)
    match = rf"targets have dtype {re.escape(str(dtype))} but class indices must be an integer dtype"
    assert_refused(family_name, lambda opt: opt.step(x, t.to(dtype)), TypeError, match, "target dtype")


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, container=st.sampled_from([list, tuple, np.asarray, type(None)]))
def test_targets_that_are_not_tensors_are_named(family_name, size, container):
    x, t = batch(family_name, size)
    targets = None if container is type(None) else container(t.tolist())
    match = rf"expects targets as a torch.Tensor of class indices, got {type(targets).__name__}"
    assert_refused(family_name, lambda opt: opt.step(x, targets), TypeError, match, "targets not a tensor")


@SETTINGS
@given(
    family_name=FAMILY_NAMES,
    size=BATCH_SIZES,
    dtype=st.sampled_from([torch.int8, torch.int16, torch.int32, torch.uint8]),
)
def test_class_indices_of_any_integer_dtype_are_accepted(family_name, size, dtype):
    _, optimizer = trained(family_name)
    x, t = batch(family_name, size)
    torch.manual_seed(0)
    expected = optimizer.feedback(x, t)
    torch.manual_seed(0)
    actual = optimizer.feedback(x, t.to(dtype))
    for name, feedback in expected.items():
        assert torch.equal(actual[name], feedback), name


# -- inputs ---------------------------------------------------------------------------------------------
@SETTINGS
@given(
    family_name=FAMILY_NAMES,
    size=BATCH_SIZES,
    dtype=st.sampled_from(
        [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]
    ),
)
def test_inputs_of_a_dtype_the_model_cannot_take_are_named(family_name, size, dtype):
    x, t = batch(family_name, size)
    match = r"must have the same dtype, but got \w+ and Float|Input type \(.+\) and bias type \(float\)"
    assert_refused(family_name, lambda opt: opt.step(x.to(dtype), t), RuntimeError, match, "input dtype")


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, value=NON_FINITE, data=st.data())
def test_nan_or_inf_in_the_inputs_is_refused(family_name, size, value, data):
    x, t = batch(family_name, size)
    flat = x.view(-1)
    positions = data.draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1, max_size=4), label="positions")
    flat[positions] = value
    assert_refused(family_name, lambda opt: opt.step(x, t), ValueError, "NaN or Inf", "NaN/Inf in inputs")


# -- outputs and rewards ----------------------------------------------------------------------------------
@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, value=NON_FINITE, data=st.data())
def test_nan_or_inf_in_the_outputs_is_refused(family_name, size, value, data):
    model, _ = trained(family_name)
    x, t = batch(family_name, size)
    mask = torch.zeros(size, CLASSES, dtype=torch.bool)
    positions = data.draw(st.lists(st.integers(0, mask.numel() - 1), min_size=1, max_size=4), label="positions")
    mask.view(-1)[positions] = True
    poison = model[-1]
    poison.mask, poison.value = mask, value
    try:
        assert_refused(family_name, lambda opt: opt.step(x, t), ValueError, "NaN or Inf", "NaN/Inf in outputs")
    finally:
        poison.mask = None


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, value=NON_FINITE, data=st.data())
def test_nan_or_inf_in_the_reward_is_refused_and_counted(family_name, size, value, data):
    x, t = batch(family_name, size)
    positions = sorted(set(data.draw(st.lists(st.integers(0, size * CLASSES - 1), min_size=1, max_size=6))))

    def broken_reward(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reward = SoftmaxLossReward()(outputs, targets)
        reward.view(-1)[positions] = value
        return reward

    match = rf"reward contains NaN or Inf \({len(positions)} of {size * CLASSES} entries\)"
    assert_refused(family_name, with_reward(broken_reward, x, t), ValueError, match, "NaN/Inf in reward")


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, shape=st.lists(st.integers(0, 6), max_size=3))
def test_a_reward_of_the_wrong_shape_is_named(family_name, size, shape):
    assume(tuple(shape) != (size, CLASSES))
    x, t = batch(family_name, size)
    match = rf"reward has shape {re.escape(str(tuple(shape)))} but outputs have shape \({size}, {CLASSES}\)"
    run = with_reward(lambda outputs, targets: torch.zeros(shape), x, t)
    assert_refused(family_name, run, ValueError, match, "reward shape")


@SETTINGS
@given(family_name=FAMILY_NAMES, size=BATCH_SIZES, make=st.sampled_from([float, list, np.asarray, type(None)]))
def test_a_reward_that_is_not_a_tensor_is_named(family_name, size, make):
    x, t = batch(family_name, size)

    def reward_fn(outputs: torch.Tensor, targets: torch.Tensor) -> Any:
        reward = SoftmaxLossReward()(outputs, targets)
        return None if make is type(None) else make(reward.sum() if make is float else reward.tolist())

    expected = {float: "float", list: "list", np.asarray: "ndarray", type(None): "NoneType"}[make]
    match = rf"reward_fn must return a torch.Tensor shaped like the outputs, got {expected}"
    assert_refused(family_name, with_reward(reward_fn, x, t), TypeError, match, "reward not a tensor")


# -- models -----------------------------------------------------------------------------------------------
def test_a_model_without_parameters_is_named():
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        make_lfp(nn.Sequential(nn.Flatten(), nn.ReLU()))
    BAD_INPUTS["model without parameters"] += 1


def test_a_model_returning_a_tuple_is_named():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.linear(x), x

    model = TwoHeads()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    before = Snapshot.take(model, optimizer)
    with pytest.raises(TypeError, match="the model returned tuple; LFP needs a single output tensor"):
        optimizer.step(torch.randn(2, 4), torch.tensor([0, 1]))
    assert not before.differences(model, optimizer)
    BAD_INPUTS["model output not a tensor"] += 1


# -- DropInLFPOptimizer: the loss is the user's, and so are its errors --------------------------------------
@SETTINGS
@given(size=BATCH_SIZES, kind=st.sampled_from(["batch size mismatch", "class index out of range"]))
def test_dropin_passes_the_losss_own_errors_through_and_leaves_nothing_behind(size, kind):
    model, optimizer = dropin_model()
    x, t = batch("cnn", size)
    if kind == "batch size mismatch":
        t, match = torch.cat([t, t[:1]]), rf"Expected input batch_size \({size}\) to match target batch_size"
    else:
        t[0], match = CLASSES, f"Target {CLASSES} is out of bounds"
    optimizer.zero_grad()
    before = Snapshot.take(model, optimizer)
    with pytest.raises((ValueError, IndexError), match=match):
        dropin_iteration(model, optimizer, (x, t))
    differences = before.differences(model, optimizer, buffers=False)  # the forward ran, as under SGD
    assert not differences, "; ".join(differences)
    BAD_INPUTS[f"dropin {kind}"] += 1


@cache
def dropin_model() -> tuple[nn.Module, Any]:
    model = FAMILIES["cnn"].make()
    optimizer = make_dropin(model)
    dropin_iteration(model, optimizer, batch("cnn", 4))
    return model, optimizer


# -- outputs, feedback and models that a check on the reward alone would let through -----------------------
def assert_refused_on_its_own(
    model: nn.Module,
    optimizer: LFPOptimizer,
    run: Callable[[], object],
    exception: type[Exception],
    match: str,
    *,
    kind: str,
) -> None:
    """As `assert_refused`, for a model and optimizer of the test's own."""
    before = Snapshot.take(model, optimizer)
    with pytest.raises(exception, match=match):
        run()
    differences = before.differences(model, optimizer)
    assert not differences, f"after refusing {kind}: " + "; ".join(differences)
    BAD_INPUTS[kind] += 1


@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_inputs_to_a_step_network_are_refused(value, clip_norm):
    """A Heaviside unit turns NaN into a finite output: only the feedback shows it, and the step refuses it."""
    model = FAMILIES["heaviside"].make()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.05, momentum=0.9, clip_norm=clip_norm)
    optimizer.step(*FAMILIES["heaviside"].batch(seed=2))  # momentum would move the parameters on any step
    x, t = FAMILIES["heaviside"].batch(seed=1)
    x[0, 0] = value
    match = r"the feedback contains NaN or Inf \(\d of 6 parameter tensors: 0.weight.*\) although the model's outputs"
    run = lambda: optimizer.step(x, t)  # noqa: E731
    assert_refused_on_its_own(model, optimizer, run, ValueError, match, kind="NaN/Inf in inputs to a step unit")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_outputs_are_refused_whatever_the_reward(value):
    """``CorrectClassificationReward`` is built from signs: finite where the outputs are not (sign(NaN) = 0)."""
    model = nn.Sequential(FAMILIES["mlp"].make(), PoisonOutputs())
    optimizer = LFPOptimizer(model, CorrectClassificationReward(), lr=0.1)
    model[-1].mask, model[-1].value = torch.eye(8, CLASSES, dtype=torch.bool), value
    match = r"the model's outputs contain NaN or Inf \(5 of 40 entries\)"
    run = lambda: optimizer.step(*FAMILIES["mlp"].batch(seed=1))  # noqa: E731
    assert_refused_on_its_own(model, optimizer, run, ValueError, match, kind="NaN/Inf outputs, sign reward")


@pytest.mark.parametrize("method", ["step", "feedback", "accumulate"])
@pytest.mark.parametrize("family_name", ["mlp", "cnn"])
def test_an_empty_batch_is_refused(family_name, method):
    model = FAMILIES[family_name].make()
    optimizer = make_lfp(model)
    optimizer.step(*batch(family_name, 4))  # momentum would move the parameters on zero feedback
    match = r"the model's outputs are empty \(shape \(0, 5\)\): the batch is empty"
    run = lambda: getattr(optimizer, method)(*batch(family_name, 0))  # noqa: E731
    assert_refused_on_its_own(model, optimizer, run, ValueError, match, kind="empty batch")


def test_an_empty_batch_in_the_dropin_loop_behaves_as_under_sgd():
    model = FAMILIES["mlp"].make()
    optimizer = make_dropin(model)
    x, t = torch.randn(0, 16), torch.zeros(0, dtype=torch.long)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), t)  # nan, as without lfpoptim
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    optimizer.close()
    BAD_INPUTS["dropin empty batch"] += 1


@pytest.mark.parametrize("method", ["step", "feedback", "accumulate"])
def test_a_model_without_trainable_parameters_is_named(method):
    frozen = FAMILIES["mlp"].make().requires_grad_(False)
    optimizer = LFPOptimizer(frozen, SoftmaxLossReward(), lr=0.1)
    run = lambda: getattr(optimizer, method)(*batch("mlp", 4))  # noqa: E731
    match = "the model has no trainable parameters"
    assert_refused_on_its_own(frozen, optimizer, run, ValueError, match, kind="model without trainable parameters")


def test_a_model_with_a_scalar_output_is_named():
    class Total(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x).sum()

    model = Total()
    optimizer = LFPOptimizer(model, lambda outputs, targets: outputs.sign(), lr=0.1)
    match = r"the model's outputs have shape \(\), without the batch dimension 0"
    assert_refused_on_its_own(
        model, optimizer, lambda: optimizer.step(torch.randn(3, 4)), ValueError, match, kind="0-d output"
    )


def test_a_reward_that_modifies_the_outputs_in_place_is_refused():
    def doubling_reward(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reward = SoftmaxLossReward()(outputs, targets)
        outputs.mul_(2)
        return reward

    x, t = batch("mlp", 4)
    assert_refused(
        "mlp",
        with_reward(doubling_reward, x, t),
        ValueError,
        "modified the model.s outputs in place",
        "reward writes into outputs",
    )


def test_a_complex_reward_is_refused():
    x, t = batch("mlp", 4)
    run = with_reward(lambda outputs, targets: torch.ones_like(outputs, dtype=torch.complex64), x, t)
    match = r"reward_fn returned a complex tensor \(torch.complex64\); the reward must be real"
    assert_refused("mlp", run, TypeError, match, "complex reward")
