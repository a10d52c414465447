r"""Rewards for real-valued targets: ``reward(outputs, targets)`` shaped like ``outputs``.

LFP's backward pass starts from \(R / y\) at each output unit (see `lfpoptim.rewards`). For a
regression loss \(\ell(y, t)\) the natural reward is therefore \(R = -y \odot \partial \ell /
\partial y\): the seed is minus the loss's gradient, and LFP on a network of ReLUs with a linear
output is weight-scaled gradient descent on \(\ell\) (exactly, as \(\varepsilon \to 0\)). The
reward is positive where the output should grow in magnitude and negative where it should shrink.

- `SquaredErrorReward`: \(R = y \odot (t - y)\), seed \(t - y\), descends \(\tfrac12 (y - t)^2\);
- `AbsoluteErrorReward`: \(R = y \odot \operatorname{sign}(t - y)\), seed
  \(\operatorname{sign}(t - y)\), descends \(\lvert y - t \rvert\);
- `HuberReward`: \(R = y \odot \operatorname{clip}(t - y, -\delta, \delta)\), seed
  \(\operatorname{clip}(t - y, -\delta, \delta)\), descends the Huber loss with threshold \(\delta\).

Targets are shaped like the outputs; for a single output unit, targets shaped ``(batch,)`` are
accepted for outputs shaped ``(batch, 1)``. Standardise the targets (zero mean, unit variance):
the seed is an error in the targets' units.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["AbsoluteErrorReward", "HuberReward", "SquaredErrorReward"]


def regression_targets(outputs: torch.Tensor, targets: Any, reward: str) -> torch.Tensor:
    """Validate real-valued ``targets`` for ``outputs`` and return them shaped, typed and placed like them.

    Args:
        outputs: the network's outputs.
        targets: the real-valued targets, shaped like ``outputs`` (or ``(batch,)`` for outputs
            shaped ``(batch, 1)``).
        reward: the reward's name, for error messages.

    Returns:
        the targets, with the shape, dtype and device of ``outputs``.

    Raises:
        TypeError: ``targets`` is not a floating-point tensor.
        ValueError: ``targets`` cannot be shaped like ``outputs``.
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{reward} expects targets as a torch.Tensor of real values, got {type(targets).__name__}")
    if not targets.dtype.is_floating_point:
        raise TypeError(
            f"targets have dtype {targets.dtype} but {reward} expects real values (a floating-point tensor); "
            "for class indices use SoftmaxLossReward"
        )
    if targets.shape != outputs.shape:
        single_output = outputs.dim() == 2 and outputs.shape[1] == 1 and targets.shape == outputs.shape[:1]
        if not single_output:
            raise ValueError(
                f"targets have shape {tuple(targets.shape)} but outputs have shape {tuple(outputs.shape)}; "
                f"{reward} needs one target per output unit"
            )
        targets = targets.unsqueeze(1)
    return targets.to(device=outputs.device, dtype=outputs.dtype)


class SquaredErrorReward:
    r"""\(R = y \odot (t - y)\): LFP descends the squared error \(\tfrac12 (y - t)^2\)."""

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        error = regression_targets(outputs, targets, type(self).__name__) - outputs
        return outputs * error


class AbsoluteErrorReward:
    r"""\(R = y \odot \operatorname{sign}(t - y)\): LFP descends the absolute error \(\lvert y - t \rvert\).

    Every output gets the same magnitude of seed, whatever its error: robust to outliers, but the
    steps do not shrink near the target (decay the learning rate).
    """

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        error = regression_targets(outputs, targets, type(self).__name__) - outputs
        return outputs * error.sign()


class HuberReward:
    r"""\(R = y \odot \operatorname{clip}(t - y, -\delta, \delta)\): LFP descends the Huber loss.

    Squared error within \(\delta\) of the target, absolute error (scaled by \(\delta\)) beyond.

    Args:
        delta: the threshold \(\delta > 0\), in the targets' units.

    Attributes:
        delta (float): the threshold \(\delta\).

    Raises:
        ValueError: ``delta`` is not positive.
    """

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta = delta

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        error = regression_targets(outputs, targets, type(self).__name__) - outputs
        return outputs * error.clamp(-self.delta, self.delta)

    def __repr__(self) -> str:
        return f"HuberReward(delta={self.delta})"
