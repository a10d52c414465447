"""A parametrised layer paired with a layer of spiking neurons."""

from __future__ import annotations

import torch
from torch import nn

from .neurons import LIF


class SpikingLayer(nn.Module):
    """``neuron(layer(x))`` for one time step: a layer's output drives LIF neurons as their input current.

    Args:
        layer: the parametrised layer (``nn.Linear``, ``nn.Conv2d``, ...) or any module producing
            the current.
        neuron: an `lfpoptim.snn.LIF`, or an ``snntorch.Leaky`` (then converted to the equivalent
            `LIF` with `lfpoptim.snn.lif_from_snntorch`; snntorch must be installed).

    Attributes:
        layer (nn.Module): the layer producing the input current.
        neuron (LIF): the `lfpoptim.snn.LIF` neurons it drives.

    Raises:
        ValueError: the neuron has ``return_membrane=True``.
    """

    def __init__(self, layer: nn.Module, neuron: nn.Module) -> None:
        super().__init__()
        if not isinstance(neuron, LIF):
            from .interop import lif_from_snntorch

            neuron = lif_from_snntorch(neuron)
        if neuron.return_membrane:
            raise ValueError("a SpikingLayer returns spikes only: give it a neuron with return_membrane=False")
        self.layer = layer
        self.neuron = neuron

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The spikes of this time step.

        Args:
            inputs: the layer's input at this time step.

        Returns:
            the neurons' spikes, shaped like ``layer(inputs)``.
        """
        return self.neuron(self.layer(inputs))

    def reset_state(self) -> None:
        """Reset the neurons to rest."""
        self.neuron.reset_state()
