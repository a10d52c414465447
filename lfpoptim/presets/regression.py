"""The ``regression`` preset: the plain epsilon rules, for networks with real-valued outputs."""

from __future__ import annotations

from ..rules import DropoutMode, RuleMap
from .default import default
from .registry import register_preset


@register_preset("regression", epsilon=1e-6)
def regression(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    r"""Plain epsilon-LFP for regression; pair it with a regression reward (`SquaredErrorReward`).

    The reference implementation has a last-layer rule driven by the target, marked unfinished
    in its code, while its regression notebook trained with the plain epsilon composite. lfpoptim
    keeps the rules plain and puts the target where LFP expects it, in the reward: with
    `lfpoptim.rewards.SquaredErrorReward`, \(R = y \odot (t - y)\), the seed of the backward pass
    is \(R / y = t - y = -\partial \tfrac12 (y - t)^2 / \partial y\), so a ReLU network with a
    linear output trains by weight-scaled gradient descent on the squared error. ``auto`` never
    chooses this preset: a model does not say whether its outputs are scores or values.

    Args:
        epsilon: ε of the epsilon rules.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    return default(epsilon, dropout)
