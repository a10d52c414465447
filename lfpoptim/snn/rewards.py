r"""The rate-coded spike reward of the reference, for spiking networks with outputs shaped (T, B, C)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check_spikes(spikes: torch.Tensor) -> None:
    if spikes.dim() != 3:
        raise ValueError(
            f"spikes must be shaped (time steps, batch, classes), got shape {tuple(spikes.shape)}; "
            "a spiking model from lfpoptim.snn returns that shape"
        )


def spike_count_predictions(spikes: torch.Tensor) -> torch.Tensor:
    """The class whose output neuron spiked most often over time, per sample: ``spikes.sum(0).argmax(-1)``.

    Args:
        spikes: output spikes shaped ``(T, B, C)``.

    Returns:
        class indices shaped ``(B,)``.

    Raises:
        ValueError: ``spikes`` is not 3-d.
    """
    _check_spikes(spikes)
    return spikes.sum(dim=0).argmax(dim=-1)


@dataclass(frozen=True)
class RateCodedSpikeReward:
    r"""Reward the correct class's neuron for spiking and the others for staying silent, until the rate is reached.

    With \(T\) time steps, spikes \(s_{t,b,c}\), the spike count
    \(n_{b,c} = \sum_t s_{t,b,c}\) and the silent count \(m_{b,c} = \sum_t |s_{t,b,c} - 1|\),

    \[
    R_{t,b,c} = \begin{cases}
        1 - \sigma\bigl(n_{b,c} - \lfloor T/2 \rfloor\bigr) & c = y_b
            \quad\text{(at every step, spiking or not)} \\
        -s_{t,b,c} \bigl(1 - \sigma(m_{b,c} - \lfloor T/2 \rfloor)\bigr) & c \ne y_b
    \end{cases}
    \]

    The correct neuron is pushed to spike, less as it nears \(T/2\) spikes; every spike of a
    wrong neuron is punished, less as it nears \(T/2\) silent steps. This is the reference's
    ``SnnCorrectClassRewardSpikesRateCoded``; its training loop divides the reward by \(T\)
    before the backward pass, which ``time_average`` does here. Discrete and not differentiable,
    like the spikes.

    Attributes:
        time_average: divide the reward by \(T\), as the reference's training loop does. Only the
            scale of the update depends on it, as a loss's scale sets the size of an SGD step.
    """

    time_average: bool = True

    def __call__(self, spikes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_spikes(spikes)
        steps, batch, classes = spikes.shape
        if targets.shape != (batch,):
            raise ValueError(
                f"targets must hold one class index per sample, shape ({batch},), got shape {tuple(targets.shape)}"
            )
        correct = F.one_hot(targets.long(), classes).to(torch.bool).unsqueeze(0)
        middle = steps // 2
        spike_count = spikes.sum(dim=0, keepdim=True)
        silent_count = (spikes - 1).abs().sum(dim=0, keepdim=True)
        push = 1 - torch.sigmoid(spike_count - middle)
        punish = 1 - torch.sigmoid(silent_count - middle)
        reward = torch.where(correct, push.expand_as(spikes), -spikes * punish)
        return reward / steps if self.time_average else reward
