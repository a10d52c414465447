"""The ``default`` preset: epsilon-LFP for MLPs, CNNs and anything without a preset of its own."""

from __future__ import annotations

from ..rules import DropoutMode, RuleMap, default_rules, extended_rules
from .registry import register_preset


@register_preset("default", epsilon=1e-6, priority=-100)
def default(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    """Epsilon rule on layers, pooling and sums; identity on activations; gradient through gates; AttnLRP on attention.

    `lfpoptim.rules.default_rules` (the method of ``docs/concepts.md``) plus
    `lfpoptim.rules.extended_rules`, which only matter where the model multiplies two signals
    (gates, attention) or scales by a parameter (layer scale). An element-wise product of two
    signals (a squeeze-and-excitation gate) hands each factor the whole reward
    (``signal_products="gradient"``): the uniform rule would halve the reward at every gate,
    and a MobileNetV3 trained from scratch on the digits reached 0.867 with it against 0.964
    with the gradient (SGD: 0.906; 5 epochs, lr 0.05, seed 0). Matrix products keep AttnLRP's
    uniform rule.

    Args:
        epsilon: ε of the epsilon rules.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    rules = default_rules(epsilon, dropout)
    rules.update(extended_rules(epsilon, dropout, signal_products="gradient"))
    return rules
