"""The ``snn`` preset: spiking networks of leaky integrate-and-fire neurons."""

from __future__ import annotations

import torch

from ..rules import DropoutMode, RuleMap
from ..rules.lif import LIFRule, SpikeStackRule
from ..snn.neurons import lif_step
from .default import default
from .registry import register_preset


@register_preset("snn", epsilon=1e-6, module_types=("LIF",))
def snn(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    """The LIF rule on spiking neurons, carried through their membranes over time; ``default`` elsewhere.

    `lfpoptim.rules.lif.LIFRule` on `lfpoptim.snn.lif_step` (every `lfpoptim.snn.LIF` layer), with
    the reference's ε of 1e-6 in its denominator, and `lfpoptim.rules.lif.SpikeStackRule` on
    ``torch.stack`` so that the reward of a silent output neuron still reaches its membrane. The
    layers feeding the neurons, pooling and anything else get the ``default`` rules. ``auto``
    chooses this preset for a model containing an `lfpoptim.snn.LIF` layer.

    Args:
        epsilon: ε of the epsilon rules and of the LIF rule's denominator.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    rules = default(epsilon, dropout)
    rules[lif_step] = LIFRule(epsilon)
    rules[torch.stack] = SpikeStackRule()
    return rules
