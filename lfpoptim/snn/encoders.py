r"""Input encoders: a static batch becomes a time-major sequence of ``num_steps`` inputs.

Every encoder maps inputs shaped ``(B, ...)`` to ``(T, B, ...)`` with \(T\) = ``num_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Encoder(Protocol):
    r"""Turns static inputs ``(B, ...)`` into a sequence ``(num_steps, B, ...)``.

    Attributes:
        num_steps: the number of time steps \(T\) of the sequence.
    """

    num_steps: int

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoded sequence, time first.

        Args:
            inputs: a static batch shaped ``(B, ...)``.

        Returns:
            the sequence shaped ``(num_steps, B, ...)``.
        """


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


@dataclass(frozen=True)
class ConstantCurrentEncoder:
    r"""The same input at every step: \(x_t = x\) (the reference's encoding of images).

    The first layer then receives the input as a constant current. The sequence is a view of the
    input (no copy), so reward reaching it flows back to ``inputs`` summed over time.

    Attributes:
        num_steps: the number of time steps \(T\).
    """

    num_steps: int

    def __post_init__(self) -> None:
        _check_steps(self.num_steps)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.unsqueeze(0).expand(self.num_steps, *inputs.shape)


@dataclass(frozen=True)
class RateEncoder:
    r"""Rate coding: at every step each input unit spikes with probability \(\operatorname{clip}(g x, 0, 1)\).

    Independent Bernoulli draws per step and unit (a discrete-time Poisson process), as snntorch's
    ``spikegen.rate``. Inputs should lie in \([0, 1]\) (divide digits by 16, not the
    \([-1, 1]\) scaling): negative values never spike. The spikes are drawn anew at every call;
    pass a seeded ``generator`` for repeatable draws. No reward reaches the inputs through the draw.

    Attributes:
        num_steps: the number of time steps \(T\).
        gain: \(g\), scales the firing probability.
        generator: the random generator of the draws (torch's default one when ``None``).
    """

    num_steps: int
    gain: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_steps(self.num_steps)
        if not self.gain > 0:
            raise ValueError(f"gain must be positive, got {self.gain}")

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        probabilities = (inputs.detach() * self.gain).clamp_(0.0, 1.0)
        return torch.bernoulli(probabilities.expand(self.num_steps, *inputs.shape), generator=self.generator)
