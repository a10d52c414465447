"""The ``default`` preset: epsilon-LFP for MLPs, CNNs and anything without a preset of its own."""

from __future__ import annotations

from ..rules import DropoutMode, RuleMap, default_rules, extended_rules
from .registry import register_preset


@register_preset("default", epsilon=1e-6, priority=-100)
def default(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    """Epsilon rule on layers, pooling and sums; identity on activations; AttnLRP on products and softmax.

    `lfpoptim.rules.default_rules` (the method of ``docs/concepts.md``) plus
    `lfpoptim.rules.extended_rules`, which only matter where the model multiplies two signals
    (gates, attention) or scales by a parameter (layer scale).

    Args:
        epsilon: ε of the epsilon rules.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    rules = default_rules(epsilon, dropout)
    rules.update(extended_rules(epsilon, dropout))
    return rules
