r"""Identities that epsilon-LFP must satisfy, checked on the digits.

With :class:`SoftmaxLossReward`, :math:`R / y = \text{onehot} - \operatorname{softmax}(y) =
-\partial L / \partial y` for the cross-entropy :math:`L`. In a network whose activations satisfy
:math:`\varphi(z) / z = \varphi'(z)` (ReLU, LeakyReLU) and as :math:`\varepsilon \to 0`, LFP then
backpropagates exactly :math:`-\partial L / \partial y`, so its feedback is weight-scaled gradient
ascent:

.. math::

    F_\theta = -|\theta| \odot \frac{\partial L}{\partial \theta},
    \qquad L = \sum_{\text{batch}} \operatorname{CE}(y, t).

For SiLU, :math:`\varphi(z) / z = \sigma(z) \neq \varphi'(z)`: the identity must fail there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from digits import digits
from lfp_reference import Residual
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

EPSILON = 1e-12
BATCH = 64


def relu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def relu_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def leaky_residual_cnn() -> nn.Module:
    """Train-mode BatchNorm, a residual sum and LeakyReLU: piecewise linear too."""
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.LeakyReLU(0.1),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)), act=nn.LeakyReLU(0.1)),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # BatchNorm's biases start at 0: no feedback to compare
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)
    return model


def silu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 16), nn.SiLU(), nn.Linear(16, 10))


def weight_scaled_gradient_gap(build: Callable[[], nn.Module]) -> dict[str, float]:
    r"""Per parameter, ``max|F - (-|θ| ∂L/∂θ)| / max|-|θ| ∂L/∂θ|`` in float64 on a batch of digits."""
    torch.manual_seed(0)
    model = build().double().train()
    inputs, labels, _, _ = digits()
    inputs, labels = inputs[:BATCH].double(), labels[:BATCH]

    optimizer = LFPOptimizer(model, SoftmaxLossReward(), epsilon=EPSILON, feedback_reduction="sum")
    feedback = optimizer.feedback(inputs, labels)

    loss = F.cross_entropy(model(inputs), labels, reduction="sum")
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    gaps = {}
    for name, param, grad in zip(names, params, grads, strict=True):
        expected = -param.detach().abs() * grad
        assert expected.abs().max() > 0, f"{name} gets no gradient: nothing to compare"
        gaps[name] = float((feedback[name] - expected).abs().max() / expected.abs().max())
    return gaps


@pytest.mark.parametrize("build", [relu_mlp, relu_cnn, leaky_residual_cnn])
def test_lfp_is_weight_scaled_gradient_ascent_for_piecewise_linear_nets(build: Callable[[], nn.Module]) -> None:
    gaps = weight_scaled_gradient_gap(build)
    assert max(gaps.values()) <= 1e-6, gaps


def test_lfp_is_not_a_weight_scaled_gradient_for_silu() -> None:
    """SiLU's identity rule hands reward down as σ(z), not SiLU'(z): the update is no gradient."""
    gaps = weight_scaled_gradient_gap(silu_mlp)
    assert gaps["4.weight"] <= 1e-6  # the last layer sees the same seed
    assert gaps["0.weight"] > 1e-3
    assert gaps["2.weight"] > 1e-3
