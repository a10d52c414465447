"""Spiking neural networks for LFP: LIF neurons, layers, ready models, input encoders and a spike reward.

Train them with ``LFPOptimizer(model, RateCodedSpikeReward(), preset="snn")`` (``"auto"`` picks
``snn`` for any model with a `LIF` layer): the LIF rule (`lfpoptim.rules.lif`) carries reward
through the membranes over time, in the one backward pass of every LFP step.
"""

from .encoders import ConstantCurrentEncoder, Encoder, RateEncoder
from .interop import convert_snntorch, lif_from_snntorch
from .layers import SpikingLayer
from .models import SpikingCNN, SpikingMLP, TimeLoop
from .neurons import LIF, ResetMechanism, lif_step, reset_neurons
from .rewards import RateCodedSpikeReward, spike_count_predictions

__all__ = [
    "LIF",
    "ConstantCurrentEncoder",
    "Encoder",
    "RateCodedSpikeReward",
    "RateEncoder",
    "ResetMechanism",
    "SpikingCNN",
    "SpikingLayer",
    "SpikingMLP",
    "TimeLoop",
    "convert_snntorch",
    "lif_from_snntorch",
    "lif_step",
    "reset_neurons",
    "spike_count_predictions",
]
