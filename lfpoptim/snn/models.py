"""Spiking networks that run their own time loop: ``model(inputs)`` returns spikes shaped (T, B, C)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from .encoders import Encoder
from .layers import SpikingLayer
from .neurons import LIF, ResetMechanism, reset_neurons


class TimeLoop(nn.Module):
    """Run a network of one time step over a sequence, from rest, and stack its outputs over time.

    ``forward(inputs)`` resets every `LIF` layer of ``network``, calls ``network(inputs[t])`` for
    each step ``t`` and returns ``torch.stack`` of the results, time first: spikes shaped
    ``(T, B, C)`` for a classifier. Each batch thus starts from rest, so `lfpoptim.LFPOptimizer`
    needs no time loop of its own; the outputs' batch dimension is 1, which `batch_dim` tells it.

    Inputs are either a time-major sequence ``(T, B, ...)`` or a static batch ``(B, ...)`` that
    ``encoder`` turns into one. With ``sample_dims`` (the dimensions of one sample at one step:
    1 for feature vectors, 3 for images) the number of dimensions decides which it is; without,
    inputs are encoded whenever there is an encoder.

    Args:
        network: the network of one time step, with `LIF` neurons (an ``nn.Sequential`` of
            `SpikingLayer` for instance). Return the spikes of its last `LIF` layer unchanged:
            the LFP engine recognises them as the output.
        encoder: turns static inputs into a sequence (`lfpoptim.snn.ConstantCurrentEncoder`,
            `lfpoptim.snn.RateEncoder`); ``None`` to accept sequences only.
        sample_dims: dimensions of one sample at one time step, if known.

    Attributes:
        batch_dim: the dimension of the batch in the outputs (1: they are time-major), read by
            `lfpoptim.LFPOptimizer` to average feedback over the batch rather than over time.
        network (nn.Module): the network of one time step.
        encoder (Encoder | None): the encoder of static inputs, or ``None``.
        sample_dims (int | None): dimensions of one sample at one time step, or ``None``.
    """

    batch_dim: int = 1

    def __init__(self, network: nn.Module, encoder: Encoder | None = None, sample_dims: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.encoder = encoder
        self.sample_dims = sample_dims

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` as a time-major sequence ``(T, B, ...)``, encoded if they are static.

        Args:
            inputs: a sequence ``(T, B, ...)`` or a static batch ``(B, ...)``.

        Returns:
            the time-major sequence.

        Raises:
            ValueError: a static batch without an encoder, or inputs whose number of dimensions fits
                neither form (when ``sample_dims`` is known).
        """
        if self.sample_dims is None:
            return inputs if self.encoder is None else self.encoder(inputs)
        if inputs.dim() == self.sample_dims + 2:
            return inputs
        if inputs.dim() == self.sample_dims + 1:
            if self.encoder is None:
                raise ValueError(
                    f"inputs of shape {tuple(inputs.shape)} are a static batch, but this model has no encoder: "
                    "give it one (encoder=ConstantCurrentEncoder(num_steps=15)) or pass a sequence shaped (T, B, ...)"
                )
            return self.encoder(inputs)
        raise ValueError(
            f"inputs of shape {tuple(inputs.shape)} fit neither a static batch ({self.sample_dims + 1} dimensions) "
            f"nor a time-major sequence ({self.sample_dims + 2} dimensions)"
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's outputs at every time step, stacked time first.

        Args:
            inputs: a sequence ``(T, B, ...)`` or a static batch ``(B, ...)``, see `sequence`.

        Returns:
            the outputs stacked over time, ``(T, B, C)`` for a classifier.
        """
        sequence = self.sequence(inputs)
        reset_neurons(self.network)
        return torch.stack([self.network(step) for step in sequence.unbind(0)])


def _neuron(beta: float, threshold: float, reset: ResetMechanism) -> LIF:
    return LIF(beta=beta, threshold=threshold, reset=reset)


class SpikingMLP(TimeLoop):
    """Fully connected LIF network: ``Linear`` layers each driving a layer of `LIF` neurons.

    ``SpikingMLP(64, (1000,), 10)`` is the reference's small spiking MLP (64-1000-10). Inputs are
    feature vectors: ``(B, in_features)`` with an encoder, or ``(T, B, in_features)``.

    Args:
        in_features: input features.
        hidden_features: widths of the hidden layers.
        out_features: output neurons (classes).
        beta: decay of every neuron.
        threshold: threshold of every neuron.
        reset: reset mechanism of every neuron.
        encoder: encodes static inputs, see `TimeLoop`.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden_features: Sequence[int] = (1000,),
        out_features: int = 10,
        *,
        beta: float = 0.9,
        threshold: float = 1.0,
        reset: ResetMechanism = "subtract",
        encoder: Encoder | None = None,
    ) -> None:
        widths = [in_features, *hidden_features, out_features]
        layers = [
            SpikingLayer(nn.Linear(width_in, width_out), _neuron(beta, threshold, reset))
            for width_in, width_out in itertools.pairwise(widths)
        ]
        super().__init__(nn.Sequential(*layers), encoder=encoder, sample_dims=1)


class SpikingCNN(TimeLoop):
    """A small convolutional LIF network: (conv, LIF, max pool) twice, then a linear layer of LIF neurons.

    Convolutions keep the image size (padding ``kernel_size // 2``), each max pooling halves it,
    so ``image_size`` must be divisible by 4 (8×8 digits, 28×28 MNIST). Inputs are images:
    ``(B, C, H, W)`` with an encoder, or ``(T, B, C, H, W)``.

    Args:
        in_channels: channels of the input images.
        num_classes: output neurons.
        image_size: ``(H, W)`` of the inputs.
        channels: output channels of the two convolutions.
        kernel_size: kernel size of both convolutions (odd).
        beta: decay of every neuron.
        threshold: threshold of every neuron.
        reset: reset mechanism of every neuron.
        encoder: encodes static inputs, see `TimeLoop`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (8, 8),
        channels: tuple[int, int] = (12, 32),
        kernel_size: int = 3,
        *,
        beta: float = 0.9,
        threshold: float = 1.0,
        reset: ResetMechanism = "subtract",
        encoder: Encoder | None = None,
    ) -> None:
        height, width = image_size
        if height % 4 or width % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 max poolings), got {image_size}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (size-preserving padding), got {kernel_size}")
        padding = kernel_size // 2
        network = nn.Sequential(
            SpikingLayer(
                nn.Conv2d(in_channels, channels[0], kernel_size, padding=padding), _neuron(beta, threshold, reset)
            ),
            nn.MaxPool2d(2),
            SpikingLayer(
                nn.Conv2d(channels[0], channels[1], kernel_size, padding=padding), _neuron(beta, threshold, reset)
            ),
            nn.MaxPool2d(2),
            nn.Flatten(),
            SpikingLayer(
                nn.Linear(channels[1] * (height // 4) * (width // 4), num_classes), _neuron(beta, threshold, reset)
            ),
        )
        super().__init__(network, encoder=encoder, sample_dims=3)
