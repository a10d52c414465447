"""Mixed precision: LFP steps under ``torch.autocast`` (bfloat16 and float16 on CPU) and on bfloat16 models."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from digits import accuracy, digits
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def relative_errors(approximate: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float((approximate[name] - exact[name]).norm() / exact[name].norm()) for name in exact}


def cross_entropy_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(inputs), targets)
    loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_feedback_is_finite_and_as_close_to_fp32_as_the_gradient_is(dtype: torch.dtype) -> None:
    train_inputs, train_targets, _, _ = digits()
    inputs, targets = train_inputs[:128], train_targets[:128]
    model = make_mlp()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    exact = optimizer.feedback(inputs, targets)
    with torch.autocast("cpu", dtype=dtype):
        approximate = optimizer.feedback(inputs, targets)
    assert all(torch.isfinite(feedback).all() for feedback in approximate.values())
    assert all(feedback.dtype == torch.float32 for feedback in approximate.values())  # parameters' dtype

    # The independent yardstick: what the same autocast does to the cross-entropy gradient of the batch.
    gradient_errors = relative_errors(
        cross_entropy_gradients(model, inputs, targets, dtype),
        cross_entropy_gradients(model, inputs, targets, torch.float32),
    )
    for name, error in relative_errors(approximate, exact).items():
        assert 1e-5 < error < 0.05, name  # the forward did run in half precision, and stayed close
        assert error < 2 * gradient_errors[name] + 0.005, name


def test_training_under_autocast_learns_digits() -> None:
    train_inputs, train_targets, test_inputs, test_targets = digits()
    torch.manual_seed(0)  # the start, not whatever the tests before left in the global generator
    model = make_mlp()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in torch.randperm(len(train_targets), generator=order).split(128):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                result = optimizer.step(train_inputs[batch], train_targets[batch])
            assert torch.isfinite(result.reward).all()
    assert accuracy(model, test_inputs, test_targets) > 0.75  # chance is 0.1


class RecordingReward:
    """SoftmaxLossReward that records the dtype it is given and whether autocast was on."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.dtype, bool]] = []
        self.reward = SoftmaxLossReward()

    def __call__(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        self.seen.append((outputs.dtype, torch.is_autocast_enabled("cpu")))
        return self.reward(outputs, targets)


def test_reward_is_computed_in_float32_outside_autocast() -> None:
    reward = RecordingReward()
    optimizer = LFPOptimizer(make_mlp(), reward, lr=0.1)
    inputs, targets = torch.randn(16, 64), torch.randint(0, 10, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = optimizer.step(inputs, targets)
        optimizer.accumulate(inputs, targets)
        optimizer.step()
    assert result.outputs.dtype == torch.bfloat16  # the forward ran under autocast
    assert reward.seen == [(torch.float32, False)] * 2


def test_bf16_model_trains_with_float32_reward() -> None:
    train_inputs, train_targets, _, _ = digits()
    inputs, targets = train_inputs[:64].bfloat16(), train_targets[:64]
    model = make_mlp().bfloat16()
    before = copy.deepcopy(model)
    reward = RecordingReward()
    optimizer = LFPOptimizer(model, reward, lr=0.1)
    feedback = optimizer.feedback(inputs, targets)
    optimizer.step(inputs, targets)
    assert all(torch.isfinite(value).all() and value.dtype == torch.bfloat16 for value in feedback.values())
    assert reward.seen == [(torch.float32, False)] * 2
    for param, old in zip(model.parameters(), before.parameters(), strict=True):
        assert param.dtype == torch.bfloat16
        assert not torch.equal(param, old)


@pytest.mark.parametrize("reduction", ["sum", "normalized"])
def test_accumulation_under_autocast_matches_the_big_batch_under_autocast(reduction: str) -> None:
    train_inputs, train_targets, _, _ = digits()
    model = make_mlp()
    reference = copy.deepcopy(model)
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.01, feedback_reduction=reduction)
    reference_optimizer = LFPOptimizer(reference, SoftmaxLossReward(), lr=0.01, feedback_reduction=reduction)
    inputs, targets = train_inputs[:96], train_targets[:96]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for micro_inputs, micro_targets in zip(inputs.split(32), targets.split(32), strict=True):
            optimizer.accumulate(micro_inputs, micro_targets)
        optimizer.step()
        reference_optimizer.step(inputs, targets)
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        # bfloat16 rounding in each micro-batch's pass, not the accumulation, sets the tolerance (~0.5 % seen)
        assert (param.grad - expected.grad).abs().max() < 0.01 * expected.grad.abs().max()
