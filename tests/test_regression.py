"""Regression with LFP: rewards for real-valued targets, the ``regression`` preset, and learning on diabetes."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

from lfpoptim import AbsoluteErrorReward, HuberReward, LFPOptimizer, SquaredErrorReward

OUTPUTS = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
TARGETS = torch.tensor([[1.5, -0.5], [-1.0, 0.25]])


def test_reward_values() -> None:
    error = TARGETS - OUTPUTS
    torch.testing.assert_close(SquaredErrorReward()(OUTPUTS, TARGETS), OUTPUTS * error)
    torch.testing.assert_close(AbsoluteErrorReward()(OUTPUTS, TARGETS), OUTPUTS * error.sign())
    torch.testing.assert_close(HuberReward(delta=1.0)(OUTPUTS, TARGETS), OUTPUTS * error.clamp(-1.0, 1.0))


def test_single_output_accepts_targets_shaped_like_the_batch() -> None:
    outputs = torch.tensor([[1.0], [2.0]])
    torch.testing.assert_close(SquaredErrorReward()(outputs, torch.tensor([0.0, 3.0])), torch.tensor([[-1.0], [2.0]]))


def test_bad_targets_are_explained() -> None:
    with pytest.raises(ValueError, match=r"targets have shape \(3,\) but outputs have shape \(2, 2\)"):
        SquaredErrorReward()(OUTPUTS, torch.zeros(3))
    with pytest.raises(TypeError, match="SoftmaxLossReward"):
        SquaredErrorReward()(OUTPUTS, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="delta must be positive"):
        HuberReward(delta=0.0)


def test_squared_error_feedback_is_the_weight_scaled_gradient_of_the_squared_error() -> None:
    r"""ReLU MLP, \(\varepsilon \to 0\): \(F_\theta = -|\theta| \odot \partial_\theta \tfrac12 \sum (y - t)^2\)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    inputs, targets = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    optimizer = LFPOptimizer(
        model, SquaredErrorReward(), preset="regression", epsilon=1e-12, feedback_reduction="sum", lr=0.1
    )
    feedback = optimizer.feedback(inputs, targets)
    (0.5 * (model(inputs) - targets).pow(2).sum()).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(feedback[name], -param.detach().abs() * param.grad, rtol=1e-6, atol=1e-10)


@cache
def diabetes() -> tuple[torch.Tensor, ...]:
    """scikit-learn's diabetes data, split 80/20, features and target standardised on the training part."""
    features, target = load_diabetes(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features, target, test_size=0.2, random_state=0)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    target_mean, target_std = train_y.mean(), train_y.std()
    return tuple(
        torch.tensor(array, dtype=torch.float32)
        for array in (
            (train_x - mean) / std,
            (train_y - target_mean) / target_std,
            (test_x - mean) / std,
            (test_y - target_mean) / target_std,
        )
    )


def test_lfp_learns_diabetes_well_below_the_mean_predictor() -> None:
    train_x, train_y, test_x, test_y = diabetes()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = LFPOptimizer(model, SquaredErrorReward(), preset="regression", lr=0.003, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), 32):
            chosen = order[start : start + 32]
            optimizer.step(train_x[chosen], train_y[chosen])
    with torch.no_grad():
        lfp_mse = float(F.mse_loss(model(test_x).squeeze(1), test_y))
    mean_mse = float(F.mse_loss(torch.zeros_like(test_y), test_y))  # the training mean is 0 after standardising
    assert mean_mse > 0.8
    assert lfp_mse < 0.75 * mean_mse
